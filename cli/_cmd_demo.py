"""`trajdistill view` (and, later, `trajdistill demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._config import ConfigOption


def register(app: typer.Typer) -> None:
    app.command("view")(view_command)


# ---- view -------------------------------------------------------------------------------------------


def view_command(
    path: Path = typer.Argument(..., help="A run directory, or a directory with runs anywhere below it."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: PATH/view.html)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Write a self-contained HTML trajectory viewer for a run (or every run under a directory)."""
    from ._app import console
    from ._report import write_viewer

    written = write_viewer(path, out)
    console.print(str(written), highlight=False, soft_wrap=True)
