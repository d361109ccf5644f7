"""`trajdistill collect`: live progress and a per-teacher summary table."""

from __future__ import annotations

import asyncio
import time
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from trajdistill.agents._collector import CollectConfig, Collector, resolved_config
from trajdistill.trajectories import RunStore


def collect_cmd(console: Console, cfg: CollectConfig) -> int:
    collector = Collector(cfg)
    store = RunStore.create(cfg.out, resolved_config(cfg), resume=cfg.resume)
    columns = (TextColumn("[bold]collect[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("ok {task.fields[rate]}  err {task.fields[errors]}  {task.fields[sps]} steps/s"),
               TimeRemainingColumn())
    start = time.monotonic()
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task(f"{cfg.env} x {len(cfg.teachers)} teacher(s)", total=None,
                           rate="-", errors=0, sps="-")

        def listener(p) -> None:
            rate = f"{p.success / max(1, p.done - p.errors):.0%}"
            sps = f"{p.steps / max(1e-9, time.monotonic() - start):.1f}"
            bar.update(job, total=p.total, completed=p.done, rate=rate, errors=p.errors, sps=sps)

        try:
            progress = asyncio.run(collector.run(store, listener))
            bar.update(job, total=progress.total, completed=progress.done)
        except KeyboardInterrupt:
            store.close()
            console.print(f"[yellow]interrupted[/]: finished trajectories are kept in {cfg.out}; "
                          "run the same command with --resume to continue")
            return 130
    store.close()
    summary_table(console, store)
    console.print(f"run written to [bold]{cfg.out}[/] ({progress.done} episodes this time, "
                  f"{progress.errors} errors)")
    return 0


def summary_table(console: Console, store: RunStore) -> None:
    """Per teacher: success rate, mean steps and tokens, and pairs still errored."""
    table = Table(title="collection summary")
    for col in ("teacher", "trajectories", "success", "mean steps", "mean tokens", "errors"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for spec, s in store.stats()["teachers"].items():
        n = s["done"]
        table.add_row(spec, str(n), f"{s['success'] / n:.1%}" if n else "-",
                      f"{s['steps'] / n:.1f}" if n else "-", f"{s['tokens'] / n:.0f}" if n else "-",
                      str(s["errors"]))
    console.print(table)
