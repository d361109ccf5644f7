"""Learning curve: success of the distilled student against training tokens, on held-out test tasks.

One teacher run on the train split; the student trains in segments that double the budget (25k, 50k,
100k, ... tokens), each segment going on from the previous checkpoint with `train`'s defaults (its own
linear decay, so every checkpoint is annealed), and every checkpoint is evaluated on the same test
tasks (greedy, the same turn limit and generation length). Everything resumes: the run, finished
checkpoints and finished evals are kept, a cut-off eval continues where it stopped. The result rows go
to bench/results/learning_curve-<env>.jsonl, which is committed, so a later session (on a fresh machine)
keeps them and trains and evaluates only the budgets still missing. `--report` prints the table for
bench/RESULTS.md and draws bench/results/learning_curve-<env>.png; `--reclassify` first recounts every row's
failure kinds from the eval runs kept in --out (after the taxonomy gained a kind).

    python bench/learning_curve.py [--env math --teacher expert:coder] [--budgets 25000,50000,...]
                                   [--test-tasks 200] [--until-tokens N] [--backend hf|vllm-serve] [--report]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from _quality import (add_env_params, add_training_options, called, env_params, played, steps_for, tool_use,
                      training_settings)

from trajdistill.agents import CollectConfig, EvalConfig, collect, evaluate
from trajdistill.agents._eval import slug
from trajdistill.train import TrainConfig, TrainResult, train
from trajdistill.envs import make_env
from trajdistill.trajectories import FAILURE_KINDS, RunStore, failure_counts

STUDENT = "smollm2-135m"
BUDGETS = "25000,50000,100000,200000,400000,800000,1600000"


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="math")
    ap.add_argument("--teacher", default="expert:coder")
    ap.add_argument("--out", type=Path, default=None, help="default: bench-out/curve/<env>")
    ap.add_argument("--train-tasks", type=int, default=3000)
    ap.add_argument("--budgets", default=BUDGETS, help="cumulative training tokens of the checkpoints")
    ap.add_argument("--until-tokens", type=int, default=0, help="stop after the checkpoint at this budget")
    ap.add_argument("--test-tasks", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=2, help="ReAct turns per eval episode")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--stop-on-repeat", type=int, default=0,
                    help="end an eval episode after K identical turns with identical observations (eval's option; "
                         "a lower bound on success that spares a looping student's remaining turns); 0: never")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--backend", choices=("hf", "vllm-serve"), default="hf",
                    help="how the checkpoints generate in eval; vllm-serve (CPU venv) is 1.5x hf on idle cores, "
                         "4.5x on loaded ones (bench/RESULTS.md)")
    ap.add_argument("--sandbox", default="auto")
    add_training_options(ap)
    add_env_params(ap)
    ap.add_argument("--rows", type=Path, default=None, help="default: bench/results/learning_curve-<env>.jsonl")
    ap.add_argument("--no-base", action="store_true", help="skip the base model's eval (it costs the most)")
    ap.add_argument("--report", action="store_true", help="only print the tables and draw the plot")
    ap.add_argument("--reclassify", action="store_true",
                    help="recount every row's failure kinds from its eval run in --out (after the taxonomy changed)")
    args = ap.parse_args()
    args.out = args.out or Path("bench-out/curve") / slug(args.env)
    args.rows = args.rows or Path(__file__).parent / "results" / f"learning_curve-{slug(args.env)}.jsonl"
    args.train = training_settings(args)
    args.env_params = env_params(args)
    args.out.mkdir(parents=True, exist_ok=True)
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    return args


def teacher_run(args: argparse.Namespace) -> Path:
    out = args.out / "run"
    if not (out / "stats.json").exists():
        collect(CollectConfig(env=args.env, env_params=args.env_params, teachers=[args.teacher], out=str(out),
                              tasks=args.train_tasks,
                              split="train", sandbox=args.sandbox, concurrency=8, resume=out.exists()))
    return out


def checkpoint(args: argparse.Namespace, run: Path, budget: int, previous: tuple[int, str]) -> str:
    """The student model at `budget` tokens, trained on from the checkpoint `previous` (tokens, model)."""
    out = args.out / "students" / f"tokens-{budget}"
    if not (out / "train_config.yaml").exists():
        shutil.rmtree(out, ignore_errors=True)  # a cut-off segment is trained again whole
        done, student = previous
        start = time.monotonic()
        steps = steps_for([run], budget - done, student, **args.train)
        result = train_apart(TrainConfig(data=[str(run)], student=student, out=str(out), max_steps=steps,
                                         seed=budget, logging_steps=max(1, steps // 10), **args.train))
        print(f"tokens-{budget}: {result.steps} steps in {time.monotonic() - start:.0f} s, losses {result.losses}",
              flush=True)
    return str(out.resolve())


def train_apart(cfg: TrainConfig) -> TrainResult:
    """`train` in a child process: the trainer's memory (8-9 GB resident after training in-process) goes back to
    the machine before the eval starts its vLLM server, so another bench can share the 24 GB."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(train, (cfg,))


