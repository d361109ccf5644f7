"""`trajdistill collect`, `trajdistill inspect` and `trajdistill export`: a run, written and read."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trajdistill.agents import CollectConfig
from trajdistill.trajectories import export_formats, segmenters

from ._config import ConfigOption, config_option, registry_help, rollout_options
from ._console import console

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def register(app: typer.Typer) -> None:
    app.command("collect")(collect)
    app.command("inspect")(inspect)
    app.command("export")(export)


@rollout_options(CollectConfig)
def collect(
    teacher: list[str] = config_option(CollectConfig, "teachers"),
    out: Path = config_option(CollectConfig, "out"),
    resume: bool = config_option(CollectConfig, "resume"),
    shard: str = config_option(CollectConfig, "shard"),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """Run teacher agents on an env's tasks and record every episode as a trajectory."""
    from ._collect_cmd import collect_cmd

    cfg = CollectConfig(**rollout, teachers=list(teacher), out=str(out), resume=resume, shard=shard)
    raise typer.Exit(collect_cmd(console, cfg))


def inspect(run: Path = typer.Argument(..., help="Run directory."),
            show: Optional[str] = typer.Option(None, help="Trajectory id (or prefix) to print turn by turn."),
            spans: bool = typer.Option(False, "--spans", help="With --show: colour the assistant text by span "
                                       "kind (reason, act, answer, context); untrained text is dim."),
            segmenter: Optional[str] = typer.Option(None, help=registry_help(
                "With --show: the segmenter that --spans uses (default: the one the env names)", segmenters)),
            config: Optional[Path] = ConfigOption) -> None:
    """Stats per teacher and difficulty; --show prints one trajectory (--spans colours its spans)."""
    from ._inspect_cmd import inspect_run

    inspect_run(console, run, show, spans, segmenter)


def export(run: Path = typer.Argument(..., help="Run directory."),
           format: str = typer.Option(..., "--format", help=registry_help("Export format", export_formats)),
           out: Path = typer.Option(..., help="Output file, outside the run."),
           force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
           config: Optional[Path] = ConfigOption) -> None:
    """Export a run for trainers: parquet (HF datasets), sharegpt, OpenAI messages JSONL, or a plug-in's format."""
    from ._export_cmd import export_cmd

    export_cmd(console, run, format, out, force=force)
