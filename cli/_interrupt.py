"""Ctrl-C and SIGTERM: both unwind the command as a KeyboardInterrupt, so that cleanup runs (a `vllm serve` the
command started, sandboxes, run stores); the exit code and the word say which one it was."""

from __future__ import annotations

import signal

_received: list[int] = []  # SIGTERM, once it came (asyncio may re-raise it as a plain KeyboardInterrupt)


def _terminate(signum: int, frame: object) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def exit_code() -> int:
    """143 after SIGTERM, 130 after Ctrl-C: the shell's 128 + the signal number."""
    return 128 + (signal.SIGTERM if _received else signal.SIGINT)


def word() -> str:
    return "terminated" if _received else "interrupted"
