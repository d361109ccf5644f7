"""Ctrl-C and SIGTERM: both unwind the command as a KeyboardInterrupt, so that cleanup runs (a `vllm serve` the
command started, sandboxes, run stores); the exit code and the word say which one it was."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_received: list[int] = []  # SIGTERM, once it came (asyncio may re-raise it as a plain KeyboardInterrupt)


def _terminate(signum: int, frame: object) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro), where SIGTERM also cancels the main task, as asyncio.run does for Ctrl-C. The
    KeyboardInterrupt that the handler raises at whatever line runs is lost when that line is a finalizer's, and
    the run would go on to its end; the cancel, made by the event loop, is not lost."""

    async def main() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def terminate(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(task.cancel)
            _terminate(signum, frame)

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            return await coro
        finally:
            signal.signal(signal.SIGTERM, previous)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if _received:
            raise KeyboardInterrupt from None
        raise


def exit_code() -> int:
    """143 after SIGTERM, 130 after Ctrl-C: the shell's 128 + the signal number."""
    return 128 + (signal.SIGTERM if _received else signal.SIGINT)


def word() -> str:
    return "terminated" if _received else "interrupted"
