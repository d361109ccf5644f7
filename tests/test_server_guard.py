"""The guard between trajdistill and a `vllm serve` it starts: the server ends when its starter does, however.

A real process tree stands in for vLLM (a python that sleeps); the guard is the code that wraps the real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from trajdistill.agents._vllm_serve import guarded

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_server_whose_starter_is_killed_by_sigkill_stops():
    starter = ("import subprocess, sys, time; "
               f"p = subprocess.Popen({guarded(SLEEPER)!r}, start_new_session=True); "
               "print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        group = int(parent.stdout.readline())
        time.sleep(1)
        assert not gone(group, 0.5)  # the server runs while its starter lives
        parent.kill()  # no cleanup code of the starter runs
        parent.wait()
        assert gone(group, 10), "the server outlived the process that started it"
    finally:
        parent.kill()
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass


def test_stopping_the_group_waits_for_the_server_and_keeps_its_exit_code():
    proc = subprocess.Popen(guarded(SLEEPER), start_new_session=True)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)  # what stop() sends: the guard ignores it, the server ends
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert gone(proc.pid, 2)
    assert subprocess.run(guarded([sys.executable, "-c", "import sys; sys.exit(3)"])).returncode == 3
