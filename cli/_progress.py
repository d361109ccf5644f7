"""The live episode bar that collect, eval, self-distill and the gate share: one row per run, fed by collector
counters."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def episode_columns(verb: str) -> tuple:
    return (TextColumn(f"[bold]{verb}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("ok {task.fields[rate]}  err {task.fields[errors]}  {task.fields[sps]} steps/s"),
            TimeRemainingColumn())


class EpisodeRow:
    """One row of an episode bar; call it with the collector's Progress after each episode."""

    def __init__(self, bar: Progress, description: str):
        self.bar = bar
        self.start = time.monotonic()
        self.job = bar.add_task(description, total=None, rate="-", errors=0, sps="-")

    def __call__(self, p) -> None:
        rate = f"{p.success / max(1, p.done - p.errors):.0%}" if p.done > p.errors else "-"
        sps = f"{p.steps / max(1e-9, time.monotonic() - self.start):.1f}"
        self.bar.update(self.job, total=p.total, completed=p.done, rate=rate, errors=p.errors, sps=sps)


class EpisodeRows:
    """A listener `(label, progress)` for stages that run several collections: one row per label."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.rows: dict[str, EpisodeRow] = {}

    def __call__(self, label: str, p) -> None:
        if label not in self.rows:
            self.rows[label] = EpisodeRow(self.bar, label)
        self.rows[label](p)
