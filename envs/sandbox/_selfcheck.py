"""The containment self-test behind `trajdistill sandbox check`.

Each attack runs real hostile code in a real sandbox, then looks at the host
from the outside (its files, its process table, a listening socket) to decide
whether the sandbox held. Small sizes keep the whole run to a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from ._base import Limits, Sandbox, get_provider

LIMITS = Limits(timeout_s=3.0, memory_mb=256, pids=32, output_bytes=64_000)
FLOOD_MB = 20


@dataclass
class Check:
    name: str
    contained: bool
    detail: str


@dataclass
class SelfCheck:
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.contained for c in self.checks)


Verdict = tuple[bool, str]  # (contained, what the host saw)
Attack = Callable[[Sandbox], Awaitable[Verdict]]


def find_processes(token: str) -> list[int]:
    """Host pids whose command line contains `token`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # the process exited while we looked
    return pids


def kill_processes(token: str, rounds: int = 20) -> int:
    """Kill every host process whose command line has `token`; returns how many were found.

    Stops them all before killing, so a leaked fork bomb cannot refill the gaps.
    """
    seen: set[int] = set()
    for _ in range(rounds):
        pids = find_processes(token)
        if not pids:
            break
        seen.update(pids)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        time.sleep(0.05)
    return len(seen)


