"""Framework overhead per step: the collector with the gold expert on twx:coin against raw TWX.

Four timings over the same seeds, in one run, repeated; medians reported. Each includes starting one JVM.
  collector  `collect` with expert:gold: LangGraph loop, ReAct text, parsing, fsynced run store; a repeated
             run, so the twx game cache (fold seeds, intros, gold paths) is warm
  cold       the same with an empty game cache ($TRAJDISTILL_CACHE pointed at a new directory): a first run
  raw        textworld_express alone: reset each seed and step the exact commands the collector's episodes
             took (read back from its run), no trajdistill at all
  episodes   the TwxEnv episodes stepped directly with their gold actions (the env wrapper, no loop)
Overhead per step = (collector - raw) / steps; the split between env wrapper and loop is shown too, in wall
time and in this process's CPU time (the JVM's is not in it; on a loaded machine CPU is the steadier measure).
One untimed round first, so imports (LangGraph takes seconds) and the cache fill are not timed.

    python bench/collector_overhead.py [--episodes 40] [--repeats 5]
    python bench/collector_overhead.py --against /path/to/other/venv/bin/python [--repeats 9]

`--against` compares two installs side by side: each repeat runs this script once under each interpreter
(interleaved, in fresh processes), e.g. the base commit's worktree installed in a second venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

from trajdistill.agents import CollectConfig, collect
from trajdistill.envs import make_env
from trajdistill.envs._react_text import ParsedAction, parse_react
from trajdistill.envs.twx import _close_game, new_game, reset, resolve_params


class Clock:
    """Wall time and this process's CPU time (all its threads; the JVM's own CPU is not in it)."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


Row = tuple[float, float, int]  # wall s, CPU s, steps


def time_raw(episodes: list[tuple[int, list[str]]]) -> Row:
    clock = Clock().__enter__()
    twx = new_game("coin", resolve_params("coin"))
    steps = 0
    try:
        for seed, commands in episodes:
            reset(twx, seed, "train")
            for command in commands:
                steps += 1
                twx.step(command)
    finally:
        _close_game(twx)
    clock.__exit__()
    return clock.wall, clock.cpu, steps


async def _episodes(n: int) -> int:
    env = make_env("twx:coin")
    steps = 0
    try:
        for task in env.tasks("train", n=n):
            ep = await env.start(task)
            await ep.start()
            for action in ep.hints()["gold_path"]:
                steps += 1
                if (await ep.call("act", {"command": action})).done:
                    break
            await ep.close()
    finally:
        await env.close()
    return steps


def time_episodes(n: int) -> Row:
    with Clock() as clock:
        steps = asyncio.run(_episodes(n))
    return clock.wall, clock.cpu, steps


def time_collector(n: int) -> tuple[Row, list[tuple[int, list[str]]]]:
    with tempfile.TemporaryDirectory() as d:
        cfg = CollectConfig(env="twx:coin", teachers=["expert:gold"], out=f"{d}/run", tasks=n, concurrency=1)
        with Clock() as clock:
            store, progress = collect(cfg)
        played = [(int(t.task_id.rsplit("-", 1)[1]),
                   [json.loads(c.function.arguments)["command"] for m in t.messages if m.role == "assistant"
                    for c in m.tool_calls or []] or _react_commands(t))
                  for t in store.load()]
        return (clock.wall, clock.cpu, progress.steps), played


def _react_commands(traj) -> list[str]:
    out = []
    for m in traj.messages:
        if m.role == "assistant":
            parsed = parse_react(m.content)
            if isinstance(parsed, ParsedAction):
                out.append(parsed.arguments["command"])
    return out


def time_cold(n: int) -> Row:
    """The collector on an empty game cache (for code without one, the same as a repeated run)."""
    old = os.environ.get("TRAJDISTILL_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRAJDISTILL_CACHE"] = cache
        try:
            row, _ = time_collector(n)
        finally:
            if old is None:
                os.environ.pop("TRAJDISTILL_CACHE")
            else:
                os.environ["TRAJDISTILL_CACHE"] = old
    return row


def one_round(n: int) -> dict[str, Row]:
    row, played = time_collector(n)
    return {"collector": row, "cold": time_cold(n), "raw": time_raw(played), "episodes": time_episodes(n)}


def measure(n: int, repeats: int) -> dict[str, list[Row]]:
    warnings.simplefilter("ignore")
    time_collector(n)  # warm-up: imports, JIT of the JVM, the game cache
    rows: dict[str, list[Row]] = {}
    for _ in range(repeats):
        for k, v in one_round(n).items():
            rows.setdefault(k, []).append(v)
    return rows


def per_step_ms(rows: list[Row], which: int) -> float:
    return statistics.median(1000 * r[which] / max(1, r[2]) for r in rows)


def report(rows: dict[str, list[Row]]) -> dict[str, tuple[float, float]]:
    """Print the table; returns (wall, CPU) ms per step of each measure."""
    print("| measure | median wall s | median CPU s | steps (median) | wall ms/step | CPU ms/step |")
    print("|---|---:|---:|---:|---:|---:|")
    per = {k: (per_step_ms(v, 0), per_step_ms(v, 1)) for k, v in rows.items()}
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(r[0] for r in v):.3f} | {statistics.median(r[1] for r in v):.3f} "
              f"| {statistics.median(r[2] for r in v):g} | {per[k][0]:.3f} | {per[k][1]:.3f} |")
    return per


def overhead_line(per: dict[str, tuple[float, float]]) -> str:
    lines = []
    for i, what in enumerate(("wall", "CPU")):
        d = {k: v[i] for k, v in per.items()}
        lines.append(f"{what} overhead per step, collector vs raw: {d['collector'] - d['raw']:.3f} ms (cold cache "
                     f"{d['cold'] - d['raw']:.3f} ms; env wrapper {d['episodes'] - d['raw']:.3f} ms, "
                     f"loop + policy + store {d['collector'] - d['episodes']:.3f} ms)")
    return "\n".join(lines)


def against(other: str, n: int, repeats: int) -> None:
    """Interleave fresh processes of this script under `other` and under this interpreter."""
    sides = {"before": other, "after": sys.executable}
    rows: dict[str, dict[str, list[Row]]] = {side: {} for side in sides}
    for _ in range(repeats):
        for side, python in sides.items():
            out = subprocess.run([python, __file__, "--episodes", str(n), "--repeats", "1", "--json"],
                                 check=True, capture_output=True, text=True).stdout
            for k, v in json.loads(out.splitlines()[-1]).items():
                rows[side].setdefault(k, []).extend(map(tuple, v))
    for side in sides:
        print(f"\n{side} ({sides[side]}, {repeats} runs):\n")
        print(overhead_line(report(rows[side])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", metavar="PYTHON", help="an interpreter with the other install to compare")
    ap.add_argument("--json", action="store_true", help="print the raw (wall s, CPU s, steps) rows as one JSON line")
    args = ap.parse_args()
    if args.against:
        against(args.against, args.episodes, args.repeats)
        return
    rows = measure(args.episodes, args.repeats)
    if args.json:
        print(json.dumps(rows))
        return
    print(overhead_line(report(rows)))


if __name__ == "__main__":
    main()
