"""Framework overhead per step: the collector with the gold expert on twx:coin against raw TWX.

Three timings over the same seeds, in one run, repeated; medians reported:
  raw        textworld_express reset(gold) + step along the gold path (no trajdistill at all)
  episodes   the TwxEnv episodes stepped directly with the gold actions (env wrapper, no loop)
  collector  `collect` with expert:gold: LangGraph loop, ReAct text, parsing, fsynced run store
Overhead per step = (collector - raw) / steps; the split between env wrapper and loop is shown too.

    python bench/collector_overhead.py [--episodes 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import warnings

from trajdistill.agents._collector import CollectConfig, collect
from trajdistill.envs import make_env
from trajdistill.envs.twx import raw_gold_steps


def time_raw(seeds: list[int]) -> tuple[float, int]:
    start = time.perf_counter()
    steps = raw_gold_steps("coin", seeds)
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


def time_collector(n: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        cfg = CollectConfig(env="twx:coin", teachers=["expert:gold"], out=f"{d}/run", tasks=n, concurrency=1)
        start = time.perf_counter()
        store, progress = collect(cfg)
        elapsed = time.perf_counter() - start
        return elapsed, progress.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    seeds = [int(t.id.rsplit("-", 1)[1]) for t in make_env("twx:coin").tasks("train", n=args.episodes)]
    rows = {"raw": [], "episodes": [], "collector": []}
    steps = {}
    for _ in range(args.repeats):
        for name, fn in (("raw", lambda: time_raw(seeds)), ("episodes", lambda: time_episodes(args.episodes)),
                         ("collector", lambda: time_collector(args.episodes))):
            t, s = fn()
            rows[name].append(t)
            steps[name] = s
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
