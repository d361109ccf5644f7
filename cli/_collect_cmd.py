"""`trajdistill collect`: live progress and a per-teacher summary table."""

from __future__ import annotations


from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trajdistill.agents import CollectConfig, Collector, resolved_config
from trajdistill.skills import mount_skills
from trajdistill.trajectories import RunStore

from . import _interrupt
from ._console import err_console
from ._progress import EpisodeRow, episode_columns


def collect_cmd(console: Console, cfg: CollectConfig) -> int:
    collector = Collector(cfg, mount_skills)
    store = RunStore.create(cfg.out, resolved_config(cfg), resume=cfg.resume)
    with Progress(*episode_columns("collect"), console=console, transient=False) as bar:
        row = EpisodeRow(bar, f"{cfg.env} x {len(cfg.teachers)} teacher(s)")
        try:
            progress = _interrupt.run(collector.run(store, row))
            bar.update(row.job, total=progress.total, completed=progress.done)
        except KeyboardInterrupt:
            store.close()
            console.print(f"[yellow]{_interrupt.word()}[/]: finished trajectories are kept in {cfg.out}; "
                          "run the same command with --resume to continue")
            return _interrupt.exit_code()
    store.close()
    summary_table(console, store)
    console.print(f"run written to [bold]{cfg.out}[/] ({progress.done} episodes this time, "
                  f"{progress.errors} errors)")
    return _all_errored(store)


def _all_errored(store: RunStore) -> int:
    """1 when some teacher has no trajectory and only errors: an endpoint that never answered is not a run."""
    dead = [spec for spec, s in store.stats().teachers.items() if not s.done and s.errors]
    reasons = {r.get("teacher"): r.get("reason") for r in store.errors()}
    for spec in dead:
        err_console.print(f"[red]error:[/] every episode of {spec} errored; last: {reasons.get(spec)}",
                          highlight=False)
    return 1 if dead else 0


def summary_table(console: Console, store: RunStore) -> None:
    """Per teacher: success rate, mean steps and tokens, and pairs still errored."""
    table = Table(title="collection summary")
    for col in ("teacher", "trajectories", "success", "mean steps", "mean tokens", "errors"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for spec, s in store.stats().teachers.items():
        n = s.done
        table.add_row(spec, str(n), f"{s.success / n:.1%}" if n else "-",
                      f"{s.steps / n:.1f}" if n else "-", f"{s.tokens / n:.0f}" if n else "-", str(s.errors))
    console.print(table)
