"""Does bf16 autocast train like fp32? The embedded student's losses, step by step, over a few hundred steps.

`train` defaults to bf16 autocast on CPUs with avx512_bf16 because it is 1.7x faster (bench/RESULTS.md,
"Training throughput"). This bench checks that it learns the same: two runs of `train`'s trainer, fp32 and
bf16, from the same SmolLM2-135M weights, on the same packed rows in the same order (same seed), for
`--steps` optimizer steps, one loss logged per step. It reports the mean and largest per-step difference,
the difference of 25-step moving means, and both final losses, and plots both curves.

Each arm's losses are kept in `--out/<arm>.json`; a rerun trains only the arms that are missing.

    python bench/bf16_loss.py [--steps 300] [--batch-size 1] [--max-length 256] [--out bench-out/bf16-loss]
                              [--sandbox auto]

The comparison goes to bench/results/bf16_loss.json and the plot to bench/results/bf16_loss.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from trajdistill.agents import CollectConfig, collect
from trajdistill.train import TrainConfig, build_trainer

ARMS = {"fp32": False, "bf16": True}
WINDOW = 25


def train_arm(out: Path, run: Path, arm: str, opts: argparse.Namespace) -> dict:
    cfg = TrainConfig(data=[str(run)], out=str(out / f"model-{arm}"), max_steps=opts.steps, batch_size=opts.batch_size,
                      max_length=opts.max_length, logging_steps=1, bf16=ARMS[arm], seed=0)
    trainer, _, _ = build_trainer(cfg)
    trainer.args.save_strategy = "no"
    start = time.perf_counter()
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": arm, "losses": losses, "wall_s": time.perf_counter() - start,
            "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}


def moving_mean(xs: list[float]) -> list[float]:
    return [statistics.fmean(xs[max(0, i - WINDOW + 1):i + 1]) for i in range(len(xs))]


def compare(fp32: list[float], bf16: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    smooth = [abs(a - b) for a, b in zip(moving_mean(fp32), moving_mean(bf16))]
    last = slice(-WINDOW, None)
    return {"steps": len(diffs), "mean_abs_diff": statistics.fmean(diffs), "max_abs_diff": max(diffs),
            "max_abs_diff_moving_mean": max(smooth[WINDOW:]) if len(smooth) > WINDOW else max(smooth),
            "first_loss": [fp32[0], bf16[0]],
            f"final_{WINDOW}_step_mean": [statistics.fmean(fp32[last]), statistics.fmean(bf16[last])]}


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for arm, row in rows.items():
        ax.plot(range(1, len(row["losses"]) + 1), row["losses"], lw=0.6, alpha=0.35)
        ax.plot(range(1, len(row["losses"]) + 1), moving_mean(row["losses"]), lw=1.6,
                label=f"{arm} ({WINDOW}-step mean)", color=ax.lines[-1].get_color())
    ax.set(xlabel="optimizer step", ylabel="training loss", yscale="log",
           title="SmolLM2-135M full fine-tuning: fp32 vs bf16 autocast")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--out", default="bench-out/bf16-loss")
    ap.add_argument("--sandbox", default="auto", help="where the teacher's programs run while collecting")
    ap.add_argument("--plot", default="bench/results/bf16_loss.png")
    ap.add_argument("--summary", default="bench/results/bf16_loss.json")
    opts = ap.parse_args()
    out = Path(opts.out)
    run = out / "run"
    if not (run / "stats.json").exists():
        collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=opts.tasks, out=str(run), sandbox=opts.sandbox,
                              resume=run.exists()))
    rows = {}
    for arm in ARMS:
        path = out / f"{arm}.json"
        if not path.exists():
            path.write_text(json.dumps(train_arm(out, run, arm, opts)))
        rows[arm] = json.loads(path.read_text())
    plot(rows, Path(opts.plot))
    summary = json.dumps({"comparison": compare(rows["fp32"]["losses"], rows["bf16"]["losses"]),
                          "wall_s": {a: r["wall_s"] for a, r in rows.items()},
                          "load_avg": {a: r["load_avg"] for a, r in rows.items()},
                          "steps": opts.steps, "batch_size": opts.batch_size, "max_length": opts.max_length,
                          "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1)
    Path(opts.summary).write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
