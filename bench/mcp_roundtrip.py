"""MCP tool-call round trip of a skill-box tool, against the SDK's bare round trip and the bare sandbox exec.

    python bench/mcp_roundtrip.py [--n 200] [--box-n 100] [--backends nsjail,docker] [--no-write]

All in one run, with the mcp SDK's own client (`mcp.client.Client`), one call at a time:
  sdk bare          a trivial in-process tool (`add`) on a plain MCPServer: in memory, stdio and HTTP
  sandbox bare      `run_tool_in_sandbox` for the box tool in a sandbox acquired per call (what the
                    server does per call, without MCP)
  box over MCP      the same box tool through `trajdistill skills serve BOX --sandbox B`, over stdio and HTTP
Prints a markdown table and writes the "MCP tool-call round trip" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import AsyncExitStack
from datetime import date
from functools import partial
from pathlib import Path

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from trajdistill.envs.sandbox import Limits, get_provider, sandboxes
from trajdistill.skills import SkillBox, ToolDraft, run_tool_in_sandbox

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## MCP tool-call round trip"
TOOL = '''
def add_numbers(a: int, b: int = 2) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b
'''
BARE_SERVER = """
import sys
from mcp.server.mcpserver import MCPServer
server = MCPServer("bare", log_level="WARNING")

@server.tool()
def add(a: int, b: int) -> int:
    '''Add two integers.'''
    return a + b

if sys.argv[1] == "stdio":
    server.run()
else:
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
"""
Row = tuple[str, str, list[float]]  # what, transport, seconds per call


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def timed(fn, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def client_call(client: Client, tool: str, args: dict):
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")


async def interleaved(calls: dict[str, object], n: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time each zero-argument coroutine function `n` times, round robin, so load drift hits all alike."""
    for fn in calls.values():
        for _ in range(warmup):
            await fn()
    out: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(n):
        keys = list(calls)
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            t = time.perf_counter()
            await calls[key]()
            out[key].append(time.perf_counter() - t)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """A server subprocess listening on a free port, stopped on exit."""

    def __init__(self, argv_for_port):
        self.port = free_port()
        self.proc = subprocess.Popen(argv_for_port(self.port), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return f"http://127.0.0.1:{self.port}/mcp"
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("http server did not start") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def bench_bare(n: int) -> list[Row]:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bare", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    args = {"a": 1, "b": 2}
    stdio = StdioServerParameters(command=sys.executable, args=["-c", BARE_SERVER, "stdio"])
    async with AsyncExitStack() as stack:
        url = stack.enter_context(HttpServer(lambda port: [sys.executable, "-c", BARE_SERVER, "http", str(port)]))
        clients = {t: await stack.enter_async_context(Client(target, read_timeout_seconds=60))
                   for t, target in (("in-memory", server), ("stdio", stdio), ("http", url))}
        times = await interleaved({t: partial(client_call, c, "add", args) for t, c in clients.items()}, n)
    return [("sdk bare: trivial in-process tool", t, xs) for t, xs in times.items()]


def serve_argv(box: Path, backend: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trajdistill", "skills", "serve", str(box), "--sandbox", backend, *extra]


async def bench_box(box: SkillBox, backend: str, n: int) -> list[Row]:
    args = {"a": 40, "b": 2}
    stdio = StdioServerParameters(command=sys.executable, args=serve_argv(box.path, backend)[1:])
    async with AsyncExitStack() as stack:
        provider = await stack.enter_async_context(get_provider(backend, Limits(timeout_s=30)))
        url = stack.enter_context(
            HttpServer(lambda port: serve_argv(box.path, backend, "--transport", "http", "--port", str(port))))

        async def bare():
            async with provider.acquire() as sb:
                ok, value = await run_tool_in_sandbox(box, "add_numbers", args, sb)
            if not ok:
                raise RuntimeError(value)

        calls = {"-": bare}
        for t, target in (("stdio", stdio), ("http", url)):
            client = await stack.enter_async_context(Client(target, read_timeout_seconds=60))
            calls[t] = partial(client_call, client, "add_numbers", args)
        times = await interleaved(calls, n)
    return [(f"sandbox bare: box tool ({backend})" if t == "-" else f"box tool over MCP ({backend})", t, xs)
            for t, xs in times.items()]


def table(rows: list[Row]) -> str:
    lines = ["| what | transport | n | p50 ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for what, transport, xs in rows:
        lines.append(f"| {what} | {transport} | {len(xs)} | {pct(xs, 0.5) * 1e3:.2f} | {pct(xs, 0.95) * 1e3:.2f} |")
    return "\n".join(lines)


def overheads(rows: list[Row], backends: list[str]) -> str:
    p50 = {(w, t): pct(xs, 0.5) * 1e3 for w, t, xs in rows}
    out = []
    for b in backends:
        bare = p50[(f"sandbox bare: box tool ({b})", "-")]
        for t in ("stdio", "http"):
            mcp = p50[(f"box tool over MCP ({b})", t)]
            sdk = p50[("sdk bare: trivial in-process tool", t)]
            out.append(f"- {b}, {t}: box tool round trip {mcp:.1f} ms = sandbox exec {bare:.1f} ms "
                       f"+ {mcp - bare:.1f} ms of MCP and server (the SDK's bare {t} round trip: {sdk:.2f} ms)")
    return "\n".join(out)


def write_section(body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.DOTALL)
    section = f"{SECTION}\n\n{body.strip()}\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


async def main_async(args) -> str:
    backends = [b for b in args.backends.split(",") if sandboxes.get(b).available() is None]
    with tempfile.TemporaryDirectory() as tmp:
        box = SkillBox.write(Path(tmp) / "box", name="bench-box", env=None, tools=[ToolDraft("add_numbers", TOOL)])
        rows = await bench_bare(args.n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for backend in backends:
                rows += await bench_box(box, backend, args.box_n)
    header = (f"`python bench/mcp_roundtrip.py --n {args.n} --box-n {args.box_n} --backends {args.backends}`, "
              f"{date.today().isoformat()}, {os.cpu_count()} cores, {_ram_gb()} GB RAM, no GPU, {platform.platform()}, "
              f"Python {platform.python_version()}. One call at a time through the mcp SDK's own client, the rows of a group timed round robin; "
              "each box call acquires a fresh sandbox (docker: from its warm pool) and runs the tool there.")
    return f"{header}\n\n{table(rows)}\n\n{overheads(rows, backends)}\n"


def _ram_gb() -> int:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="calls per row for the bare SDK rows")
    parser.add_argument("--box-n", type=int, default=100, help="calls per row for the box-tool rows")
    parser.add_argument("--backends", default="nsjail,docker", help="sandbox backends to measure")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    body = asyncio.run(main_async(args))
    print(body)
    if not args.no_write:
        write_section(body)


if __name__ == "__main__":
    main()
