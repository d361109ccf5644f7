"""Running a local process with a wall-clock limit and capped output.

Shared by the host and nsjail backends: both start a local process; nsjail
just puts its own binary in front of the argv.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from typing import Sequence

from ._base import ExecResult, Limits, OutputBuffer


async def _drain(stream: asyncio.StreamReader, buf: OutputBuffer) -> None:
    while chunk := await stream.read(65536):
        buf.feed(chunk)


def _rlimits(limits: Limits):
    def apply() -> None:
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    return apply


async def run_process(
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    stdin: str | bytes | None,
    timeout: float,
    limits: Limits,
    apply_rlimits: bool = True,
    term_grace_s: float = 0.0,
) -> ExecResult:
    """Run argv in its own session; kill the whole group on timeout.

    With `term_grace_s`, a timed-out process first gets SIGTERM and that long to clean up after itself
    (nsjail then kills and reaps its jail and removes its cgroups, which SIGKILL would leave behind).
    """
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_rlimits(limits) if apply_rlimits else None,
    )
    out, err = OutputBuffer(limits.output_bytes), OutputBuffer(limits.output_bytes)
    if stdin is not None:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command exited without reading its input; that is its business
        proc.stdin.close()
    timed_out = False
    drains = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err), proc.wait())
    try:
        await asyncio.wait_for(asyncio.shield(drains), timeout)
    except asyncio.TimeoutError:
        timed_out = True
        if term_grace_s:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass  # it ended just now
            try:
                await asyncio.wait_for(asyncio.shield(drains), term_grace_s)
            except asyncio.TimeoutError:
                pass  # SIGKILL below
        _kill_group(proc.pid)
        try:
            await asyncio.wait_for(drains, 2.0)
        except asyncio.TimeoutError:
            # A child that left our session (setsid) still holds the pipes: stop reading them.
            drains.cancel()
            transport = getattr(proc, "_transport", None)  # asyncio has no public way to drop the pipes
            if transport is not None:
                transport.close()
    finally:
        _kill_group(proc.pid)  # daemonised children in the same session do not outlive the exec
    code = proc.returncode if proc.returncode is not None else -9
    return ExecResult(
        exit_code=code, stdout=out.text(), stderr=err.text(),
        duration_s=time.monotonic() - start, timed_out=timed_out,
        killed=(code < 0 or code == 137) and not timed_out,
        truncated=bool(out.dropped or err.dropped),
    )


def alive(pid: int) -> bool:
    """A process with this pid exists (owned by anyone): its leftovers are not stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
