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
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

from trajdistill.envs import ConfigError, Registry

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


class Step:
    """Base of the curation steps; subclasses are dataclasses of their settings."""

    name: ClassVar[str] = ""

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
    """Drop near-duplicates: MinHash LSH over word-piece n-grams of the assistant text finds candidates, their
    exact Jaccard similarity decides; the first of each cluster stays. `scope: task` compares within a task only."""

    threshold: float = 0.9
    ngram: int = 3
    num_perm: int = 128
    scope: str = "all"

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"near-dup threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.num_perm < 16:
            raise ConfigError("near-dup needs ngram >= 1 and num_perm >= 16")
        if self.scope not in ("all", "task"):
            raise ConfigError(f"near-dup scope must be all or task, got {self.scope!r}")

    def __call__(self, items: list[Item], seed: int) -> Verdicts:
        from datasketch import MinHashLSH

        # a wider net than the threshold: LSH only proposes, the exact similarity decides
        lsh_threshold = max(0.05, self.threshold - 0.1)
        indexes: dict[str, MinHashLSH] = {}
        kept: dict[str, set[str]] = {}
        out: Verdicts = []
        for n, it in enumerate(items):
            grams = shingles(it.text, self.ngram)
            scope = it.traj.task_id if self.scope == "task" else ""
            index = indexes.setdefault(scope, MinHashLSH(threshold=lsh_threshold, num_perm=self.num_perm))
            drop = self._match(index, kept, grams) if grams else None
            if drop is None and grams:
                key = f"{n}:{it.traj.id}"
                kept[key] = grams
                index.insert(key, self._minhash(grams))
            out.append(drop)
        return out

    def _match(self, index: Any, kept: dict[str, set[str]], grams: set[str]) -> Drop | None:
        best, sim = None, 0.0
        for key in index.query(self._minhash(grams)):
            s = jaccard(grams, kept[key])
            if s > sim:
                best, sim = key, s
        if best is None or sim < self.threshold:
            return None
        return Drop("near duplicate", f"Jaccard {sim:.3f} with {best.partition(':')[2]}")

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
