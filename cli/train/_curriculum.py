"""Complexity curriculum: order training examples from easy to hard.

Complexity of one example (Structured Agent Distillation, arXiv 2505.13820):

    C = alpha * reason_tokens + beta * act_tokens + gamma * steps

Modes (`--curriculum`):
- `none`: data order; the trainer shuffles it as usual.
- `complexity`: sorted by C, easy to hard (ties keep data order).
- `staged:K`: sorted by C and cut into K equal-count stages; stage k trains on every example of
  stages 1..k, shuffled within the stage. The dataset is the concatenation of the K stage sets, so
  easy examples are seen more often and hard ones only late.

`complexity` and `staged:K` must be trained in the given order (a sequential sampler).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from trajdistill.envs import ConfigError
from trajdistill.trajectories import Trajectory

from ._encode import SPAN_KINDS

CURRICULA = ("none", "complexity", "staged:K")


@dataclass(frozen=True)
class Complexity:
    """Weights of the complexity score; a step counts as `gamma` tokens."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 25.0

    def score(self, reason_tokens: int, act_tokens: int, steps: int) -> float:
        return self.alpha * reason_tokens + self.beta * act_tokens + self.gamma * steps


def kind_counts(span_kinds: Sequence[int], labels: Sequence[int]) -> dict[str, int]:
    """Trained tokens of each span kind (reason, act, answer) in one encoded example."""
    names = {v: k for k, v in SPAN_KINDS.items()}
    counts = dict.fromkeys(SPAN_KINDS, 0)
    for kind, label in zip(span_kinds, labels):
        if label != -100 and kind in names:
            counts[names[kind]] += 1
    return counts


def steps_of(traj: Trajectory) -> int:
    """Agent steps: the recorded count, else the number of assistant turns."""
    return traj.usage.steps or sum(m.role == "assistant" for m in traj.messages)


def parse_curriculum(mode: str) -> tuple[str, int]:
    """('none'|'complexity'|'staged', K); raises ValueError naming the accepted forms."""
    if mode in ("none", "complexity"):
        return mode, 1
    name, sep, k = mode.partition(":")
    if name == "staged" and sep and k.isdigit() and int(k) >= 1:
        return "staged", int(k)
    raise ConfigError(f"curriculum must be one of none, complexity, staged:K (K >= 1), got {mode!r}")


@dataclass
class Plan:
    """The training order: `order` holds example indices (repeats allowed for staged);
    `stage_starts[k]` is the position in `order` where stage k begins."""

    mode: str
    order: list[int]
    stage_starts: list[int] = field(default_factory=lambda: [0])
    scores: list[float] = field(default_factory=list)

    @property
    def sequential(self) -> bool:
        """Whether the trainer must keep this order (no shuffling sampler)."""
        return self.mode != "none"

    def stage_sizes(self) -> list[int]:
        ends = self.stage_starts[1:] + [len(self.order)]
        return [e - s for s, e in zip(self.stage_starts, ends)]


def order(scores: Sequence[float], mode: str, *, seed: int = 0) -> Plan:
    """The curriculum plan for examples with the given complexity scores."""
    kind, k = parse_curriculum(mode)
    n = len(scores)
    if kind == "none":
        return Plan(mode, list(range(n)), [0], list(scores))
    ranked = sorted(range(n), key=lambda i: (scores[i], i))  # stable: ties keep data order
    if kind == "complexity":
        return Plan(mode, ranked, [0], list(scores))
    return _staged(ranked, k, seed, mode, list(scores))


def _staged(ranked: list[int], k: int, seed: int, mode: str, scores: list[float]) -> Plan:
    rng = random.Random(seed)
    n = len(ranked)
    out: list[int] = []
    starts: list[int] = []
    for stage in range(1, k + 1):
        upto = math.ceil(stage * n / k)  # quantile cut: stages of (nearly) equal count
        if upto == 0:
            continue
        pool = ranked[:upto]
        rng.shuffle(pool)
        starts.append(len(out))
        out.extend(pool)
    return Plan(mode, out, starts or [0], scores)
