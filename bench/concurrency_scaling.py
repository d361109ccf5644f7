"""Policy-level throughput vs concurrency against an endpoint that adds fixed latency per call.

A local OpenAI-compatible server (tests/fault_server.py, in its own process) answers every chat completion after
--latency-ms. OpenAIPolicy makes --calls calls with its in-flight bound at 1 and at 32; the
throughput ratio shows how much the async client overlaps waiting (target >= 25x at 32).

    python bench/concurrency_scaling.py [--calls 128] [--latency-ms 100] [--levels 1,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_server import Reply, serve_in_subprocess  # noqa: E402

from trajdistill.agents._openai import OpenAIPolicy  # noqa: E402
from trajdistill.envs import PolicyRequest, Task  # noqa: E402


def request(i: int) -> PolicyRequest:
    task = Task(id=f"t{i}", env="bench", split="test", prompt=f"What is {i} + 1?")
    return PolicyRequest(messages=[{"role": "user", "content": task.prompt}], tools=[], task=task)


async def one_run(policy: OpenAIPolicy, calls: int) -> float:
    start = time.perf_counter()
    turns = await asyncio.gather(*(policy(request(i)) for i in range(calls)))
    wall = time.perf_counter() - start
    if not all(t.content for t in turns):
        raise RuntimeError("a call came back empty")
    return wall


async def measure(base_url: str, concurrency: int, calls: int, repeats: int) -> dict:
    policy = OpenAIPolicy(f"bench@{base_url}", concurrency=concurrency)
    await one_run(policy, min(calls, concurrency))  # warm-up: connections, imports
    walls = [await one_run(policy, calls) for _ in range(repeats)]
    await policy.close()
    wall = statistics.median(walls)
    return {"concurrency": concurrency, "calls": calls, "median_wall_s": round(wall, 3),
            "calls_per_s": round(calls / wall, 1), "walls_s": [round(w, 3) for w in walls]}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=128)
    ap.add_argument("--latency-ms", type=float, default=100)
    ap.add_argument("--levels", default="1,32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with serve_in_subprocess(lambda i, body: Reply(delay_s=args.latency_ms / 1000)) as (url, _):
        results = [await measure(url, c, args.calls, args.repeats) for c in levels]
    ratio = results[-1]["calls_per_s"] / results[0]["calls_per_s"]
    print(json.dumps({"latency_ms": args.latency_ms, "results": results,
                      f"ratio_{levels[-1]}_vs_{levels[0]}": round(ratio, 1)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
