"""Curation steps: each reads the trajectories left by the steps before it and says which go, and why.

A step is a dataclass of its settings registered by name in `curate_steps`; calling it with the items
in order gives, per item, `None` (it stays) or a `Drop`. Third parties register their own with
`@curate_steps.register("name")` or through the `trajdistill.curate_steps` entry-point group.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import defaultdict
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Callable, ClassVar

from trajdistill.envs import ConfigError, Registry, UnknownNameError

from ._schema import Trajectory
from ._spans import assistant_text, segment_as_env

_WORD_PIECE = re.compile(r"\w+|[^\w\s]")


@dataclass
class Item:
    """One trajectory on its way through the pipeline, with the label of the run it came from."""

    traj: Trajectory
    label: str

    @cached_property
    def text(self) -> str:
        """Everything the agent generated, turn by turn."""
        return "\n".join(assistant_text(m) for m in self.traj.messages if m.role == "assistant")

    @cached_property
    def reasoning(self) -> int:
        """Characters of reasoning: the `reason` spans of the env's segmenter."""
        return sum(s.end - s.start for s in segment_as_env(self.traj) if s.kind == "reason")

    @property
    def group(self) -> tuple[str, str]:
        return str(self.traj.category), str(self.traj.difficulty)


@dataclass
class Drop:
    reason: str  # short; the report counts items per reason
    detail: str = ""  # what this item was compared with


Verdicts = list["Drop | None"]


StepProgress = Callable[[int, int], None]  # (done, total) within a long step


class Step:
    """Base of the curation steps; subclasses are dataclasses of their settings."""

    name: ClassVar[str] = ""
    progress: StepProgress | None = None  # not a setting: the pipeline sets it, for steps that take long

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        raise NotImplementedError


curate_steps: Registry[type[Step]] = Registry("curate step", "trajdistill.curate_steps")


def make_step(name: str, params: dict[str, Any] | None = None) -> Step:
    """The registered step `name` with `params`; unknown or missing settings are named in one line."""
    cls = curate_steps.get(name)
    params = dict(params or {})
    known = [f.name for f in fields(cls)] if hasattr(cls, "__dataclass_fields__") else []
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"step {name!r} has no setting(s) {', '.join(unknown)}; "
                         f"its settings: {', '.join(known) or '(none)'}")
    missing = [f.name for f in fields(cls) if f.name not in params and f.default is MISSING
               and f.default_factory is MISSING] if known else []
    if missing:
        raise ConfigError(f"step {name!r} needs setting(s) {', '.join(missing)}, e.g. {name}:{missing[0]}=...")
    return cls(**params)


