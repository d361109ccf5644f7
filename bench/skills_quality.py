"""Training-free skill boxes (issue 6 evidence), on math with the embedded SmolLM2-135M.

Mines a box from the expert:coder train-split run (the deterministic miner, tools validated in the
sandbox, --min-support 2: a tool must cover two distinct calls; at 1 the 200-task run gives 45 tools, 27 of
them one-off arithmetic expressions, and a ~5,000-token system prompt) and evaluates on the same held-out test tasks, without and with the box mounted over MCP
(the default mount: its tools next to the env's, skill names and descriptions in the system prompt,
`read_skill` to fetch a SKILL.md; --preload 1 puts every SKILL.md in the prompt instead, ~3.5k tokens):
  base · base + box · coder student (sft_quality's span-aware SFT) · coder student + box
The rows without a box are shared with sft_quality when it ran first. With a box, it also reports how many
episodes called one of the box's tools or read_skill.

    python bench/skills_quality.py [--tokens 50000] [--test-tasks 100] [--sandbox nsjail]
"""

from __future__ import annotations

import warnings

from pathlib import Path

from _quality import (CODER_STUDENT, STUDENT, arguments, called, evaluated, pct, rate_of, report, run_of, teacher_run,
                      trained)

from trajdistill.skills import MineConfig, mine
from trajdistill.skills._mount import READ_SKILL
from trajdistill.trajectories import RunStore


def main() -> None:
    args = arguments(__doc__, {"--preload": 0, "--min-support": 2})
    warnings.simplefilter("ignore")
    coder = teacher_run(args, "expert:coder")
    box = args.out / "box"
    if not (box / "skillbox.json").exists():
        mine(MineConfig(runs=[str(coder)], out=str(box), sandbox=args.sandbox, force=box.exists(),
                        min_support=args.min_support))
    student = trained(args, CODER_STUDENT, [coder])
    rows = []
    for name, spec in (("base", STUDENT), (CODER_STUDENT, student)):
        rows.append(evaluated(args, name, spec))
        label = f"{name} + mined box" + (" (preloaded)" if args.preload else "")
        rows.append(evaluated(args, label, spec, skills=[str(box.resolve())], preload=bool(args.preload)))
    tools = {p.stem for p in (box / "tools").glob("*.py")}
    report(args, rows, "skills-quality", box_use_table([(r["variant"], run_of(args, r)) for r in rows[1::2]], tools))


def box_use_table(runs: list[tuple[str, Path]], tools: set[str]) -> str:
    """Markdown: the share of episodes that called a box tool or read_skill (an attempt counts, even one the
    tool refused), and success with / without a box-tool call."""
    lines = ["Box use (episodes with at least one call):", "",
             "| variant | box tool | read_skill | success with / without a box tool |", "|---|---|---|---|"]
    for name, run in runs:
        trajs = RunStore.open(run).load()
        box = [called(t, tools) for t in trajs]
        with_box = [t.outcome.success for t, b in zip(trajs, box) if b]
        without = [t.outcome.success for t, b in zip(trajs, box) if not b]
        lines.append(f"| {name} | {sum(box) / len(trajs):.0%} | "
                     f"{sum(called(t, {READ_SKILL}) for t in trajs) / len(trajs):.0%} | "
                     f"{pct(rate_of(with_box))} / {pct(rate_of(without))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
