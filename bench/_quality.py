"""Shared pieces of the quality benches (sft_quality, dual_quality, skills_quality).

Every trained variant starts from the base model and trains with `train`'s defaults (full fine-tuning,
packed 1024-token rows, lr 1e-4 with linear decay) for the same number of training tokens (`--tokens`;
the optimizer steps are worked out from each data set's packed rows). Every evaluation uses the same
test tasks, turn limit and generation length. The benches share one output folder per budget, so a
student trained by one (the coder student, the base eval) is reused by the others, and a cut-off run
resumes: runs, checkpoints and result rows already there are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from trajdistill._config import UsageError, env_params as cli_env_params
from trajdistill.agents import CollectConfig, EvalConfig, collect, evaluate, resolve_model
from trajdistill.agents._eval import slug
from trajdistill.skills import mount_skills
from trajdistill.trajectories import RunStore
from trajdistill.train import TrainConfig, build_data, train

STUDENT = "hf:smollm2-135m"
CODER_STUDENT = "coder: span-aware SFT"  # train's defaults on the coder run; the other benches reuse it


def arguments(doc: str, extra: dict[str, int] | None = None) -> argparse.Namespace:
    """The shared flags, plus `extra` integer flags (name -> default) of one bench."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (extra or {}).items():
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--out", type=Path, default=None, help="default: bench-out/quality-<tokens>")
    ap.add_argument("--train-tasks", type=int, default=3000)
    ap.add_argument("--tokens", type=int, default=50000, help="training tokens of every trained variant")
    ap.add_argument("--test-tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=2, help="ReAct turns per eval episode")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()
    args.out = args.out or Path(f"bench-out/quality-{args.tokens}")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def teacher_run(args: argparse.Namespace, teacher: str) -> Path:
    """The teacher's run on the train split (collected once)."""
    out = args.out / "runs" / slug(teacher)
    if not (out / "stats.json").exists():
        collect(CollectConfig(env="math", teachers=[teacher], out=str(out), tasks=args.train_tasks, split="train",
                              sandbox=args.sandbox, concurrency=8, resume=out.exists()))
    return out


def trained(args: argparse.Namespace, name: str, data: list[Path], student: str = STUDENT, **settings: Any) -> str:
    """The policy spec of `student` trained on `data` for `args.tokens` tokens (trained once)."""
    out = args.out / "students" / slug(name)
    if not (out / "train_config.yaml").exists():
        shutil.rmtree(out, ignore_errors=True)  # a cut-off training runs again whole
        start = time.monotonic()
        steps = steps_for(data, args.tokens, student, **settings)
        result = train(TrainConfig(data=[str(d) for d in data], student=student, out=str(out), max_steps=steps,
                                   logging_steps=max(1, steps // 10), **settings))
        print(f"{name}: trained {result.steps} steps in {time.monotonic() - start:.0f} s, losses {result.losses}",
              flush=True)
    return f"hf:{out.resolve()}"


def add_training_options(ap: argparse.ArgumentParser) -> None:
    """`--max-length` and `--batch-size`: the training settings a bench passes to every student it trains."""
    ap.add_argument("--max-length", type=int, default=None,
                    help="training max_length (train's default 1024 cuts long game episodes)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch_size")


def add_env_params(ap: argparse.ArgumentParser) -> None:
    """`--env-param KEY=VALUE` (repeatable): the env's parameters, e.g. numLocations=8 for a larger twx:coin map."""
    ap.add_argument("--env-param", dest="env_param", action="append", default=[], metavar="KEY=VALUE",
                    help="env parameter for every collection, rollout and eval (repeatable)")


def env_params(args: argparse.Namespace) -> dict[str, str]:
    """The `--env-param` pairs as a dict, parsed as the CLI parses them; a pair without `=` exits with one line."""
    try:
        return cli_env_params(args.env_param)
    except UsageError as e:
        raise SystemExit(str(e)) from None


def training_settings(args: argparse.Namespace) -> dict[str, int]:
    """The TrainConfig settings given by `add_training_options` (those left unset keep train's defaults)."""
    return {k: v for k, v in (("max_length", args.max_length), ("batch_size", args.batch_size)) if v}


def steps_for(data: list[Path], tokens: int, student: str, **settings: Any) -> int:
    """Optimizer steps that train about `tokens` tokens of `data` with `train`'s defaults and `settings`."""
    from transformers import AutoTokenizer  # heavy; only a bench that trains needs it

    cfg = TrainConfig(data=[str(d) for d in data], student=student, out=str(data[0].parent / "steps-probe"), **settings)
    rows = build_data(cfg, AutoTokenizer.from_pretrained(str(resolve_model(cfg.student_target)))).dataset
    per_row = sum(len(r) for r in rows["input_ids"]) / len(rows)
    return max(1, math.ceil(tokens / (per_row * cfg.batch_size * cfg.grad_accum)))


def played(agent: Any, name: str) -> Any:
    """`agent`'s eval result, when every episode played. A row with errored episodes (a server that died, say)
    would count them as failures and keep a later run from retrying them, so none is written."""
    if agent.errors:
        raise SystemExit(f"{name}: {agent.errors} of {agent.n} episodes errored (first: {agent.first_error}); "
                         "no row written: run the bench again and the eval retries them")
    return agent


def evaluated(args: argparse.Namespace, name: str, spec: str, skills: list[str] | None = None,
              preload: bool = False) -> dict[str, Any]:
    """The result row of `spec` on the test tasks (evaluated once), with its tool-use rates."""
    rows = {r["variant"]: r for r in results(args)}
    if name in rows:
        return rows[name]
    out = args.out / "eval" / slug(name)
    res = evaluate(EvalConfig(env="math", agents=[spec], split="test", tasks=args.test_tasks,
                              max_steps=args.max_steps, sandbox=args.sandbox, concurrency=args.concurrency,
                              agent_options={"max_new_tokens": args.new_tokens,
                                             **({"batch_size": args.concurrency} if spec.startswith("hf:") else {})},
                              skills=list(skills or []),
                              preload_skills=preload, out=str(out), resume=True), mount=mount_skills)
    agent = played(res.agents[0], name)
    row = {"variant": name, **agent.to_dict(), "tool_use": tool_use(out / agent.run),
           "budget": {"tokens": args.tokens},
           "eval": {"max_steps": args.max_steps, "new_tokens": args.new_tokens}, "date": time.strftime("%Y-%m-%d")}
    with open(rows_file(args), "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"{name}: success {row['success_rate']:.1%} invalid {row['invalid_action_rate']:.1%} "
          f"failures {row['failures']}", flush=True)
    return row


def rows_file(args: argparse.Namespace) -> Path:
    """The committed result rows of this budget (a later session, on a fresh machine, keeps them)."""
    path = Path(__file__).parent / "results" / f"quality-{args.tokens}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def results(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows so far: the committed file, plus OUT/results.jsonl where an older version of the bench wrote."""
    rows = []
    for path in (rows_file(args), args.out / "results.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return rows


def called(traj: Any, names: set[str]) -> bool:
    """The agent called one of the tools `names` at least once (a parse error is not a call)."""
    return any(m.role == "tool" and m.name in names for m in traj.messages)


def tool_use(run: Path) -> dict[str, dict[str, Any]]:
    """Per difficulty: episodes, the share that called the tool, and success with and without a call."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for t in RunStore.open(run).load():
        groups[str(t.difficulty)].append((called(t, {"python"}), t.outcome.success))
    out = {}
    for level, pairs in sorted(groups.items()):
        used = [ok for call, ok in pairs if call]
        unused = [ok for call, ok in pairs if not call]
        out[level] = {"n": len(pairs), "tool_rate": len(used) / len(pairs),
                      "success_with_tool": rate_of(used), "success_without_tool": rate_of(unused)}
    return out


def run_of(args: argparse.Namespace, row: dict[str, Any]) -> Path:
    """The run directory of an evaluated row."""
    return args.out / "eval" / slug(row["variant"]) / row["run"]


def rate_of(oks: list[bool]) -> float | None:
    return sum(oks) / len(oks) if oks else None


def success_cells(r: dict[str, Any]) -> str:
    """`k/n (rate) | lo–hi`: a row's success and its 95% Wilson CI, two markdown cells."""
    lo, hi = r["ci95"]
    return f"{r['successes']}/{r['n']} ({r['success_rate']:.1%}) | {lo:.1%}–{hi:.1%}"


def failures_cell(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in r["failures"].items() if v) or "–"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: success with its 95% Wilson CI, invalid actions, mean turns, tokens per episode."""
    lines = ["| variant | success | 95% CI | invalid actions | mean turns | tokens/episode |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {success_cells(r)} | {r['invalid_action_rate']:.1%} | "
                     f"{r['mean_steps']:.2f} | {r['tokens_per_episode']:.0f} |")
    return "\n".join(lines)


def tool_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per difficulty, the share of episodes that called python, and success with / without."""
    levels = sorted({lv for r in rows for lv in r["tool_use"]})
    head = " | ".join(f"d{lv}: tool rate · success with / without" for lv in levels)
    lines = [f"| variant | {head} |", "|---|" + "---|" * len(levels)]
    for r in rows:
        cells = []
        for lv in levels:
            u = r["tool_use"].get(lv)
            cells.append("–" if u is None else f"{u['tool_rate']:.0%} · {pct(u['success_with_tool'])} / "
                                               f"{pct(u['success_without_tool'])}")
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def report(args: argparse.Namespace, rows: list[dict[str, Any]], title: str, extra: str = "") -> None:
    """Print the tables (and `extra` markdown) and write them to OUT/<title>.md for bench/RESULTS.md."""
    text = f"{table(rows)}\n\nTool use per difficulty:\n\n{tool_table(rows)}\n" + (f"\n{extra}\n" if extra else "")
    (args.out / f"{slug(title)}.md").write_text(text)
    print(text)