def agent_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "hf":  # one batch holds every concurrent episode
        return {"max_new_tokens": args.new_tokens, "batch_size": args.concurrency}
    return {"max_new_tokens": args.new_tokens, "max_model_len": 8192}  # a 10-turn game episode outgrows 4096


def evaluated(args: argparse.Namespace, budget: int, model: str) -> dict[str, Any]:
    spec = f"{args.backend}:{model}"
    rows = {r["tokens"]: r for r in rows_of(args.rows)}
    if budget in rows:
        return rows[budget]
    out = args.out / "eval" / f"tokens-{budget}"
    res = evaluate(EvalConfig(env=args.env, env_params=args.env_params, agents=[spec], split="test",
                              tasks=args.test_tasks,
                              max_steps=args.max_steps, sandbox=args.sandbox, concurrency=args.concurrency,
                              stop_on_repeat=args.stop_on_repeat, agent_options=agent_options(args), out=str(out),
                              resume=True))
    agent = played(res.agents[0], f"tokens-{budget}")
    run = out / agent.run
    row = {"tokens": budget, **agent.to_dict(), "tool_call_rate": tool_rate(run), "tool_use": tool_use(run),
           "eval": {"max_steps": args.max_steps, "new_tokens": args.new_tokens, "backend": args.backend,
                    **({"stop_on_repeat": args.stop_on_repeat} if args.stop_on_repeat else {})},
           **({"env_params": args.env_params} if args.env_params else {}),
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 2 cores", **args.train}
    with open(args.rows, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"tokens-{budget}: success {agent.successes}/{agent.n}, invalid {agent.invalid_action_rate:.1%}, "
          f"failures {agent.failures}", flush=True)
    return row


def tool_rate(run: Path) -> float:
    trajs = RunStore.open(run).load()
    return sum(called(t, {"python", "act"}) for t in trajs) / len(trajs) if trajs else 0.0


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def table(rows: list[dict[str, Any]]) -> str:
    head = " | ".join(k.replace("_", " ") for k in FAILURE_KINDS)
    lines = [f"| training tokens | success | 95% CI | invalid actions | tool-call rate | {head} |",
             "|---|---|---|---|---|" + "---|" * len(FAILURE_KINDS)]
    for r in sorted(rows, key=lambda r: r["tokens"]):
        lo, hi = r["ci95"]
        kinds = " | ".join(str(r["failures"].get(k, 0)) for k in FAILURE_KINDS)
        lines.append(f"| {r['tokens']:,} | {r['successes']}/{r['n']} ({r['success_rate']:.1%}) | {lo:.1%}–{hi:.1%} | "
                     f"{r['invalid_action_rate']:.1%} | {r['tool_call_rate']:.0%} | {kinds} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["tokens"])
    x = [max(r["tokens"], 1e4) for r in rows]  # the base model sits at the left edge of the log axis
    fig, ax = plt.subplots(figsize=(7, 4))
    y = [r["success_rate"] for r in rows]
    err = [[r["success_rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["success_rate"] for r in rows]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label="success (95% Wilson CI)")
    ax.plot(x, [r["invalid_action_rate"] for r in rows], "s--", label="invalid action rate")
    ax.plot(x, [r["tool_call_rate"] for r in rows], "^:", label="tool-call rate")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    base = " (leftmost point: the base model)" if rows and rows[0]["tokens"] == 0 else ""
    ax.set_xlabel(f"training tokens{base}")
    ax.set_ylabel("rate on held-out test tasks")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    rows = rows_of(args.rows)
    if not rows:
        print("no rows yet")
        return
    plot(rows, args.rows.with_suffix(".png"), f"SmolLM2-135M on {args.env} ({args.teacher} trajectories)")
    print(table(rows))


def reclassify(args: argparse.Namespace) -> None:
    """Each row's failures, counted again with today's taxonomy from the trajectories its eval kept."""
    env = make_env(args.env, **args.env_params)
    rows = rows_of(args.rows)
    for row in rows:
        run = args.out / "eval" / f"tokens-{row['tokens']}" / row["run"]
        if not run.is_dir():
            print(f"tokens-{row['tokens']}: no eval run at {run}, kept as it was")
            continue
        tasks = {t.id: t for t in env.tasks("test", row["n"])}
        trajs = RunStore.open(run).load()
        row["failures"] = failure_counts((t, tasks[t.task_id].data.get("answer")) for t in trajs if t.task_id in tasks)
    args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    args = arguments()
    if args.reclassify:
        reclassify(args)
    if args.report or args.reclassify:
        report(args)
        return
    run = teacher_run(args)
    previous = (0, STUDENT)
    for budget in sorted(int(b) for b in args.budgets.split(",")):
        spec = checkpoint(args, run, budget, previous)
        evaluated(args, budget, spec)
        previous = (budget, spec)
        if args.until_tokens and budget >= args.until_tokens:
            break
    if not args.no_base:  # last: the base model writes every token it may, so its eval costs the most
        evaluated(args, 0, STUDENT)
    report(args)


if __name__ == "__main__":
    main()
