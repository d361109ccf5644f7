"""The `trajdistill` command. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from trajdistill.agents import CollectConfig
from trajdistill.envs import TrajdistillError
from trajdistill.trajectories import export_formats, segmenters

from ._config import ConfigOption, UsageError, config_option, registry_help, rollout_options
from ._console import console, err_console

# The command modules and the library load inside each command, so that `trajdistill --help` stays fast.

app = typer.Typer(help="Agentic trajectory distillation: collect, compose, train, mine skills, evaluate.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
envs_app = typer.Typer(help="List and describe environments.", no_args_is_help=True)
sandbox_app = typer.Typer(help="Check and use the code sandboxes.", no_args_is_help=True)
app.add_typer(envs_app, name="envs")
app.add_typer(sandbox_app, name="sandbox")

@envs_app.command("list")
def envs_list(config: Optional[Path] = ConfigOption) -> None:
    """List envs with their tools, split sizes and experts."""
    from ._envs_cmd import list_envs

    list_envs(console)


@envs_app.command("show")
def envs_show(env: str = typer.Argument(..., help="Env name, e.g. math or twx:coin."),
              config: Optional[Path] = ConfigOption) -> None:
    """Show one env's tool schemas, split sizes and a sample task."""
    from ._envs_cmd import show_env

    show_env(console, env)


@sandbox_app.command("check")
def sandbox_check(backend: str = typer.Option("auto", help="docker, nsjail, none or auto."),
                  config: Optional[Path] = ConfigOption) -> None:
    """Run the containment self-test and print what was contained."""
    from ._sandbox_cmd import check

    raise typer.Exit(check(console, backend))


@sandbox_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox_run(ctx: typer.Context,
                backend: str = typer.Option("auto", help="docker, nsjail, none or auto."),
                timeout: float = typer.Option(10.0, help="Wall-clock limit in seconds."),
                memory_mb: int = typer.Option(512, help="Memory limit in MB."),
                config: Optional[Path] = ConfigOption) -> None:
    """Run one command in a sandbox: `trajdistill sandbox run -- CMD...`. Exits with its code."""
    from ._sandbox_cmd import run_one

    if not ctx.args:
        raise UsageError("give the command after --, e.g. trajdistill sandbox run -- python3 -c 'print(1)'")
    raise typer.Exit(run_one(console, backend, list(ctx.args), timeout, memory_mb))


@sandbox_app.command("build-image")
def sandbox_build_image(
    tag: str = typer.Option("trajdistill-sandbox:latest", help="Image tag to build."),
    method: str = typer.Option("debootstrap", help="debootstrap (no registry needed) or from-image."),
    base: str = typer.Option("python:3.11-slim", help="Base image for --method from-image."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the tag exists."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Build the docker sandbox image locally, without any registry."""
    from trajdistill.envs.sandbox._docker import build_image

    build_image(tag=tag, method=method, base=base, console=console, force=force)


@app.command()
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


@app.command()
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


@app.command()
def export(run: Path = typer.Argument(..., help="Run directory."),
           format: str = typer.Option(..., "--format", help=registry_help("Export format", export_formats)),
           out: Path = typer.Option(..., help="Output file, outside the run."),
           force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
           config: Optional[Path] = ConfigOption) -> None:
    """Export a run for trainers: parquet (HF datasets), sharegpt, OpenAI messages JSONL, or a plug-in's format."""
    from ._export_cmd import export_cmd

    export_cmd(console, run, format, out, force=force)


# Commands of later stages live in their own modules, each with `register(app)`.
COMMAND_MODULES = ("_cmd_train", "_cmd_eval", "_cmd_gate", "_cmd_compose", "_cmd_onpolicy", "_cmd_curate",
                   "_cmd_skills", "_cmd_demo")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"trajdistill.{name}") is not None:
            importlib.import_module(f"trajdistill.{name}").register(app)


_register_commands()


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except TrajdistillError as e:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        if os.environ.get("TRAJDISTILL_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err_console.print(f"[red]error:[/] {first}", highlight=False)
        sys.exit(2)
