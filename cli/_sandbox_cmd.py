"""`trajdistill sandbox check|run`."""

from __future__ import annotations


from rich.console import Console
from rich.table import Table

from trajdistill.envs.sandbox import Limits, get_provider, self_check

from . import _interrupt


def run_one(console: Console, backend: str, argv: list[str], timeout: float, memory_mb: int) -> int:
    async def go():
        async with get_provider(backend, Limits(timeout_s=timeout, memory_mb=memory_mb)) as provider:
            async with provider.acquire() as sb:
                return await sb.exec(argv)

    res = _interrupt.run(go())
    if res.stdout:
        console.out(res.stdout, end="" if res.stdout.endswith("\n") else "\n", highlight=False)
    if res.stderr:
        Console(stderr=True).out(res.stderr, end="" if res.stderr.endswith("\n") else "\n", highlight=False)
    flags = [f for f, on in (("timed out", res.timed_out), ("killed", res.killed), ("truncated", res.truncated)) if on]
    Console(stderr=True).print(f"[dim]exit {res.exit_code} in {res.duration_s:.3f}s"
                               f"{' (' + ', '.join(flags) + ')' if flags else ''}[/]")
    if res.timed_out:
        return 124
    return res.exit_code if res.exit_code >= 0 else 128 - res.exit_code


def check(console: Console, backend: str) -> int:
    results = _interrupt.run(self_check(backend))
    table = Table(title=f"sandbox self-test ({results.backend})")
    for col in ("attack", "contained", "detail"):
        table.add_column(col)
    for r in results.checks:
        table.add_row(r.name, "[green]yes[/]" if r.contained else "[red]NO[/]", r.detail)
    console.print(table)
    return 0 if all(r.contained for r in results.checks) else 1
