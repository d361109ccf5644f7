"""SIGTERM stops an async command even when the KeyboardInterrupt its handler raises is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from trajdistill import _interrupt


@pytest.fixture
def lost(monkeypatch) -> list[type]:
    """Installs the CLI's SIGTERM handler; yields the exceptions Python drops ("Exception ignored in ...")."""
    dropped: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    monkeypatch.setattr(_interrupt, "_received", [])
    previous = signal.getsignal(signal.SIGTERM)
    _interrupt.install()
    yield dropped
    signal.signal(signal.SIGTERM, previous)


class SignalledInFinalizer:
    """Sends SIGTERM from its finalizer, where Python prints and drops the handler's KeyboardInterrupt."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs at a loop's backward jump, still inside __del__
            pass


async def _work(steps: list[int]) -> str:
    SignalledInFinalizer()  # dropped at once
    for i in range(50):
        steps.append(i)
        await asyncio.sleep(0.01)
    return "finished"


def test_a_sigterm_lost_in_a_finalizer_still_cancels_the_run(lost):
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        _interrupt.run(_work(steps))
    assert lost == [KeyboardInterrupt]  # the handler's own interrupt was dropped
    assert len(steps) < 5, "the run must stop at the next turn of the event loop"
    assert _interrupt.word() == "terminated" and _interrupt.exit_code() == 143
    assert signal.getsignal(signal.SIGTERM) is _interrupt._terminate  # the command's own handler is back


def test_plain_asyncio_run_loses_that_sigterm(lost):
    """Why `run` exists: the same coroutine under asyncio.run ignores the signal and runs to its end."""
    steps: list[int] = []
    assert asyncio.run(_work(steps)) == "finished" and len(steps) == 50
    assert lost == [KeyboardInterrupt]


def test_a_run_without_a_signal_returns_its_result(lost):
    assert _interrupt.run(asyncio.sleep(0, result=7)) == 7
    assert _interrupt.word() == "interrupted"  # no SIGTERM came
