"""MCP tool-call round trip of a skill-box tool, against the SDK's bare round trip and a warm sandbox exec.

    python bench/mcp_roundtrip.py [--n 200] [--box-n 100] [--backends nsjail,docker]
                                  [--before-python PY] [--no-write]

All in one run, with the mcp SDK's own client (`mcp.client.Client`, its default protocol), one call at a time:
  sdk bare          a trivial in-process tool (`add`) on a plain MCPServer: in memory, stdio and HTTP
  warm python -c    `exec_python("print(1)")` in a held sandbox: bench/sandbox_latency.py's warm row, the
                    target's unit (a box tool call over MCP at most 1.5x this)
  sandbox bare      `run_tool_in_sandbox` for the box tool in a session's sandbox (tools installed once, a fresh
                    exec per call), without MCP
  box over MCP      the same box tool through `trajdistill skills serve BOX --sandbox B`, over stdio and HTTP
  ... before        the same, served by `--before-python`, an interpreter whose trajdistill is an older commit
                    (a second worktree): the baseline, side by side in the same round robin
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
from trajdistill.skills._box import install_tools

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## MCP tool-call round trip"
PY = "print(1)"  # bench/sandbox_latency.py's warm `python -c`
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
NOTES = """Where the time goes. Before, every box call acquired a sandbox, wrote the tool file into it and ran a
driver that imported json (with re and enum), contextlib and importlib.util, then reset the sandbox. On nsjail
acquiring and resetting cost under 1 ms (a tmpfs mount): the cost was the driver's imports, about a third of a
warm `python -c`. On docker it was four engine round trips: put_archive for the tool file, put_archive for the
arguments on stdin, the exec, and the reset exec when the container went back to the pool. Now a session's
sandbox gets the box's tool files once (read-only: root-owned, and a read-only bind on nsjail), and a call is
one exec: the arguments travel marshalled in argv, the driver imports only marshal and json's C encoder
(`_json`), and emptying /work (docker: also /tmp, /dev/shm and /dev/mqueue, and a kill of every leftover
process) happens in that same exec (nsjail: a new tmpfs for /work; no process outlives a jail anyway). What is
left over a warm `python -c` is loading and running the tool, the emptying, and the MCP round trip. The
baseline (`before`) is the parent commit of this work, installed from a second worktree into its own venv and
served by that venv's interpreter; both servers ran in the same round robin."""


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


def serve_argv(python: str, box: Path, backend: str, *extra: str) -> list[str]:
    return [python, "-m", "trajdistill", "skills", "serve", str(box), "--sandbox", backend, *extra]


async def bench_box(box: SkillBox, backend: str, n: int, before: str | None) -> list[Row]:
    """The box tool over MCP (now, and served by `before`), beside a warm `python -c` exec, round robin."""
    args = {"a": 40, "b": 2}
    async with AsyncExitStack() as stack:
        provider = await stack.enter_async_context(get_provider(backend, Limits(timeout_s=30)))
        held = await stack.enter_async_context(provider.acquire())
        await held.exec_python(PY)
        session = await stack.enter_async_context(provider.acquire())
        installed = await install_tools(box, session)

        async def warm():
            if not (await held.exec_python(PY)).ok:
                raise RuntimeError("python -c failed")

        async def bare():
            ok, value = await run_tool_in_sandbox(box, "add_numbers", args, session, installed=installed)
            if not ok:
                raise RuntimeError(value)

        calls = {(f"warm python -c ({backend})", "-"): warm, (f"sandbox bare: box tool ({backend})", "-"): bare}
        for label, python in ((f"box tool over MCP ({backend})", sys.executable),
                              *([(f"box tool over MCP, before ({backend})", before)] if before else [])):
            url = stack.enter_context(HttpServer(
                lambda port, python=python: serve_argv(python, box.path, backend, "--transport", "http",
                                                       "--port", str(port))))
            stdio = StdioServerParameters(command=python, args=serve_argv(python, box.path, backend)[1:])
            for t, target in (("stdio", stdio), ("http", url)):
                client = await stack.enter_async_context(Client(target, read_timeout_seconds=60))
                calls[(label, t)] = partial(client_call, client, "add_numbers", args)
        times = await interleaved(calls, n)
    return [(what, t, xs) for (what, t), xs in times.items()]


