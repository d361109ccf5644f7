"""Tool and skill retrieval for a mounted box: Okapi BM25 over names, descriptions and source tasks.

A box lists only the k tools and k skills most relevant to a task, so its cost in prompt tokens does
not grow with the box. Words are lower-cased alphanumeric runs; snake_case and kebab-case names split
into their words; numbers become `N`, since task values say little about which tool fits.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

_WORD = re.compile(r"[a-z]+|\d+|[%^*/+\-]")
_STOP = frozenset("a an and are as at be by for from how in is it its of on or the that this to what with".split())


def words(text: str) -> list[str]:
    """The BM25 terms of `text`."""
    out = []
    for w in _WORD.findall(text.lower().replace("_", " ")):
        if w.isdigit():
            out.append("N")
        elif w not in _STOP:
            out.append(w)
    return out


@dataclass
class BM25:
    """Okapi BM25 over a fixed set of documents (k1 and b as in Robertson and Zaragoza)."""

    docs: list[str]
    k1: float = 1.2
    b: float = 0.75
    _tf: list[Counter] = field(init=False, repr=False)
    _idf: dict[str, float] = field(init=False, repr=False)
    _avg: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tf = [Counter(words(d)) for d in self.docs]
        n = len(self._tf)
        df = Counter(w for tf in self._tf for w in tf)
        self._idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self._avg = sum(sum(tf.values()) for tf in self._tf) / n if n else 0.0

    def scores(self, query: str) -> list[float]:
        q = Counter(words(query))
        out = []
        for tf in self._tf:
            length = sum(tf.values())
            norm = self.k1 * (1 - self.b + self.b * length / self._avg) if self._avg else self.k1
            out.append(sum(self._idf[w] * tf[w] * (self.k1 + 1) / (tf[w] + norm) * qn
                           for w, qn in q.items() if w in tf))
        return out

    def top(self, query: str, k: int) -> list[int]:
        """Indices of the `k` best documents for `query`, best first; ties keep document order, and
        documents that share no term with the query are left out."""
        scores = self.scores(query)
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [i for i in ranked[:k] if scores[i] > 0]
