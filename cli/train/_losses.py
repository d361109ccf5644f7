"""The loss history a trainer logged: the last values, and per-span curves with the curriculum stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._config import SPAN_NAMES

# matplotlib is imported inside plot_losses: it takes a second to import.


def final_losses(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of loss and of each span loss."""
    out: dict[str, float] = {}
    for entry in history:
        for key in ("loss", *(f"loss_{n}" for n in SPAN_NAMES), "loss_kd"):
            if isinstance(entry.get(key), (int, float)):  # a hand-edited trainer_state.json may hold anything
                out[key] = float(entry[key])
    return out


def plot_losses(history: list[dict[str, Any]], stage_steps: list[int], path: Path) -> None:
    """Per-span loss curves with the curriculum stage boundaries as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "k-"), ("loss_reason", "C0-"), ("loss_act", "C1-"), ("loss_answer", "C2-"),
                       ("loss_kd", "C3--")):
        points = [(e["step"], e[key]) for e in history if key in e and "step" in e]
        if points:
            ax.plot(*zip(*points), style, marker="." if len(points) < 30 else None, label=key)
    for i, step in enumerate(s for s in stage_steps if s > 1):  # a stage begins inside step s
        ax.axvline(step - 0.5, color="grey", linestyle=":", label="curriculum stage" if i == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token CE")
    ax.set_title("span-aware SFT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
