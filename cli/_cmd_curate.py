"""`trajdistill curate` (filter, balance and blend runs into a run) and `trajdistill import` (messages JSONL)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trajdistill.trajectories import CurateConfig

from ._config import ConfigOption, config_argument, config_option, load_yaml
from ._console import console, err_console

def register(app: typer.Typer) -> None:
    app.command("curate")(curate_command)
    app.command("import")(import_command)


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def curate_command(
    runs: list[str] = config_argument(CurateConfig, "runs"),
    out: Path = config_option(CurateConfig, "out"),
    step: list[str] = config_option(CurateConfig, "steps", "--step"),
    mix: list[str] = config_option(CurateConfig, "mix", "--mix"),
    seed: Optional[int] = config_option(CurateConfig, "seed", default=None),  # None: the config file's, else 0
    config: Optional[Path] = typer.Option(None, "--config", dir_okay=False,
                                          help="YAML with steps, mix and seed; flags override it."),
) -> None:
    """Curate runs into a training run: named steps (verified, dedupe, near-dup, length-balance, balance,
    blend) applied in order; each records what it removed and why in OUT/curate_report.json, and OUT/curate.html
    shows the counts, examples of what was removed and the length distributions before and after."""
    from trajdistill.agents import EmbeddingSimilarity  # noqa: F401  registers near-dup's method=embedding
    from trajdistill.report import build_curate_report
    from trajdistill.trajectories._curate import PLOT_FILE, REPORT_FILE, curate, parse_mix


    cfg = CurateConfig.from_mapping(runs, str(out), load_yaml(config) if config else {})
    cfg.steps = list(step) or cfg.steps
    cfg.mix = parse_mix(mix) or cfg.mix
    cfg.seed = cfg.seed if seed is None else seed
    with _bar(console) as bar:
        job = bar.add_task("curate", total=None)
        report = curate(cfg, lambda stage, done, total: bar.update(job, description=f"curate: {stage}",
                                                                   completed=done, total=total))
    steps_table(console, report)
    for line in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    html = build_curate_report(out, report, out / PLOT_FILE)
    console.print(f"run written to [bold]{escape(str(out))}[/] ({report.total_out} of {report.total_in} "
                  f"trajectories kept); report {REPORT_FILE} and {html.name}, plot {PLOT_FILE}")


def steps_table(console: Console, report) -> None:
    table = Table(title="curate", box=box.SIMPLE_HEAD)
    for col, justify in (("step", "left"), ("in", "right"), ("out", "right"), ("removed", "right"),
                         ("why", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in report.steps:
        why = ", ".join(f"{reason}: {n}" for reason, n in s.reasons.items())
        table.add_row(s.name, str(s.inputs), str(s.kept), str(s.inputs - s.kept), escape(why))
    console.print(table)
    if len(report.kept_by_run) > 1:
        console.print("kept per run: " + ", ".join(f"{k} {v}" for k, v in report.kept_by_run.items()))


def import_command(
    file: Path = typer.Argument(..., help="OpenAI chat messages JSONL, one conversation per line (as `export "
                                          "--format openai` writes it)."),
    env: str = typer.Option(..., help="Env the conversations belong to, e.g. math."),
    out: Path = typer.Option(..., help="Run directory to write (new or empty)."),
    teacher: Optional[str] = typer.Option(
        None, help="Teacher label of the trajectories (default import:STEM, the file's name without its suffix)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Import OpenAI messages JSONL (the inverse of `export --format openai`) as a run of typed trajectories."""
    from trajdistill.trajectories._import import import_messages


    with _bar(console) as bar:
        job = bar.add_task("import", total=None)
        n = import_messages(file, env, out, teacher=teacher,
                            progress=lambda done, total: bar.update(job, completed=done, total=total))
    console.print(f"imported {n} conversations into [bold]{escape(str(out))}[/]")
