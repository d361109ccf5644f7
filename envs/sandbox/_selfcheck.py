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


SPREAD_MEMORY = """
import os, time
# {token}
kids = []
for _ in range({children}):
    pid = os.fork()
    if pid == 0:
        held = []
        try:
            for _ in range({child_mb} // 16):
                held.append(b"x" * (16 << 20))
        except MemoryError:
            pass
        time.sleep({hold_s})
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
"""
SPREAD_CHILDREN, SPREAD_CHILD_MB = 6, 128  # each child stays under a 256 MB per-process cap


def memory_held_mb(token: str) -> float:
    """Anonymous memory the host's processes with `token` in their command line hold.

    Proportional (PSS), so pages shared after a fork count once; file pages are left out, since the
    page cache that holds the interpreter may be charged to whoever read it first.
    """
    total_kb = 0
    for pid in find_processes(token):
        try:
            fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except OSError:
            continue  # the process exited while we looked
        total_kb += int((fields.get("Pss_Anon") or fields["Pss"]).split()[0])  # Pss_Anon needs Linux 5.7
    return total_kb / 1024


async def peak_memory_mb(sb: Sandbox, code: str, token: str, timeout: float) -> float:
    """Run `code` in the sandbox and sample, from the host, the most memory its processes held at once."""
    task = asyncio.ensure_future(sb.exec_python(code, timeout=timeout))
    peak = 0.0
    while not task.done():
        peak = max(peak, memory_held_mb(token))
        await asyncio.sleep(0.05)
    await task
    kill_processes(token)
    return peak


async def spread_memory(sb: Sandbox) -> Verdict:
    token = f"spread-{uuid.uuid4().hex}"
    code = SPREAD_MEMORY.format(token=token, children=SPREAD_CHILDREN, child_mb=SPREAD_CHILD_MB, hold_s=1.5)
    peak = await peak_memory_mb(sb, code, token, timeout=10.0)
    cap = sb.limits.memory_mb + MEMORY_SLACK_MB
    return (peak <= cap, f"{SPREAD_CHILDREN} children tried {SPREAD_CHILDREN * SPREAD_CHILD_MB} MB; "
                         f"they held at most {peak:.0f} MB (limit {sb.limits.memory_mb} MB)")


MEMORY_SLACK_MB = 32  # the jail's supervisor and kernel accounting, which sit outside the limit

DISK_FILL = """
import os
written = 0
for i in range({files}):
    try:
        fd = os.open(f"/work/fill-{{i}}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for _ in range({file_mb} // 8):
            os.write(fd, b"\\0" * (8 << 20))
            written += 8
        os.close(fd)
    except OSError as e:
        print("stopped:", e.strerror)
        break
print("WROTE", written)
"""
DISK_FILES, DISK_FILE_MB = 8, 64  # 512 MB in files under the per-file size cap
WORK_CAP_MB = 256  # what both backends give /work


async def work_usage_mb(sb: Sandbox) -> int:
    res = await sb.exec(["/usr/bin/du", "-sm", "/work"])
    return int(res.stdout.split()[0]) if res.stdout.split() else -1


async def disk_fill(sb: Sandbox) -> Verdict:
    await sb.exec_python(DISK_FILL.format(files=DISK_FILES, file_mb=DISK_FILE_MB), timeout=20.0)
    used = await work_usage_mb(sb)
    contained = 0 <= used <= WORK_CAP_MB
    return (contained, f"{DISK_FILES * DISK_FILE_MB} MB tried; /work holds {used} MB (cap {WORK_CAP_MB} MB)")


# Each probe prints DENIED (EPERM, EACCES or ENOSYS: the kernel refused before acting) or REACHED.
ESCAPE_CALLS = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
NEWUSER, NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17
SYS = {{"clone": 56, "add_key": 248, "keyctl": 250, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298}}

def probe(name, rc):
    err = ctypes.get_errno() if rc == -1 else 0
    denied = err in (errno.EPERM, errno.EACCES, errno.ENOSYS)
    print(("DENIED " if denied else "REACHED ") + name + (" " + errno.errorcode.get(err, str(err)) if err else ""))

probe("unshare(user, mount)", libc.unshare(NEWUSER | NEWNS))
probe("unshare(user)", libc.unshare(NEWUSER))
rc = libc.syscall(SYS["clone"], NEWUSER | SIGCHLD, 0, 0, 0, 0)
if rc == 0:
    os._exit(0)
probe("clone(user)", rc)
os.makedirs("/tmp/escape-mnt", exist_ok=True)
probe("mount tmpfs", libc.mount(b"none", b"/tmp/escape-mnt", b"tmpfs", 0, None))
probe("setns(user)", libc.setns(os.open("/proc/self/ns/user", os.O_RDONLY), 0))
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
probe("ptrace(attach)", libc.ptrace(ctypes.c_long(16), ctypes.c_long(child), None, None))
os.kill(child, 9)
probe("keyctl(session keyring)", libc.syscall(SYS["keyctl"], 0, -3, 1))
probe("bpf(map create)", libc.syscall(SYS["bpf"], 0, None, 0))
probe("userfaultfd", libc.syscall(SYS["userfaultfd"], 0))
probe("perf_event_open", libc.syscall(SYS["perf_event_open"], None, 0, -1, -1, 0))
"""
ESCAPE_PROBES = 10


async def escape_calls(sb: Sandbox) -> Verdict:
    res = await sb.exec_python(ESCAPE_CALLS.format())
    reached = [ln.split(" ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("REACHED")]
    ran = sum(ln.startswith(("DENIED", "REACHED")) for ln in res.stdout.splitlines())
    if ran != ESCAPE_PROBES:
        return (False, f"only {ran} of {ESCAPE_PROBES} probes ran: {res.observation()[-300:]}")
    return (not reached, f"reached the kernel: {', '.join(reached)}" if reached
            else f"all {ran} namespace, mount, ptrace, keyring and bpf calls denied")


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
    ("memory across processes", spread_memory, False),
    ("disk fill", disk_fill, False),
    ("namespaces, mounts, ptrace", escape_calls, False),
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
