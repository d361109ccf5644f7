"""The training-free box transfer test (issue 18): does a box-literate student use a box it never trained with?

On math, one category set is held out of training (`--held`, default modular). The rest are split in two
groups, A and B. From `expert:coder` runs on the train split:
  box A, box B     mined from the coder's runs on group A's and group B's categories
  box held         mined from the coder's run on the held-out categories (the box under test)
  boxed runs       the box-aware coder with box A mounted on A's tasks, and with box B on B's: it calls a listed
                   box tool wherever one computes its program
Students (SmolLM2-135M from the base model, `train`'s defaults, the same `--tokens` each):
  plain SFT        the coder's box-less runs on A and B
  box-literate     the boxed runs on A and B next to the box-less ones: it sees two different tool lists, and
                   no tool list at all, so it has to read whichever list it is given
  box-literate, renamed tools   the same, but `--rename-share` of the boxed trajectories call their box tools by
                   fresh names (`trajdistill skills rename-tools`): a tool's name no longer gives it away
  box-literate, top-1 lists     the same as box-literate, but its boxed runs were collected with one box tool
                   listed per task (`--skills-top-k 1`, BM25), and it is evaluated so: the one listed tool is
                   the one to weigh, and it changes from task to task
  box-literate, top-1 lists, renamed tools and parameters   the same, with `--rename-share` of the boxed
                   trajectories renamed, their tools' parameters too (`rename-tools --params`): the arguments are
                   to be copied from the signature the list shows
  box-literate, top-1 lists with examples   the same as top-1 lists, but collected and evaluated with
                   `--skills-examples 1`: the listed tool shows the call that solved its source task nearest the
                   task, so the task's wording is turned into arguments by analogy (`mod` -> `%`)
  box-literate, top-1 lists with examples, mixed notation   the same, but every run of groups A and B (and so
                   boxes A and B) is on tasks half of which write their operators as a person does (`3 × 4 − 2`,
                   the env's `notation=mixed`): a call then translates the task's expression, not copies it
  box-literate, top-1 lists citing examples, mixed notation   the same, with boxed runs collected since the
                   coder's Thought cites the listed example before a box call (`Its example turns "..." into
                   {...}, so I call it the same way`); the earlier with-examples runs predate that Thought
  ..., recovering from slips   the same, with boxed runs of `expert:slipping-coder`: in half the episodes whose
                   task is not written in Python's notation it first copies the task's expression into the
                   expression tool, gets the error and calls again translated; trained with `mask_failed_calls`
                   (the recovery is learned, the slip is not). Evaluate it with `--max-steps 3` (a turn to recover)
                   Its slips fail only on boxes mined before `evaluate_expression` read a person's notation
                   (stop 37); on boxes mined since, the copied expression just works and nothing is recovered
Evaluation: held-out test tasks of the held-out categories only, each student with box held mounted and
without any box, plus the coder with the box as the reference. Rows go to bench/results/box-transfer.jsonl
as each finishes (a cut-off run resumes: runs, boxes, students and rows already there are kept). `--seed N` trains
the chosen students again with another training seed (arms ", seed N"): the spread between seeds sizes a gain.
`--strict-tools` evaluates the students (both arms) with strict tool calls (`--agent-option strict_tools=true`: each
Action names a listed tool, its Action Input has the tool's parameters and value types), in arms of their own
(", strict tool calls"); the students are the same trainings.

    python bench/box_transfer.py [--held modular] [--tokens 100000] [--tasks-per-category 500]
                                 [--test-tasks 100] [--sandbox nsjail] [--out bench-out/box-transfer]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from _quality import failures_cell, played, steps_for, success_cells, tool_use

from trajdistill.agents import CollectConfig, EvalConfig, collect, evaluate
from trajdistill.envs.math._kinds import CATEGORIES
from trajdistill.skills import TOP_K, MineConfig, mine, mount_skills, rename_tools
from trajdistill.trajectories import RunStore
from trajdistill.train import TrainConfig, train


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--held", default="modular", help="categories held out of training, comma-separated")
    ap.add_argument("--tokens", type=int, default=100000, help="training tokens of each student")
    ap.add_argument("--tasks-per-category", type=int, default=500, help="train tasks per category of each run")
    ap.add_argument("--test-tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rename-share", type=float, default=0.5, help="boxed trajectories renamed, renamed-tools arm")
    ap.add_argument("--eval-examples", type=int, default=None,
                    help="example calls per listed box tool when evaluating a with-examples student (default: as it "
                         "was trained, 1); another value makes arms of their own")
    ap.add_argument("--students", default=";".join(STUDENTS),
                    help=f"students to train and evaluate, ';'-separated, of: {'; '.join(STUDENTS)}")
    ap.add_argument("--seed", type=int, default=0,
                    help="the students' training seed; another than 0 trains students and arms of their own")
    ap.add_argument("--held-box", default="box-held",
                    help="the held box's directory under OUT/boxes, mined by the current miner on first use; another "
                         "name makes with-box arms of their own (e.g. a box mined again after a miner change)")
    ap.add_argument("--strict-tools", action="store_true",
                    help="evaluate the students with strict tool calls (arms of their own, the same trainings)")
    ap.add_argument("--data-only", action="store_true",
                    help="collect the runs and mine the boxes the students need, then stop (no model is loaded)")
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--out", type=Path, default=Path("bench-out/box-transfer"))
    ap.add_argument("--rows", type=Path, default=Path(__file__).parent / "results" / "box-transfer.jsonl")
    args = ap.parse_args()
    args.held = [c for c in CATEGORIES if c in args.held.split(",")]
    args.students = [n.strip() for n in args.students.split(";") if n.strip()]
    unknown = [n for n in args.students if n not in STUDENTS]
    if unknown:
        ap.error(f"unknown student {unknown[0]!r}; known: {'; '.join(STUDENTS)}")
    rest = [c for c in CATEGORIES if c not in args.held]
    args.groups = {"A": rest[: len(rest) // 2], "B": rest[len(rest) // 2:]}
    return args


def coder_run(args: argparse.Namespace, name: str, categories: list[str], box: Path | None = None,
              top_k: int = TOP_K, examples: int = 0, notation: str = "python", expert: str = "coder") -> Path:
    out = args.out / "runs" / (name if notation == "python" else f"{name}-{notation}")
    params = {"categories": ",".join(categories), **({"notation": notation} if notation != "python" else {})}
    # always through resume: a run cut off (or failed at its start) has a stats.json but not all its tasks
    collect(CollectConfig(env="math", env_params=params, teachers=[f"expert:{expert}"],
                          out=str(out), tasks=args.tasks_per_category * len(categories), split="train",
                          sandbox=args.sandbox, concurrency=8, skills=[str(box)] if box else [],
                          skills_top_k=top_k, skills_examples=examples, resume=out.exists()), mount=mount_skills)
    return out


def mined(args: argparse.Namespace, name: str, run: Path) -> Path:
    out = args.out / "boxes" / name
    if not (out / "skillbox.json").exists():
        mine(MineConfig(runs=[str(run)], out=str(out), mode="tools", sandbox=args.sandbox, force=True))
    return out


def renamed_run(args: argparse.Namespace, name: str, run: Path, params: bool = False) -> Path:
    out = args.out / "runs" / name
    if not (out / "stats.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        rename_tools(run, out, share=args.rename_share, seed=0, params=params)
    return out


def student(args: argparse.Namespace, name: str, runs: list[Path]) -> str:
    """The student `name` trained on `runs`; a recovering student's failed calls are not trained (the slips)."""
    out = args.out / "students" / (name + (f"-seed{args.seed}" if args.seed else ""))
    if not (out / "train_config.yaml").exists():
        shutil.rmtree(out, ignore_errors=True)
        steps = steps_for(runs, args.tokens, "hf:smollm2-135m")
        train(TrainConfig(data=[str(r) for r in runs], student="hf:smollm2-135m", out=str(out), max_steps=steps,
                          seed=args.seed, mask_failed_calls="-slips" in name))
    return f"hf:{out.resolve()}"