async def write_host_paths(sb: Sandbox) -> Verdict:
    tag = uuid.uuid4().hex
    scratch = Path(tempfile.mkdtemp(prefix="trajdistill-selfcheck-"))
    targets = [Path.home() / f"pwned-{tag}", Path("/tmp") / f"pwned-{tag}", scratch / "pwned"]
    try:
        script = "; ".join(f"echo x > {t}" for t in targets)
        await sb.exec(script)
        leaked = [str(t) for t in targets if t.exists()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for t in targets[:2]:
            t.unlink(missing_ok=True)
    return (not leaked,
            f"written on the host: {', '.join(leaked)}" if leaked else f"{len(targets)} host paths untouched")


async def read_host_secrets(sb: Sandbox) -> Verdict:
    secret, key_var = f"secret-{uuid.uuid4().hex}", f"TRAJDISTILL_SELFCHECK_KEY_{uuid.uuid4().hex[:8]}"
    scratch = Path(tempfile.mkdtemp(prefix="trajdistill-selfcheck-"))
    # The names must not contain the secret: error messages echo them.
    files = [scratch / "secret.txt", Path.home() / f".trajdistill-selfcheck-{uuid.uuid4().hex}"]
    os.environ[key_var] = f"sk-{secret}"
    try:
        for f in files:
            f.write_text(secret)
        cat = " ".join(str(f) for f in files)
        res = await sb.exec(f"cat {cat}; env; cat /proc/[0-9]*/environ | tr '\\0' '\\n'")
    finally:
        del os.environ[key_var]
        shutil.rmtree(scratch, ignore_errors=True)
        files[1].unlink(missing_ok=True)
    leaked = secret in res.stdout + res.stderr
    return (not leaked,
            "a host file or env var was readable" if leaked else "host files and env vars unseen")


# Only loopback is ever a target: an interface other than `lo` is what would reach any outside address.
NET_SCRIPT = """
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("CONNECTED host")
except OSError as e:
    print("BLOCKED host", e)
others = [name for _, name in socket.if_nameindex() if name != "lo"]
print("CONNECTED external via", others) if others else print("BLOCKED external: only loopback")
"""


async def open_network(sb: Sandbox) -> Verdict:
    hits = []
    server = await asyncio.start_server(lambda r, w: (hits.append(1), w.close()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        res = await sb.exec_python(NET_SCRIPT.format(port=port))
    finally:
        server.close()
        await server.wait_closed()
    connected = "CONNECTED" in res.stdout
    contained = not hits and not connected and "BLOCKED" in res.stdout
    return (contained,
            "no connection to a host listener or the internet" if contained
            else f"listener saw {len(hits)} connection(s); sandbox said {res.stdout.strip()!r}")


FORK_BOMB = """
import os
# {token}
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


async def fork_bomb(sb: Sandbox) -> Verdict:
    token = f"forkbomb-{uuid.uuid4().hex}"
    res = await sb.exec_python(FORK_BOMB.format(token=token), timeout=2.0)
    await asyncio.sleep(0.3)
    left = kill_processes(token)
    host_ok = subprocess.run(["true"], timeout=10).returncode == 0
    contained = not left and host_ok
    return (contained,
            f"returned in {res.duration_s:.1f}s, no leftover processes, host can fork" if contained
            else f"{left} leftover processes; host fork ok: {host_ok}")


MEMORY_BOMB = """
chunks = []
while True:
    chunks.append(bytearray(64 * 1024 * 1024))
"""


async def memory_bomb(sb: Sandbox) -> Verdict:
    res = await sb.exec_python(MEMORY_BOMB, timeout=10.0)
    contained = (res.killed or res.exit_code != 0) and not res.timed_out
    return (contained,
            f"stopped (exit {res.exit_code}, killed={res.killed}) in {res.duration_s:.1f}s")


async def infinite_loop(sb: Sandbox) -> Verdict:
    res = await sb.exec_python("while True: pass", timeout=1.0)
    contained = res.timed_out and res.duration_s < 4.0
    return (contained, f"timed_out={res.timed_out} after {res.duration_s:.1f}s")


async def output_flood(sb: Sandbox) -> Verdict:
    code = f"import sys\nb = b'x' * 1048576\nfor _ in range({FLOOD_MB}): sys.stdout.buffer.write(b)"
    res = await sb.exec_python(code)
    limit = sb.limits.output_bytes
    contained = res.truncated and "output truncated" in res.stdout and len(res.stdout) < limit + 200
    return (contained,
            f"{FLOOD_MB} MB written, {len(res.stdout)} chars kept, truncated={res.truncated}")


DAEMON = """
import os, time
# {token}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open("daemon-{token}", "a") as f:
                f.write("tick\\n")
            time.sleep(0.2)
    os._exit(0)
time.sleep(0.5)
print("parent done")
"""


async def daemon_survives(sb: Sandbox) -> Verdict:
    token = f"daemon-{uuid.uuid4().hex}"
    await sb.exec_python(DAEMON.format(token=token))
    await asyncio.sleep(0.5)
    left = kill_processes(token)
    return (not left,
            f"{left} daemon process(es) still running on the host" if left
            else "the double-forked daemon died with the exec")


async def kill_all(sb: Sandbox) -> Verdict:
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        await sb.exec("kill -9 -1; echo still here")
        await asyncio.sleep(0.2)
        alive = sentinel.poll() is None
    finally:
        sentinel.kill()
        sentinel.wait()
    return (alive, "host processes survived" if alive else "a host process was killed")


# (name, attack, safe to run unconfined): the unsafe ones would harm the host under `none`.
ATTACKS: list[tuple[str, Attack, bool]] = [
    ("write host paths", write_host_paths, True),
    ("read host secrets", read_host_secrets, True),
    ("network", open_network, True),
    ("fork bomb", fork_bomb, False),
    ("memory bomb", memory_bomb, True),
    ("infinite loop", infinite_loop, True),
    ("output flood", output_flood, True),
    ("daemon outlives exec", daemon_survives, False),
    ("kill -9 -1", kill_all, False),
]


async def _run(name: str, attack: Attack, sb: Sandbox) -> Check:
    start = time.monotonic()
    try:
        contained, detail = await attack(sb)
    except Exception as e:  # noqa: BLE001 - a broken attack is reported, not hidden
        contained, detail = False, f"the check itself failed: {type(e).__name__}: {e}"
    return Check(name, contained, f"{detail} [{time.monotonic() - start:.1f}s]")


async def self_check(backend: str = "auto") -> SelfCheck:
    """Run every attack in a fresh sandbox of `backend` and judge each from the host."""
    provider = get_provider(backend, LIMITS)
    result = SelfCheck(provider.name)
    async with provider:
        for name, attack, safe_unconfined in ATTACKS:
            if not provider.contained and not safe_unconfined:
                result.checks.append(Check(name, False, "not run: this backend runs on the host unconfined"))
                continue
            async with provider.acquire() as sb:
                result.checks.append(await _run(name, attack, sb))
    return result
