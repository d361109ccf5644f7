"""Curated against raw training data at equal training tokens (issue 14 evidence), on math.

The raw data is what a user has after collecting two teachers on the same train tasks: the `expert:reasoner`
run (solves by hand, slips on big numbers, writes long thoughts) and the `expert:coder` run. The curated data is
`trajdistill curate` of the same two runs with the production steps in order: verified, dedupe, near-dup,
length-balance, balance (cap 300 per category and difficulty). Each trains SmolLM2-135M from the base model with `train`'s defaults for `--tokens`
training tokens (train keeps only verified successes by default, so `verified` alone would change nothing:
the other steps are what is measured), and both are evaluated on the same held-out test tasks. Shares its
output folder, runs and base rows with sft_quality/dual_quality (`--out`, default bench-out/quality-<tokens>).

    python bench/curate_quality.py [--tokens 50000] [--sandbox nsjail]
"""

from __future__ import annotations

import json
import warnings

from _quality import arguments, evaluated, report, teacher_run, trained

from trajdistill.trajectories import CurateConfig, curate

# balance's cap: 300 trajectories per (category, difficulty) cell, of the ~400 two 3000-task runs put in a cell
STEPS = ["verified", "dedupe", "near-dup", "length-balance", "balance:cap=300"]


def main() -> None:
    args = arguments(__doc__)
    warnings.simplefilter("ignore")
    runs = [teacher_run(args, "expert:reasoner"), teacher_run(args, "expert:coder")]
    curated = args.out / "runs" / "curated"
    if not (curated / "curate_report.json").exists():
        curate(CurateConfig(runs=[str(r) for r in runs], out=str(curated), steps=STEPS))
    steps = json.loads((curated / "curate_report.json").read_text())["steps"]
    specs = {"raw: reasoner + coder runs": trained(args, "raw: reasoner + coder runs", runs),
             f"curated: {', '.join(STEPS)}": trained(args, "curated", [curated])}
    rows = [evaluated(args, name, spec) for name, spec in specs.items()]
    counts = "\n".join(f"- {s['name']}: {s['in']} in, {s['out']} kept ({removed(s)})" for s in steps)
    report(args, rows, "curate-quality", f"Curation of the two runs:\n\n{counts}")


def removed(step: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in step["reasons"].items()) or "nothing removed"


if __name__ == "__main__":
    main()
