"""DualDistill quality (issue 5 evidence), on math with the embedded SmolLM2-135M.

Collects expert:reasoner and expert:coder on the train split, composes them (`best`, `dual`), trains
the student on each set at one token budget (`--tokens`, `train`'s defaults: span-aware weights, no
curriculum, shuffled packed rows), then runs one round of self-distillation from the dual student,
and evaluates all on the same held-out test tasks:
  reasoner only · coder only (sft_quality's span-aware SFT) · best · dual · dual + 1 self-distill round
The self-distill round samples the dual student on train tasks, keeps its verified successes next to
the dual set, and trains that same student on, at the same budget again (so twice the budget in all).
Also reports the tool-use rate per difficulty: does the student call python where reasoning fails?
No curriculum here on purpose: ordered easy to hard at a budget smaller than the data, `best` and `dual`
train on exactly the same first rows as `reasoner only` (the short no-tool solutions) and never reach the
tool-using ones, which was measured (identical losses) before this was changed.

    python bench/dual_quality.py [--tokens 50000] [--sd-tasks 25] [--sd-samples 2] [--sandbox nsjail]
"""

from __future__ import annotations

import warnings
from pathlib import Path

from _quality import CODER_STUDENT, arguments, evaluated, report, slug, steps_for, teacher_run, trained

from trajdistill.train import SelfDistillConfig, self_distill
from trajdistill.trajectories import compose


def main() -> None:
    args = arguments(__doc__, {"--sd-tasks": 25, "--sd-samples": 2})
    warnings.simplefilter("ignore")
    runs = [teacher_run(args, "expert:reasoner"), teacher_run(args, "expert:coder")]
    sets = {"reasoner only": [runs[0]], CODER_STUDENT: [runs[1]]}
    for strategy in ("best", "dual"):
        out = args.out / "runs" / f"composed-{strategy}"
        if not (out / "run.yaml").exists():
            compose(runs, strategy, out)
        sets[strategy] = [out]
    specs = {name: trained(args, name, data) for name, data in sets.items()}
    specs["dual + 1 self-distill round"] = self_distilled(args, specs["dual"], sets["dual"][0])
    rows = [evaluated(args, name, spec) for name, spec in specs.items()]
    report(args, rows, "dual-quality")


def self_distilled(args, student: str, dual: Path) -> str:
    out = args.out / "students" / slug("dual + 1 self-distill round")
    model = out / "round-1" / "model"
    if not (out / "rounds.json").exists():
        self_distill(SelfDistillConfig(
            student=student, env="math", out=str(out), samples=args.sd_samples, rounds=1, temperature=0.7,
            tasks=args.sd_tasks, compose_runs=[str(dual)], dev_tasks=0, max_steps=args.max_steps,
            concurrency=args.concurrency, sandbox=args.sandbox, student_options={"max_new_tokens": args.new_tokens},
            train_args={"max_steps": steps_for([dual], args.tokens, student)}, resume=True))
    return f"hf:{model.resolve()}"


if __name__ == "__main__":
    main()
