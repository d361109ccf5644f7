"""The consoles every command prints to."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one error, one line
