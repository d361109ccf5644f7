"""Policy-level throughput vs concurrency against an endpoint that adds fixed latency per call.

A local OpenAI-compatible server (tests/fault_server.py, in its own process) answers every chat completion after
--latency-ms. OpenAIPolicy makes --calls calls with its in-flight bound at 1 and at 32; the
throughput ratio shows how much the async client overlaps waiting (target >= 25x at 32).

Variants (--variants), each the same policy (retries, semaphore, one client per event loop shared by all calls)
with another HTTP layer, measured round robin in one run:
  policy   OpenAIPolicy as installed (since issue 16: plain JSON over a shared httpx2.AsyncClient)
  httpx    the same plain JSON over an httpx (0.28) AsyncClient
  sdk      the openai SDK's AsyncOpenAI and its pydantic models, as before issue 16
  sdk-raw  the openai SDK with `with_raw_response`: its request transforms, no response models
`client_cpu_ms` is this process's CPU time per call (time.process_time), the server's not included.

    python bench/concurrency_scaling.py [--calls 128] [--latency-ms 100] [--levels 1,32] [--repeats 3]
    python bench/concurrency_scaling.py --against /path/to/other/venv/bin/python  # that install's policy, interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_server import Reply, serve_in_subprocess  # noqa: E402

from trajdistill.agents._openai import OpenAIPolicy  # noqa: E402
from trajdistill.envs import PolicyRequest, Task  # noqa: E402


class HttpxPolicy(OpenAIPolicy):
    """Plain JSON over httpx 0.28 (its errors are not mapped: the bench endpoint never fails)."""

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            client = httpx.AsyncClient(
                base_url=self.base_url + "/", timeout=self.timeout_s, trust_env=False,
                headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=2 * self.concurrency))
            self._per_loop[loop] = (client, asyncio.Semaphore(self.concurrency))
        return self._per_loop[loop]


class SDKPolicy(OpenAIPolicy):
    """The openai SDK under the same retries (its errors are not mapped: the bench endpoint never fails)."""

    def _client(self):
        import openai

        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                                        timeout=self.timeout_s)
            self._per_loop[loop] = (client, asyncio.Semaphore(self.concurrency))
        return self._per_loop[loop]

    async def _create(self, client, body: bytes):
        return (await client.chat.completions.create(**json.loads(body))).model_dump()

    async def close(self) -> None:
        for client, _ in self._per_loop.values():
            await client.close()
        self._per_loop = {}


class SDKRawPolicy(SDKPolicy):
    async def _create(self, client, body: bytes):
        raw = await client.chat.completions.with_raw_response.create(**json.loads(body))
        return json.loads(raw.http_response.content)


VARIANTS = {"policy": OpenAIPolicy, "httpx": HttpxPolicy, "sdk": SDKPolicy, "sdk-raw": SDKRawPolicy}


def request(i: int) -> PolicyRequest:
    task = Task(id=f"t{i}", env="bench", split="test", prompt=f"What is {i} + 1?")
    return PolicyRequest(messages=[{"role": "user", "content": task.prompt}], tools=[], task=task)


async def one_run(policy: OpenAIPolicy, calls: int) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    turns = await asyncio.gather(*(policy(request(i)) for i in range(calls)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if not all(t.content for t in turns):
        raise RuntimeError("a call came back empty")
    return wall, cpu


async def measure(variant: str, base_url: str, concurrency: int, calls: int) -> tuple[float, float]:
    policy = VARIANTS[variant](f"bench@{base_url}", concurrency=concurrency)
    await one_run(policy, min(calls, concurrency))  # warm-up: connections, imports
    try:
        return await one_run(policy, calls)
    finally:
        await policy.close()


async def run_all(variants: list[str], levels: list[int], calls: int, repeats: int, latency_ms: float) -> dict:
    rows: dict[str, dict[int, list[tuple[float, float]]]] = {v: {c: [] for c in levels} for v in variants}
    with serve_in_subprocess(lambda i, body: Reply(delay_s=latency_ms / 1000)) as (url, _):
        for _ in range(repeats):  # round robin, so load changes hit every variant alike
            for v in variants:
                for c in levels:
                    rows[v][c].append(await measure(v, url, c, calls))
    return rows


def summary(rows: dict[int, list], calls: int) -> dict:
    levels = sorted(rows)
    out = {}
    for c in levels:
        wall = statistics.median(w for w, _ in rows[c])
        out[c] = {"median_wall_s": round(wall, 3), "calls_per_s": round(calls / wall, 1),
                  "client_cpu_ms": round(1000 * statistics.median(u for _, u in rows[c]) / calls, 2),
                  "walls_s": [round(w, 3) for w, _ in rows[c]]}
    out["ratio"] = round(out[levels[-1]]["calls_per_s"] / out[levels[0]]["calls_per_s"], 1)
    return out


def against(other: str, args: argparse.Namespace) -> dict:
    sides = {"before": other, "after": sys.executable}
    rows: dict[str, dict[int, list]] = {s: {} for s in sides}
    for _ in range(args.repeats):
        for side, python in sides.items():
            cmd = [python, __file__, "--variants", "policy", "--repeats", "1", "--calls", str(args.calls),
                   "--latency-ms", str(args.latency_ms), "--levels", args.levels, "--json"]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["policy"]
            for c, r in got.items():
                rows[side].setdefault(int(c), []).extend(map(tuple, r))
    return {side: summary(rows[side], args.calls) for side in sides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=128)
    ap.add_argument("--latency-ms", type=float, default=100)
    ap.add_argument("--levels", default="1,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="policy,httpx,sdk,sdk-raw")
    ap.add_argument("--against", metavar="PYTHON", help="compare with the OpenAIPolicy of another install")
    ap.add_argument("--json", action="store_true", help="print the raw (wall, cpu) rows")
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    if args.against:
        print(json.dumps({"latency_ms": args.latency_ms, "calls": args.calls, **against(args.against, args)},
                         indent=2))
        return
    levels = [int(x) for x in args.levels.split(",")]
    rows = asyncio.run(run_all(args.variants.split(","), levels, args.calls, args.repeats, args.latency_ms))
    if args.json:
        print(json.dumps(rows))
        return
    print(json.dumps({"latency_ms": args.latency_ms, "calls": args.calls,
                      **{v: summary(r, args.calls) for v, r in rows.items()}}, indent=2))


if __name__ == "__main__":
    main()
