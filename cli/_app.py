"""The `trajdistill` command. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from trajdistill.envs import TrajdistillError

from . import _interrupt
from ._console import err_console

# The command modules and the library load inside each command, so that `trajdistill --help` stays fast.

app = typer.Typer(help="Agentic trajectory distillation: collect, compose, train, mine skills, evaluate.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")

# Every command lives in a command module with `register(app)`; --help lists commands in this order, then groups.
COMMAND_MODULES = ("_cmd_collect", "_cmd_envs", "_cmd_train", "_cmd_eval", "_cmd_gate", "_cmd_compose", "_cmd_onpolicy",
                   "_cmd_curate", "_cmd_skills", "_cmd_demo")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"trajdistill.{name}") is not None:
            importlib.import_module(f"trajdistill.{name}").register(app)


_register_commands()


def run() -> None:
    _interrupt.install()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print(f"[yellow]{_interrupt.word()}[/]")
        sys.exit(_interrupt.exit_code())
    except TrajdistillError as e:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        if os.environ.get("TRAJDISTILL_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err_console.print(f"[red]error:[/] {escape(first)}", highlight=False)  # [ray] in a hint is text, not markup
        sys.exit(2)