def done_rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {r["variant"]: r for r in map(json.loads, args.rows.read_text().splitlines())} if args.rows.exists() else {}


def evaluated(args: argparse.Namespace, name: str, spec: str, box: Path | None, top_k: int = TOP_K,
              examples: int = 0) -> dict[str, Any]:
    done = done_rows(args)
    if name in done:
        return done[name]
    out = args.out / "eval" / name.replace(" ", "-").replace("+", "plus")
    res = evaluate(EvalConfig(env="math", env_params={"categories": ",".join(args.held)}, agents=[spec],
                              split="test", tasks=args.test_tasks, max_steps=args.max_steps, sandbox=args.sandbox,
                              concurrency=args.concurrency, skills=[str(box)] if box else [], skills_top_k=top_k,
                              skills_examples=examples, out=str(out),
                              agent_options={"max_new_tokens": args.new_tokens, **hf_options(args, spec)},
                              resume=True), mount=mount_skills)
    agent = played(res.agents[0], name)
    run = out / agent.run
    row = {"variant": name, **agent.to_dict(), "held": args.held, "box_use": box_use(run, box),
           "tool_use": tool_use(run), "tokens": args.tokens, "skills_top_k": top_k, "skills_examples": examples,
           "seed": args.seed, "strict_tools": args.strict_tools, "date": time.strftime("%Y-%m-%d")}
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    with open(args.rows, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"{name}: success {row['success_rate']:.1%}, box use {row['box_use']:.0%}", flush=True)
    return row


def hf_options(args: argparse.Namespace, spec: str) -> dict[str, Any]:
    """A student's own options: its batch, and strict tool calls when asked for."""
    if not spec.startswith("hf:"):
        return {}
    return {"batch_size": args.concurrency, **({"strict_tools": True} if args.strict_tools else {})}