def _groups(items: list[Item]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        out[item.group].append(i)
    return out


# ---- the built-in steps ---------------------------------------------------------------------------


@curate_steps.register("verified")
@dataclass
class Verified(Step):
    """Keep only the trajectories whose verifier confirmed success."""

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        return [None if it.traj.outcome.success else Drop("not verified", _failure(it.traj)) for it in items]


def _failure(traj: Trajectory) -> str:
    out = traj.outcome
    if out.error:
        return f"error: {out.error}"
    if out.final_answer is not None:
        return f"answered {out.final_answer!r}"
    return out.detail or "no verified answer"


@curate_steps.register("dedupe")
@dataclass
class Dedupe(Step):
    """Drop exact duplicates: the same env and task and the same assistant text; the first stays."""

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        first: dict[tuple[str, str, str], str] = {}
        out: Verdicts = []
        for it in items:
            key = (it.traj.env.name, it.traj.task_id, it.text)
            out.append(Drop("exact duplicate", f"same task and text as {first[key]}") if key in first else None)
            first.setdefault(key, it.traj.id)
        return out


@curate_steps.register("near-dup")
@dataclass
class NearDup(Step):
    """Drop near-duplicates of the assistant text: a trajectory at least `threshold` alike to an earlier kept one
    goes, so the first of each cluster stays. `method` says how alike is measured (a `near_dup_methods` entry:
    `minhash`, the Jaccard similarity of word-piece n-grams, or `embedding`, the cosine of model embeddings);
    `ngram` and `num_perm` are MinHash's settings, `model`, `batch_size` and `max_tokens` the embedding's.
    `scope: task` compares within a task only."""

    method: str = "minhash"
    threshold: float | None = None  # None: the method's default
    scope: str = "all"
    ngram: int = 3
    num_perm: int = 128
    model: str = "smollm2-135m"
    batch_size: int = 16
    max_tokens: int = 512

    def __post_init__(self) -> None:
        cls = _near_dup_method(self.method)
        if self.threshold is None:
            self.threshold = cls.default_threshold
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold <= 1:
            raise ConfigError(f"near-dup threshold must be in (0, 1], got {self.threshold}")
        if self.scope not in ("all", "task"):
            raise ConfigError(f"near-dup scope must be all or task, got {self.scope!r}")
        self._similarity = cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    def settings(self) -> dict[str, Any]:
        """The settings that apply to this method, for the report and the run's provenance."""
        own = {f.name for f in fields(self._similarity)}
        return {k: v for k, v in asdict(self).items() if k in own or k in ("method", "threshold", "scope")}

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        return self.decide(items, self._similarity([it.text for it in items], self.threshold, self.progress))

    def decide(self, items: list[Item], near: list[dict[int, float]]) -> Verdicts:
        """The verdicts given each item's earlier neighbours (index: similarity); those under the threshold
        do not count, so one search at a low threshold serves a sweep of thresholds."""
        kept: set[int] = set()
        out: Verdicts = []
        for i, it in enumerate(items):
            alike = [(s, j) for j, s in near[i].items()
                     if s >= self.threshold and j in kept and self._same_scope(it, items[j])]
            if not alike:
                kept.add(i)
                out.append(None)
                continue
            sim, j = max(alike, key=lambda c: (c[0], -c[1]))  # the most alike; the earliest on a tie
            out.append(Drop("near duplicate", f"{self._similarity.metric} {sim:.3f} with {items[j].traj.id}"))
        return out

    def _same_scope(self, a: Item, b: Item) -> bool:
        return self.scope == "all" or a.traj.task_id == b.traj.task_id


class NearDupMethod:
    """How `near-dup` measures alikeness: a dataclass of its settings (named like `NearDup`'s fields) whose call
    gives, per text, the earlier texts at least `threshold` alike with their similarity. A text with nothing to
    compare (no words) has no neighbours."""

    metric: ClassVar[str] = ""  # the similarity's name in a drop's detail
    default_threshold: ClassVar[float] = 0.9

    def __call__(self, texts: list[str], threshold: float, progress: StepProgress | None) -> list[dict[int, float]]:
        raise NotImplementedError


near_dup_methods: Registry[type[NearDupMethod]] = Registry("near-dup method", "trajdistill.near_dup_methods")


def _near_dup_method(name: str) -> type[NearDupMethod]:
    try:
        return near_dup_methods.get(name)
    except UnknownNameError as e:
        # `embedding` loads a model, so it lives in trajdistill.agents, above this layer, and registers on import
        hint = "; the embedding method registers when trajdistill.agents is imported" if name == "embedding" else ""
        raise UnknownNameError(f"{e}{hint}") from None


@near_dup_methods.register("minhash")
@dataclass
class MinHashSimilarity(NearDupMethod):
    """MinHash LSH (datasketch) over word-piece n-grams proposes candidates; their exact Jaccard similarity decides."""

    ngram: int = 3
    num_perm: int = 128
    metric: ClassVar[str] = "Jaccard"
    default_threshold: ClassVar[float] = 0.9

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_perm < 16:
            raise ConfigError("near-dup needs ngram >= 1 and num_perm >= 16")

    def __call__(self, texts: list[str], threshold: float, progress: StepProgress | None) -> list[dict[int, float]]:
        from datasketch import MinHashLSH

        # a wider net than the threshold: LSH only proposes, the exact similarity decides
        index = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=self.num_perm)
        grams = [shingles(t, self.ngram) for t in texts]
        out: list[dict[int, float]] = []
        for i, g in enumerate(grams):
            near: dict[int, float] = {}
            if g:
                sketch = self._minhash(g)
                for j in index.query(sketch):
                    sim = jaccard(g, grams[j])
                    if sim >= threshold:
                        near[j] = sim
                index.insert(i, sketch)
            out.append(near)
        return out

    def _minhash(self, grams: set[str]) -> Any:
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([g.encode() for g in sorted(grams)])
        return m


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word-piece n-grams; a text shorter than n is one shingle."""
    toks = _WORD_PIECE.findall(text.lower())
    return {" ".join(toks[i:i + n]) for i in range(max(1, len(toks) - n + 1))} if toks else set()


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@curate_steps.register("length-balance")
@dataclass
class LengthBalance(Step):
    """Drop trajectories whose reasoning is far longer than the rest of their (category, difficulty) group:
    more than `k` robust deviations (1.4826 x MAD) above the median, and more than `min_ratio` times it (so a
    group of near-equal lengths keeps its slightly longer ones). The schema has no per-trajectory weight, so
    it drops rather than down-weights."""

    k: float = 3.0
    min_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.k <= 0 or self.min_ratio < 1:
            raise ConfigError("length-balance needs k > 0 and min_ratio >= 1")

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        out: Verdicts = [None] * len(items)
        for group, idx in _groups(items).items():
            lengths = [items[i].reasoning for i in idx]
            med = statistics.median(lengths)
            mad = 1.4826 * statistics.median(abs(x - med) for x in lengths)
            limit = max(med + self.k * mad, self.min_ratio * med)
            for i, n in zip(idx, lengths):
                if n > limit:
                    out[i] = Drop("over-long reasoning", f"{n} chars, {n / med:.1f}x the median {med:g} of "
                                  f"{'/'.join(group)} (limit {limit:.0f})")
        return out


@curate_steps.register("balance")
@dataclass
class Balance(Step):
    """Cap each (category, difficulty) group at `cap` trajectories, a seeded sample of it."""

    cap: int

    def __post_init__(self) -> None:
        if not isinstance(self.cap, int) or self.cap < 1:
            raise ConfigError(f"balance cap must be a whole number >= 1, got {self.cap!r}")

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        out: Verdicts = [None] * len(items)
        rng = random.Random(seed)
        for group, idx in sorted(_groups(items).items()):
            keep = set(rng.sample(idx, self.cap)) if len(idx) > self.cap else set(idx)
            for i in idx:
                if i not in keep:
                    out[i] = Drop("over the group cap", f"{'/'.join(group)} holds {len(idx)} > cap {self.cap}")
        return out


@curate_steps.register("blend")
@dataclass
class Blend(Step):
    """Mix the runs by weight (`mix`: run label -> weight): the largest set whose shares match the weights
    (or `size` items), a seeded sample of each run. Runs without a weight are dropped."""

    mix: dict[str, float] = field(default_factory=dict)
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.mix:
            raise ConfigError("blend needs weights: --mix LABEL=WEIGHT (or mix: {LABEL: WEIGHT} in the config)")
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.mix.values()) or not sum(self.mix.values()):
            raise ConfigError(f"blend weights must be numbers >= 0, not all 0; got {self.mix}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"blend size must be >= 1, got {self.size}")

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        pools: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            pools[it.label].append(i)
        quotas = self.quotas({label: len(pools[label]) for label in self.mix})
        out: Verdicts = [None] * len(items)
        rng = random.Random(seed)
        for label, idx in sorted(pools.items()):
            quota = quotas.get(label, 0)
            keep = set(rng.sample(idx, quota))
            why = (f"{label}: {quota} of {len(idx)} kept for weight {self.mix[label]:g}" if label in self.mix
                   else f"run {label} has no --mix weight")
            for i in idx:
                if i not in keep:
                    out[i] = Drop("over its share" if label in self.mix else "not in the mix", why)
        return out

    def quotas(self, available: dict[str, int]) -> dict[str, int]:
        """Items to keep per label: shares as the weights, as many as the scarcest run allows (or `size`)."""
        total = sum(self.mix.values())
        share = {label: w / total for label, w in self.mix.items() if w > 0}
        size = self.size if self.size is not None else min(available[k] / s for k, s in share.items())
        return {k: min(available[k], math.floor(size * s + 1e-9)) for k, s in share.items()}
