"""curate_lengths.png: reasoning length per category, before and after curation."""

from __future__ import annotations

import math
from pathlib import Path


def plot_lengths(path: Path, before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
    """One histogram panel per category: before (grey) and after (blue), on shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(before)
    cols = min(3, max(1, len(cats)))
    rows = math.ceil(len(cats) / cols) or 1
    top = max((max(xs) for xs in before.values() if xs), default=1)
    bins = [top * i / 20 for i in range(21)] if top else 20
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    try:
        for ax, cat in zip(axes.flat, cats):
            ax.hist(before[cat], bins=bins, color="#bbbbbb", label=f"before ({len(before[cat])})")
            ax.hist(after.get(cat, []), bins=bins, color="#4c72b0", alpha=0.8,
                    label=f"after ({len(after.get(cat, []))})")
            ax.set_title(cat)
            ax.set_xlabel("reasoning characters")
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(cats):]:
            ax.set_visible(False)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
