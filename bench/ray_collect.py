"""Collection throughput on the Ray executor (1, 2, 4 workers) against the local async collector, in one run.

The teacher is `openai:` against tests/fault_server.py in its own process, answering every chat completion
after --latency-ms with a final answer, so each math episode is one policy call and the endpoint's latency
is the work. Every mode collects the same --episodes tasks with the same --concurrency episodes in flight,
`--sandbox none`; the modes run interleaved, --repeats times, on one local Ray (num_cpus 4, so 4 workers fit).

    steady ep/s   (episodes - 1) / (last - first trajectory's created_at): throughput once the workers run
    wall s        the whole collect call, Ray actor start-up included
    ms/ep         1000 / steady ep/s with ONE episode in flight (--overhead-episodes of them, local and 1 Ray
                  worker), with the scripted expert:reasoner (one turn, no tool) as the teacher, so nothing hides it: an
                  episode's time end to end; Ray's less local's is the per-episode overhead of the Ray path
                  (driver -> worker call, the trajectory back, pickling)

    python bench/ray_collect.py [--episodes 200] [--concurrency 16] [--latency-ms 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ray  # noqa: E402
from fault_server import Reply, serve_in_subprocess  # noqa: E402

from trajdistill.agents import CollectConfig, collect_async  # noqa: E402

ANSWER = "Thought: I know it.\nFinal Answer: 42"


async def one_run(teacher: str, episodes: int, concurrency: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        ray_settings = {"executor": "ray", "ray_workers": workers} if workers else {}
        cfg = CollectConfig(env="math", teachers=[teacher], out=f"{d}/run", tasks=episodes,
                            concurrency=concurrency, sandbox="none", **ray_settings)
        start = time.perf_counter()
        store, progress = await collect_async(cfg)
        wall = time.perf_counter() - start
        stamps = sorted(t.created_at for t in store.load())
    if progress.errors or len(stamps) != episodes:
        raise RuntimeError(f"{progress.errors} episodes errored, {len(stamps)} of {episodes} finished")
    return {"wall_s": wall, "steady_eps": (episodes - 1) / (stamps[-1] - stamps[0])}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-ms", type=float, default=100)
    ap.add_argument("--workers", default="1,2,4", help="Ray worker counts to run (0 is the local collector).")
    ap.add_argument("--overhead-episodes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    # (workers, episodes in flight, episodes); 0 workers is the local collector
    modes = [(w, args.concurrency, args.episodes) for w in [0] + [int(w) for w in args.workers.split(",")]]
    modes += [(0, 1, args.overhead_episodes), (1, 1, args.overhead_episodes)]
    ray.init(address="local", num_cpus=max(m[0] for m in modes), include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()
    runs: dict[tuple, list[dict]] = {m: [] for m in modes}
    with serve_in_subprocess(lambda i, body: Reply(content=ANSWER, delay_s=args.latency_ms / 1000)) as (url, _):
        served = f"openai:fault-model@{url}"
        await one_run(served, args.concurrency, args.concurrency, 0)  # warm-up: imports, connections
        for _ in range(args.repeats):
            for workers, concurrency, episodes in modes:  # interleaved, so load swings hit every mode
                teacher = "expert:reasoner" if concurrency == 1 else served
                runs[workers, concurrency, episodes].append(await one_run(teacher, episodes, concurrency, workers))
    load_after = os.getloadavg()
    ray.shutdown()
    report(args, runs, load_before, load_after)


def report(args: argparse.Namespace, runs: dict[tuple, list[dict]], before: tuple, after: tuple) -> None:
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "steady_eps")} for m, rs in runs.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {platform.platform()}, "
          f"load average {before[0]:.1f} before, {after[0]:.1f} after; {args.latency_ms:.0f} ms endpoint latency, "
          f"median of {args.repeats} interleaved runs")
    print(f"\n{args.episodes} episodes, {args.concurrency} in flight:\n")
    print("| executor | steady ep/s | wall s |\n|---|---:|---:|")
    for (workers, concurrency, _), m in med.items():
        if concurrency == args.concurrency and concurrency != 1:
            print(f"| {_name(workers)} | {m['steady_eps']:.1f} | {m['wall_s']:.2f} |")
    print(f"\n{args.overhead_episodes} episodes of expert:reasoner, one in flight:\n")
    print("| executor | ms/ep | wall s |\n|---|---:|---:|")
    ms = {}
    for (workers, concurrency, _), m in med.items():
        if concurrency == 1:
            ms[workers] = 1000 / m["steady_eps"]
            print(f"| {_name(workers)} | {ms[workers]:.1f} | {m['wall_s']:.2f} |")
    print(f"\nper-episode overhead of the Ray path: {ms[1] - ms[0]:.1f} ms")
    print("\n" + json.dumps({str(m): rs for m, rs in runs.items()}))


def _name(workers: int) -> str:
    return "local (async)" if workers == 0 else f"ray, {workers} worker{'s' if workers > 1 else ''}"


if __name__ == "__main__":
    asyncio.run(main())