def table(rows: list[Row]) -> str:
    lines = ["| what | transport | n | p50 ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for what, transport, xs in rows:
        lines.append(f"| {what} | {transport} | {len(xs)} | {pct(xs, 0.5) * 1e3:.2f} | {pct(xs, 0.95) * 1e3:.2f} |")
    return "\n".join(lines)


def overheads(rows: list[Row], backends: list[str]) -> str:
    p50 = {(w, t): pct(xs, 0.5) * 1e3 for w, t, xs in rows}
    out = []
    for b in backends:
        bare, warm = p50[(f"sandbox bare: box tool ({b})", "-")], p50[(f"warm python -c ({b})", "-")]
        for t in ("stdio", "http"):
            mcp = p50[(f"box tool over MCP ({b})", t)]
            sdk = p50[("sdk bare: trivial in-process tool", t)]
            ratio = mcp / warm
            before = p50.get((f"box tool over MCP, before ({b})", t))
            was = f"; before: {before:.1f} ms = {before / warm:.2f}x" if before else ""
            out.append(f"- {b}, {t}: box tool round trip {mcp:.1f} ms = **{ratio:.2f}x** the warm `python -c` exec "
                       f"({warm:.1f} ms), {'meets' if ratio <= 1.5 else 'MISSES'} the 1.5x target{was}. "
                       f"In process without MCP {bare:.1f} ms, so {mcp - bare:.1f} ms of MCP and server "
                       f"(the SDK's bare {t} round trip: {sdk:.2f} ms)")
    return "\n".join(out)


def write_section(body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.DOTALL)
    section = f"{SECTION}\n\n{body.strip()}\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


async def main_async(args) -> str:
    backends = [b for b in args.backends.split(",") if sandboxes.get(b).available() is None]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        box = SkillBox.write(Path(tmp) / "box", name="bench-box", env=None, tools=[ToolDraft("add_numbers", TOOL)])
        rows = await bench_bare(args.n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for backend in backends:
                rows += await bench_box(box, backend, args.box_n, args.before_python)
    before = f" --before-python {args.before_python}" if args.before_python else ""
    header = (f"`python bench/mcp_roundtrip.py --n {args.n} --box-n {args.box_n} --backends {args.backends}{before}`, "
              f"{date.today().isoformat()}, {os.cpu_count()} cores, {_ram_gb()} GB RAM, no GPU, {platform.platform()}, "
              f"Python {platform.python_version()}, load average {load:.1f} at the start and "
              f"{os.getloadavg()[0]:.1f} at the end. One call at a time through the mcp SDK's own client (its default "
              "protocol, 2026-07-28: no session, so the server's one session sandbox serves every request), the rows "
              "of a group timed round robin. Now, a box call runs in the session's sandbox, where the box's tools "
              "were installed once, in an exec that starts from an emptied /work with no leftover process.")
    return f"{header}\n\n{table(rows)}\n\n{overheads(rows, backends)}\n\n{NOTES}\n"


def _ram_gb() -> int:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="calls per row for the bare SDK rows")
    parser.add_argument("--box-n", type=int, default=100, help="calls per row for the box-tool rows")
    parser.add_argument("--backends", default="nsjail,docker", help="sandbox backends to measure")
    parser.add_argument("--before-python", default=None,
                        help="an interpreter whose trajdistill is the baseline commit: its servers are timed too")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    body = asyncio.run(main_async(args))
    print(body)
    if not args.no_write:
        write_section(body)


if __name__ == "__main__":
    main()