def box_use(run: Path, box: Path | None) -> float:
    """The share of episodes that called one of the box's tools."""
    if box is None:
        return 0.0
    names = {p.stem for p in (box / "tools").glob("*.py")}
    trajs = RunStore.open(run).load()
    return sum(any(m.role == "tool" and m.name in names for m in t.messages) for t in trajs) / max(1, len(trajs))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | success | 95% CI | box-tool use | invalid actions | failures |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {success_cells(r)} | {r['box_use']:.0%} | {r['invalid_action_rate']:.1%} | "
                     f"{failures_cell(r)} |")
    return "\n".join(lines)


STUDENTS = {"plain SFT": "plain", "box-literate": "box-literate",
            "box-literate, renamed tools": "box-literate-renamed", "box-literate, top-1 lists": "box-literate-top1",
            "box-literate, top-1 lists, renamed tools and parameters": "box-literate-top1-renamed-params",
            "box-literate, top-1 lists with examples": "box-literate-top1-examples",
            "box-literate, top-1 lists with examples, mixed notation": "box-literate-top1-examples-mixed",
            "box-literate, top-1 lists citing examples, mixed notation": "box-literate-top1-cited-examples-mixed",
            "box-literate, top-1 lists citing examples, mixed notation, recovering from slips":
                "box-literate-top1-cited-examples-slips-mixed"}


def training_runs(args: argparse.Namespace, slug: str, boxes: dict[str, Path]) -> list[Path]:
    """A student's training runs, collected (or renamed) on first use."""
    notation = notation_of(slug)
    plain = [coder_run(args, f"plain-{g}", cats, notation=notation) for g, cats in args.groups.items()]
    if slug == "plain":
        return plain
    top_k, examples = top_k_of(slug), examples_of(slug)
    suffix = ("" if top_k == TOP_K else f"-top{top_k}") + (f"-ex{examples}" if examples else "")
    suffix += "-cited" if "-cited" in slug else ""  # new runs: the older ones were collected before the citing coder
    suffix += "-slips" if "-slips" in slug else ""
    expert = "slipping-coder" if "-slips" in slug else "coder"
    boxed = [coder_run(args, f"boxed-{g}{suffix}", cats, boxes[g], top_k, examples, notation, expert)
             for g, cats in args.groups.items()]
    if "-renamed" in slug:
        params = slug.endswith("-params")
        boxed = [renamed_run(args, f"renamed-{run.name.removeprefix('boxed-')}" + ("-params" if params else ""), run,
                             params) for run in boxed]
    return [*boxed, *plain]


def top_k_of(slug: str) -> int:
    """Box tools listed per task when this student's boxed data was collected, and when it is evaluated."""
    return 1 if "-top1" in slug else TOP_K


def examples_of(slug: str) -> int:
    """Example calls listed with each box tool, in this student's boxed data and its evaluation."""
    return 1 if "-examples" in slug else 0


def notation_of(slug: str) -> str:
    """The math env's notation of this student's training runs (its test tasks are always in Python's)."""
    return "mixed" if slug.endswith("-mixed") else "python"


def group_boxes(args: argparse.Namespace, notation: str) -> dict[str, Path]:
    """Boxes A and B, mined from the coder's box-less runs on each group in `notation`."""
    suffix = "" if notation == "python" else f"-{notation}"
    return {g: mined(args, f"box-{g}{suffix}", coder_run(args, f"plain-{g}", cats, notation=notation))
            for g, cats in args.groups.items()}


def main() -> None:
    args = arguments()
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    held = mined(args, args.held_box, coder_run(args, "plain-held", args.held))
    which = "" if args.held_box == "box-held" else f" ({args.held_box})"
    # each notation's boxes A and B once (python's first, as before), with the held box beside them
    notations = dict.fromkeys(["python", *(notation_of(STUDENTS[name]) for name in args.students)])
    boxes = {n: {"held": held, **group_boxes(args, n)} for n in notations}
    if args.data_only:
        for name in args.students:
            training_runs(args, STUDENTS[name], boxes[notation_of(STUDENTS[name])])
        return
    rows = [evaluated(args, f"teacher expert:coder + held box{which}", "expert:coder", held)]
    for name in args.students:
        slug = STUDENTS[name]
        examples = examples_of(slug) if args.eval_examples is None or not examples_of(slug) else args.eval_examples
        shown = "" if examples == examples_of(slug) else f" ({examples} examples listed)"
        name += f", seed {args.seed}" if args.seed else ""
        name += ", strict tool calls" if args.strict_tools else ""
        arms = {f"{name}, no box": None, f"{name} + held box{which}{shown}": held}
        if set(arms) <= set(done_rows(args)):
            rows += [done_rows(args)[arm] for arm in arms]
            continue  # a later session trains no student whose rows are in
        spec = student(args, slug, training_runs(args, slug, boxes[notation_of(slug)]))
        rows += [evaluated(args, arm, spec, box, top_k_of(slug), examples) for arm, box in arms.items()]
    print(f"held out: {', '.join(args.held)}; groups {args.groups}")
    print(table(rows))


if __name__ == "__main__":
    main()
