"""Framework overhead per step: the collector with the gold expert on twx:coin against raw TWX.

Three timings over the same seeds, in one run, repeated; medians reported. Each includes starting one JVM.
  collector  `collect` with expert:gold: LangGraph loop, ReAct text, parsing, fsynced run store
  raw        textworld_express alone: reset each seed and step the exact commands the collector's episodes
             took (read back from its run), no trajdistill at all
  episodes   the TwxEnv episodes stepped directly with their gold actions (the env wrapper, no loop); the
             wrapper samples gold paths at episode start (coin's is random) and lists valid actions
Overhead per step = (collector - raw) / steps; the split between env wrapper and loop is shown too.

    python bench/collector_overhead.py [--episodes 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import warnings

from trajdistill.agents import CollectConfig, collect
from trajdistill.envs import make_env
from trajdistill.envs._react_text import ParsedAction, parse_react
from trajdistill.envs.twx import _close_game, new_game, reset, resolve_params


def time_raw(episodes: list[tuple[int, list[str]]]) -> tuple[float, int]:
    start = time.perf_counter()
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
    return time.perf_counter() - start, steps


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


def time_episodes(n: int) -> tuple[float, int]:
    start = time.perf_counter()
    steps = asyncio.run(_episodes(n))
    return time.perf_counter() - start, steps


def time_collector(n: int) -> tuple[float, int, list[tuple[int, list[str]]]]:
    with tempfile.TemporaryDirectory() as d:
        cfg = CollectConfig(env="twx:coin", teachers=["expert:gold"], out=f"{d}/run", tasks=n, concurrency=1)
        start = time.perf_counter()
        store, progress = collect(cfg)
        elapsed = time.perf_counter() - start
        played = [(int(t.task_id.rsplit("-", 1)[1]),
                   [json.loads(c.function.arguments)["command"] for m in t.messages if m.role == "assistant"
                    for c in m.tool_calls or []] or _react_commands(t))
                  for t in store.load()]
        return elapsed, progress.steps, played


def _react_commands(traj) -> list[str]:
    out = []
    for m in traj.messages:
        if m.role == "assistant":
            parsed = parse_react(m.content)
            if isinstance(parsed, ParsedAction):
                out.append(parsed.arguments["command"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = {"collector": [], "raw": [], "episodes": []}
    steps = {}
    for _ in range(args.repeats):
        t, steps["collector"], played = time_collector(args.episodes)
        rows["collector"].append(t)
        t, steps["raw"] = time_raw(played)
        rows["raw"].append(t)
        t, steps["episodes"] = time_episodes(args.episodes)
        rows["episodes"].append(t)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"| measure | median s ({args.repeats} runs) | steps | ms/step |")
    print("|---|---|---|---|")
    for k in rows:
        print(f"| {k} | {med[k]:.3f} | {steps[k]} | {1000 * med[k] / max(1, steps[k]):.3f} |")
    per = lambda k: med[k] / max(1, steps[k])  # noqa: E731
    print(f"\noverhead per step, collector vs raw: {1000 * (per('collector') - per('raw')):.3f} ms "
          f"(env wrapper {1000 * (per('episodes') - per('raw')):.3f} ms, "
          f"loop + policy + store {1000 * (per('collector') - per('episodes')):.3f} ms)")


if __name__ == "__main__":
    main()
