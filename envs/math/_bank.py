"""The deterministic task bank: one seeded problem stream per (category, level), split by a hash of the text."""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from typing import Any

from .._types import SPLITS, Task
from ._kinds import BY_CATEGORY, CATEGORIES, LEVELS, Mind

COMBOS = [(cat, level) for level in LEVELS for cat in CATEGORIES]
SPLIT_SIZES = {"train": 5000, "dev": 500, "test": 500}
STREAM_SEED = "trajdistill-math-v1"


@dataclass(frozen=True)
class Problem:
    kind: str
    category: str
    level: int
    index: int  # position in its (category, level) stream
    params: dict[str, Any]
    text: str
    answer: int
    split: str


def split_of(text: str) -> str:
    """80/10/10 by a stable hash of the problem text."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "dev" if bucket == 8 else "test"


def make_problem(category: str, level: int, index: int) -> Problem:
    rng = random.Random(f"{STREAM_SEED}:{category}:{level}:{index}")
    kind = rng.choice(BY_CATEGORY[category])
    params = kind.make(rng, level)
    text = kind.text(params)
    return Problem(kind.name, category, level, index, params, text, kind.solve(params, Mind()), split_of(text))


class _Bank:
    """Lazily grown, cached task lists per split; the same on every call."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, int], list[Problem]] = {c: [] for c in COMBOS}
        self.cursor: dict[tuple[str, tuple[str, int]], int] = {}
        self.tasks: dict[str, list[Task]] = {s: [] for s in SPLITS}
        self.seen: dict[str, set[str]] = {s: set() for s in SPLITS}

    def _problem(self, combo: tuple[str, int], i: int) -> Problem:
        stream = self.streams[combo]
        while len(stream) <= i:
            stream.append(make_problem(combo[0], combo[1], len(stream)))
        return stream[i]

    def _next(self, split: str) -> Task:
        k = len(self.tasks[split])
        combo = COMBOS[k % len(COMBOS)]
        while True:
            i = self.cursor.get((split, combo), 0)
            if i > 200_000:
                raise RuntimeError(f"math: problem stream {combo} ran dry for split {split!r}")
            self.cursor[split, combo] = i + 1
            prob = self._problem(combo, i)
            if prob.split == split and prob.text not in self.seen[split]:
                break
        self.seen[split].add(prob.text)
        return Task(id=f"math-{split}-{k:05d}", env="math", split=split, prompt=prob.text,  # type: ignore[arg-type]
                    category=prob.category, difficulty=prob.level, seed=prob.index,
                    data={"answer": str(prob.answer), "kind": prob.kind, "params": prob.params})

    def get(self, split: str, stop: int) -> list[Task]:
        while len(self.tasks[split]) < stop:
            self.tasks[split].append(self._next(split))
        return self.tasks[split]


@functools.lru_cache(maxsize=1)
def _bank() -> _Bank:
    return _Bank()
