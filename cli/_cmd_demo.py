"""`trajdistill demo` and `trajdistill view`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._config import ConfigOption
from ._console import console

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("view")(view_command)


# ---- demo -------------------------------------------------------------------------------------------


def demo_command(
    out: Path = typer.Option(Path("demo-out"), help="Output directory; rerun with the same one to resume."),
    quick: bool = typer.Option(False, "--quick", help="A small version (about 2 minutes) for tests."),
    sandbox: str = typer.Option("auto", help="Sandbox backend for teacher code and box tools."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run the whole pipeline on the embedded SmolLM2 student and write report.html."""
    from ._demo import run_demo

    run_demo(out, quick=quick, sandbox=sandbox, console=console)


# ---- view -------------------------------------------------------------------------------------------


def view_command(
    path: Path = typer.Argument(..., help="A run directory, or a directory with runs anywhere below it."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write, outside the runs (default: PATH/view.html)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Write a self-contained HTML trajectory viewer for a run (or every run under a directory)."""
    from .report._report import write_viewer

    written = write_viewer(path, out, force=force)
    console.print(str(written), highlight=False, soft_wrap=True)
