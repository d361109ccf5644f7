"""Training-free skill boxes (issue 6 evidence), on math with the embedded SmolLM2-135M.

Mines a box from the expert:coder train-split run (the deterministic miner, tools validated in the
sandbox) and evaluates on the same held-out test tasks, without and with the box mounted over MCP
(its SKILL.md texts preloaded into the system prompt, its tools next to the env's):
  base · base + box · coder student (sft_quality's span-aware SFT + curriculum) · coder student + box
The rows without a box are shared with sft_quality when it ran first.

    python bench/skills_quality.py [--out bench-out/quality] [--test-tasks 100] [--sandbox nsjail]
"""

from __future__ import annotations

import warnings

from _quality import CODER_STUDENT, STUDENT, arguments, evaluated, report, teacher_run, trained

from trajdistill.skills._mine import MineConfig, mine


def main() -> None:
    args = arguments(__doc__)
    warnings.simplefilter("ignore")
    coder = teacher_run(args, "expert:coder")
    box = args.out / "box"
    if not (box / "skillbox.json").exists():
        mine(MineConfig(runs=[str(coder)], out=str(box), sandbox=args.sandbox, force=box.exists()))
    student = trained(args, CODER_STUDENT, [coder], curriculum="complexity")
    rows = []
    for name, spec in (("base", STUDENT), (CODER_STUDENT, student)):
        rows.append(evaluated(args, name, spec))
        rows.append(evaluated(args, f"{name} + mined box", spec, skills=[str(box.resolve())], preload=True))
    report(args, rows, "skills-quality")


if __name__ == "__main__":
    main()
