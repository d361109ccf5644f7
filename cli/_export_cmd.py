"""`trajdistill export RUN --format parquet|sharegpt|openai --out PATH`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from trajdistill.trajectories import export_run


def export_cmd(console: Console, run: str | Path, fmt: str, out: str | Path, *, only_success: bool = False,
               force: bool = False) -> int:
    n = export_run(run, fmt, out, only_success=only_success, force=force)
    console.print(f"wrote {n} rows ({fmt}) to [bold]{out}[/]")
    return n
