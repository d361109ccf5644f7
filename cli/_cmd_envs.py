"""`trajdistill envs ...` and `trajdistill sandbox ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._config import ConfigOption, UsageError
from ._console import console

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.

envs_app = typer.Typer(help="List and describe environments.", no_args_is_help=True)
sandbox_app = typer.Typer(help="Check and use the code sandboxes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
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
