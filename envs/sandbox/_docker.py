"""The `docker` backend: a warm pool of locked-down containers, driven by the docker SDK.

Each container: no network, read-only root, tmpfs /work and /tmp, memory, pids
and cpu limits, all capabilities dropped, no-new-privileges, and the seccomp
policy the nsjail backend uses too (_seccomp.py: Docker's default profile still
lets a process ptrace its own children; this one does not). PID 1 is
docker-init (it reaps the orphans that `kill -9 -1` leaves) running a long
sleep as root; every exec runs as an unprivileged uid with a clean environment.

/work is an anonymous volume backed by tmpfs rather than a plain `--tmpfs`
mount: the engine's archive API (put_archive/get_archive) cannot reach a
`--tmpfs` mount of a read-only container, but it can reach a volume.

Installed files (`install`) go to a root-owned directory in /tmp, written by a
root exec: the exec uid can read them but not change, move or delete them (/tmp is
sticky). `exec_fresh` empties /work, /tmp (all but that directory), /dev/shm and
/dev/mqueue and kills leftovers at the start of the same exec, so it costs no extra
engine round trip.

The image is built locally (`trajdistill sandbox build-image`), never pulled.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import os
import posixpath
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import docker
import docker.errors
import requests.exceptions
from docker.types import DriverConfig, Mount

from ._base import (WORKDIR, Command, ExecResult, Limits, OutputBuffer, Sandbox, SandboxError, SandboxProvider,
                    install_paths)
from ._seccomp import docker_profile
from ._proc import alive

DEFAULT_IMAGE = "trajdistill-sandbox:latest"
IMAGE_ENV = "TRAJDISTILL_SANDBOX_IMAGE"
LABEL = "trajdistill.sandbox"
OWNER_LABEL = "trajdistill.owner"
EXEC_UID = 65534  # nobody
EXEC_USER = f"{EXEC_UID}:{EXEC_UID}"
PATH = "/usr/local/bin:/usr/bin:/bin"
OUTER_GRACE_S = 10.0  # the in-container `timeout` should fire first; this guards a stuck exec
STDIN_PREFIX = ".trajdistill-stdin-"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

BOX_DIR = "/tmp/.trajdistill-box"  # installed files
WIPED = "/work /tmp /dev/shm /dev/mqueue"  # every place the exec uid can write
# Runs CMD under `timeout`, then kills every process of the exec uid (kill(-1)
# spares the caller), so a daemonised child never outlives the exec.
_WRAPPER = 't=$1; shift; timeout --foreground -s KILL "$t" "$@"; rc=$?; kill -9 -1 2>/dev/null; exit $rc'
# Reads stdin from a file that is removed before CMD starts.
_STDIN = 'f=$1; shift; exec <"$f"; rm -f "$f"; '
# chmod first: a directory the code made unreadable must not survive the wipe. Root's installed files stay.
_CLEAR = f"kill -9 -1 2>/dev/null; chmod -R u+rwx {WIPED} 2>/dev/null; find {WIPED} -mindepth 1 -delete 2>/dev/null; "
_RESET = _CLEAR + "exit 0"
# Run as root: a fresh BOX_DIR, then each (path, text) argument pair written into it.
_INSTALL = ('d=$1; shift; rm -rf "$d" && mkdir -m 0755 "$d" && cd "$d" || exit 1; '
            'while [ $# -gt 0 ]; do mkdir -p "$(dirname "$1")" && printf %s "$2" >"$1" || exit 1; shift 2; done; '
            'chmod -R a+rX,go-w .')


def image_name(image: str | None = None) -> str:
    """The sandbox image: explicit option, else $TRAJDISTILL_SANDBOX_IMAGE, else the default."""
    return image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def _client(timeout: float = 60) -> docker.DockerClient:
    try:
        return docker.from_env(timeout=timeout, max_pool_size=32)
    except docker.errors.DockerException as e:
        raise SandboxError(f"no Docker engine answers ({_short(e)}); start dockerd") from e


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# --------------------------------------------------------------------------- sandbox


class DockerSandbox(Sandbox):
    """One pooled container; execs are serialised because each one ends by killing leftovers."""

    backend = "docker"

    def __init__(self, client: docker.DockerClient, container, limits: Limits, python: str):
        super().__init__(limits)
        self.client = client
        self.container = container
        self.id = container.id
        self.python = python
        self.installed = False
        self._lock = asyncio.Lock()

    async def exec(self, cmd: str | Sequence[str], *, stdin=None, timeout=None, env=None) -> ExecResult:
        return await self._exec(cmd, stdin, timeout, env, fresh=False)

    async def exec_fresh(self, cmd, *, stdin=None, timeout=None, env=None) -> ExecResult:
        return await self._exec(cmd, stdin, timeout, env, fresh=True)

    async def _exec(self, cmd, stdin, timeout, env, fresh: bool) -> ExecResult:
        timeout = float(timeout or self.limits.timeout_s)
        argv = Command.of(cmd).argv
        async with self._lock:
            start = time.monotonic()
            script, args = await self._stdin_prefix(stdin)
            script += (_CLEAR if fresh else "") + _WRAPPER
            wrapped = _clean_env(env) + ["/bin/sh", "-c", script, "sh", *args, f"{max(timeout, 0.001):.3f}", *argv]
            out, err = OutputBuffer(self.limits.output_bytes), OutputBuffer(self.limits.output_bytes)
            code, stopped, guard_fired = await self._run_guarded(wrapped, out, err, timeout)
        elapsed = time.monotonic() - start
        timed_out = guard_fired or (code in (124, 137) and elapsed >= timeout)
        return ExecResult(
            exit_code=-9 if code is None else code, stdout=out.text(), stderr=err.text(),
            duration_s=elapsed, timed_out=timed_out,
            killed=not timed_out and (stopped or code == 137 or (code is not None and code < 0)),
            truncated=bool(out.dropped or err.dropped),
        )

    async def _stdin_prefix(self, stdin: str | bytes | None) -> tuple[str, list[str]]:
        """The wrapper's start and its arguments: stdin goes through a file in /work."""
        if stdin is None:
            return "", []
        name = f"{STDIN_PREFIX}{uuid.uuid4().hex}"
        data = stdin.encode() if isinstance(stdin, str) else stdin
        await asyncio.to_thread(self._put, WORKDIR, name, data, 0o400)
        return _STDIN, [posixpath.join(WORKDIR, name)]

    async def _run_guarded(self, argv, out, err, timeout) -> tuple[int | None, bool, bool]:
        task = asyncio.ensure_future(asyncio.to_thread(self._exec_blocking, argv, out, err))
        try:
            code, stopped = await asyncio.wait_for(asyncio.shield(task), timeout + OUTER_GRACE_S)
            return code, stopped, False
        except asyncio.CancelledError:
            threading.Thread(target=self._kill_all, daemon=True).start()  # the caller gave up
            raise
        except asyncio.TimeoutError:
            await asyncio.to_thread(self._kill_all)
            try:
                code, stopped = await asyncio.wait_for(task, OUTER_GRACE_S)
            except asyncio.TimeoutError:
                raise SandboxError(f"docker exec in {self.id[:12]} does not end even after a kill") from None
            return code, stopped, True

    def _exec_blocking(self, argv: list[str], out: OutputBuffer, err: OutputBuffer) -> tuple[int | None, bool]:
        """Stream the exec's output into the buffers; stop it once far past the output limit."""
        api = self.client.api
        cap = max(16 << 20, 16 * self.limits.output_bytes)
        try:
            exec_id = api.exec_create(self.id, argv, user=EXEC_USER, workdir=WORKDIR)["Id"]
            stopped = False
            for o, e in api.exec_start(exec_id, stream=True, demux=True):
                if o:
                    out.feed(o)
                if e:
                    err.feed(e)
                if not stopped and out.dropped + err.dropped > cap:
                    # Kill from another thread: this one must keep draining, or the engine stalls.
                    stopped = True
                    threading.Thread(target=self._kill_all, daemon=True).start()
            return _exit_code(api, exec_id), stopped
        except docker.errors.DockerException as e:
            raise SandboxError(f"docker exec failed in {self.id[:12]}: {_short(e)}") from e

    def _kill_all(self) -> None:
        """Kill every process of the exec uid (from a fresh exec, which kill(-1) spares)."""
        try:
            self.client.api.exec_start(
                self.client.api.exec_create(self.id, ["kill", "-9", "-1"], user=EXEC_USER)["Id"])
        except docker.errors.DockerException as e:
            raise SandboxError(f"cannot kill processes in {self.id[:12]}: {_short(e)}") from e

    # ---- files

    async def write_file(self, path: str, data: str | bytes) -> None:
        full = _abspath(path)
        raw = data.encode() if isinstance(data, str) else data
        if _under_work(full):
            rel = posixpath.relpath(full, WORKDIR)
            await asyncio.to_thread(self._put, WORKDIR, rel, raw, 0o644)
            return
        # Elsewhere (e.g. /tmp, a plain tmpfs) the archive API cannot reach: stage in /work, then move.
        staged = f"{STDIN_PREFIX}{uuid.uuid4().hex}"
        await asyncio.to_thread(self._put, WORKDIR, staged, raw, 0o644)
        res = await self.exec(["/bin/sh", "-c", 'mkdir -p "$(dirname "$2")" && mv -f "$1" "$2"', "sh",
                               posixpath.join(WORKDIR, staged), full])
        if not res.ok:
            await self.exec(["rm", "-f", posixpath.join(WORKDIR, staged)])
            raise OSError(f"cannot write {full} in the sandbox: {res.stderr.strip() or res.exit_code}")

    async def read_file(self, path: str) -> bytes:
        full = _abspath(path)
        if _under_work(full):
            data = await asyncio.to_thread(self._get, full)
            if data is not None:
                return data
        # Outside /work, or a symlink: read it from inside the container.
        res = await self.exec(["/bin/sh", "-c", 'test -f "$1" || exit 44; cat "$1"', "sh", full])
        if res.exit_code == 44:
            raise FileNotFoundError(full)
        if res.truncated or not res.ok:
            raise OSError(f"cannot read {full} in the sandbox: {res.stderr.strip() or res.exit_code}")
        return res.stdout.encode()

    def _put(self, dest: str, rel: str, data: bytes, mode: int) -> None:
        try:
            ok = self.container.put_archive(dest, _tar_one(rel, data, mode))
        except docker.errors.DockerException as e:
            raise OSError(f"cannot write {posixpath.join(dest, rel)} in the sandbox: {_short(e)}") from e
        if not ok:
            raise OSError(f"cannot write {posixpath.join(dest, rel)} in the sandbox")

    def _get(self, full: str) -> bytes | None:
        """The file's bytes; None when it is not a regular file (e.g. a symlink)."""
        try:
            chunks, stat = self.container.get_archive(full)
        except docker.errors.NotFound:
            raise FileNotFoundError(full) from None
        except docker.errors.DockerException as e:
            raise OSError(f"cannot read {full} in the sandbox: {_short(e)}") from e
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
            member = tf.next()
            if member is not None and member.isdir():
                raise IsADirectoryError(full)
            return tf.extractfile(member).read() if member is not None and member.isfile() else None

    async def install(self, files) -> str:
        pairs = []
        for rel, data in install_paths(files).items():
            if b"\0" in data:
                raise ValueError(f"an installed file must be text without NUL bytes: {rel}")
            pairs += [str(rel), data.decode()]
        async with self._lock:
            code, out = await asyncio.to_thread(self._root_exec, ["/bin/sh", "-c", _INSTALL, "sh", BOX_DIR, *pairs])
        if code != 0:
            raise SandboxError(f"cannot install files in {self.id[:12]}: {out.strip()[-200:] or f'exit {code}'}")
        self.installed = True
        return BOX_DIR

    def _root_exec(self, argv: list[str]) -> tuple[int, str]:
        # Root in the container still has no capabilities, no new privileges and the seccomp policy.
        try:
            res = self.container.exec_run(argv, user="0", workdir="/")
        except docker.errors.DockerException as e:
            raise SandboxError(f"docker exec as root failed in {self.id[:12]}: {_short(e)}") from e
        return res.exit_code, res.output.decode(errors="replace")

    # ---- lifecycle

    async def reset(self) -> None:
        await asyncio.to_thread(self._reset_blocking)

    def _reset_blocking(self) -> None:
        try:
            self.container.exec_run(["/bin/sh", "-c", _RESET], user=EXEC_USER)
        except docker.errors.DockerException as e:
            raise SandboxError(f"cannot reset container {self.id[:12]}: {_short(e)}") from e
        if self.installed:
            code, out = self._root_exec(["rm", "-rf", BOX_DIR])
            if code != 0:
                raise SandboxError(f"cannot remove the installed files in {self.id[:12]}: {out.strip()[-200:]}")
            self.installed = False

    async def cleanup(self) -> None:
        await asyncio.to_thread(_remove, self.container)


def _clean_env(env: dict[str, str] | None) -> list[str]:
    base = {"PATH": PATH, "HOME": WORKDIR, "LANG": "C.UTF-8"}
    for key in env or {}:
        if not _ENV_KEY.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
    base.update(env or {})
    return ["env", "-i", *(f"{k}={v}" for k, v in base.items())]


def _abspath(path: str) -> str:
    return posixpath.normpath(posixpath.join(WORKDIR, path))


def _under_work(full: str) -> bool:
    return full.startswith(WORKDIR + "/")


def _tar_one(rel: str, data: bytes, mode: int) -> bytes:
    """A tar of one file plus its parent dirs, all owned by the exec uid."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode, d.uid, d.gid, d.mtime = tarfile.DIRTYPE, 0o755, EXEC_UID, EXEC_UID, now
            tf.addfile(d)
        f = tarfile.TarInfo(rel)
        f.size, f.mode, f.uid, f.gid, f.mtime = len(data), mode, EXEC_UID, EXEC_UID, now
        tf.addfile(f, io.BytesIO(data))
    return buf.getvalue()


def _exit_code(api, exec_id: str) -> int | None:
    # The engine can report the exit code a moment after the stream ends.
    for _ in range(50):
        info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return info["ExitCode"]
        time.sleep(0.01)
    return None


def _remove(container) -> None:
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass  # already gone, which is what we wanted
    except docker.errors.APIError as e:
        if "already in progress" not in str(e):
            raise SandboxError(f"cannot remove container {container.id[:12]}: {_short(e)}") from e
    except requests.exceptions.RequestException as e:  # an engine too slow to answer: the stale sweep retries
        raise SandboxError(f"cannot remove container {container.id[:12]}: {_short(e)}") from e


# --------------------------------------------------------------------------- provider


class DockerProvider(SandboxProvider):
    """Options: image, python, pool_size (idle containers kept warm), work_mb, tmp_mb."""

    name = "docker"
    _checked: dict[str, tuple[float, str | None]] = {}
    CHECK_TTL_S = 10.0

    def __init__(self, limits: Limits | None = None, **options):
        super().__init__(limits, **options)
        self.image = image_name(options.get("image"))
        self.python = options.get("python") or _default_python(self.image)
        self.pool_size = int(options.get("pool_size", 2))
        self.work_mb = int(options.get("work_mb", 256))
        self.tmp_mb = int(options.get("tmp_mb", 64))
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.client = _client(timeout=max(60.0, self.limits.timeout_s + 30))
        self._idle: list[DockerSandbox] = []
        self._all: dict[str, DockerSandbox] = {}
        self._guard = threading.Lock()
        remove_stale(self.client)
        atexit.register(self._close_blocking)

    @classmethod
    def available(cls, image: str | None = None) -> str | None:
        image = image_name(image)
        hit = cls._checked.get(image)
        if hit and time.monotonic() - hit[0] < cls.CHECK_TTL_S:
            return hit[1]
        why = _check(image)
        cls._checked[image] = (time.monotonic(), why)
        return why

    async def create(self) -> Sandbox:
        with self._guard:
            if self._idle:
                return self._idle.pop()
        sb = await asyncio.to_thread(self._start)
        with self._guard:
            self._all[sb.id] = sb
        return sb

    async def warm(self, n: int | None = None) -> None:
        """Start containers until `n` (default pool_size) sit idle in the pool."""
        missing = (self.pool_size if n is None else n) - len(self._idle)
        started = await asyncio.gather(*(asyncio.to_thread(self._start) for _ in range(max(0, missing))))
        with self._guard:
            for sb in started:
                self._all[sb.id] = sb
                self._idle.append(sb)

    async def release(self, sandbox: Sandbox) -> None:
        if not isinstance(sandbox, DockerSandbox) or sandbox.id not in self._all:
            await sandbox.cleanup()
            return
        try:
            await sandbox.reset()
            keep = len(self._idle) < self.pool_size and await asyncio.to_thread(_running, sandbox.container)
        except SandboxError:
            keep = False
        with self._guard:
            if keep:
                self._idle.append(sandbox)
                return
            self._all.pop(sandbox.id, None)
        try:
            await sandbox.cleanup()
        except SandboxError:
            pass  # the episode is done; the container is labelled, and the next provider start removes it

    async def close(self) -> None:
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        with self._guard:
            doomed = list(self._all.values())
            self._all.clear()
            self._idle.clear()
        for sb in doomed:
            try:
                _remove(sb.container)
            except SandboxError:
                continue  # the next provider start removes it as stale
        atexit.unregister(self._close_blocking)

    def _start(self) -> DockerSandbox:
        try:
            # create + start, not run: run() would try to pull a missing image from a registry.
            container = self.client.containers.create(self.image, **self._run_kwargs())
        except docker.errors.ImageNotFound:
            raise SandboxError(f"docker image {self.image!r} not found; run "
                               f"`trajdistill sandbox build-image --tag {self.image}`") from None
        except docker.errors.DockerException as e:
            raise SandboxError(f"cannot create a sandbox container: {_short(e)}") from e
        try:
            container.start()
        except docker.errors.DockerException as e:
            _remove(container)
            raise SandboxError(f"cannot start a sandbox container: {_short(e)}") from e
        return DockerSandbox(self.client, container, self.limits, self.python)

    def _run_kwargs(self) -> dict:
        lim = self.limits
        work = Mount(target=WORKDIR, source=None, type="volume", labels={LABEL: "1"},
                     driver_config=DriverConfig("local", {
                         "type": "tmpfs", "device": "tmpfs",
                         "o": f"size={self.work_mb}m,uid={EXEC_UID},gid={EXEC_UID},mode=0755,nosuid,nodev"}))
        return dict(
            command=["sleep", "infinity"], init=True, user="0",
            labels={LABEL: "1", OWNER_LABEL: self.owner},
            network_mode="bridge" if lim.network else "none",
            read_only=True, working_dir=WORKDIR, mounts=[work],
            tmpfs={"/tmp": f"size={self.tmp_mb}m,mode=1777,exec"},
            mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m",
            pids_limit=lim.pids, nano_cpus=int(lim.cpus * 1e9),
            cap_drop=["ALL"], security_opt=["no-new-privileges", f"seccomp={docker_profile()}"],
        )


def _default_python(image: str) -> str:
    # Official python images install into /usr/local; Debian's python3 lives in /usr/bin.
    return "/usr/local/bin/python3" if image.split("/")[-1].startswith("python:") else "/usr/bin/python3"


def _running(container) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return False
    return container.status == "running"


def _check(image: str) -> str | None:
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except docker.errors.DockerException as e:
        return f"no Docker engine answers ({_short(e)}); start dockerd"
    except OSError as e:
        return f"no Docker engine answers ({_short(e)}); start dockerd"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return f"docker image {image!r} is missing; run `trajdistill sandbox build-image --tag {image}`"
    except docker.errors.DockerException as e:
        return f"cannot inspect docker image {image!r}: {_short(e)}"
    finally:
        client.close()
    return None


def remove_stale(client: docker.DockerClient) -> int:
    """Remove sandbox containers whose owning process on this host is gone (a crashed run)."""
    host = socket.gethostname()
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        owner_host, _, pid = c.labels.get(OWNER_LABEL, "").rpartition(":")
        if owner_host != host or (pid.isdigit() and alive(int(pid))):
            continue
        _remove(c)
        removed += 1
    return removed


# --------------------------------------------------------------------------- image build

_SLIM = ["var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
         "usr/share/locale", "var/log", "var/cache/debconf"]
_CHANGES = ['CMD ["sleep", "infinity"]', f"ENV PATH={PATH}", "ENV LANG=C.UTF-8",
            f"WORKDIR {WORKDIR}", f"LABEL {LABEL}.image=1"]
SUITE = "bookworm"
PACKAGES = "python3-minimal,python3,coreutils,procps"


def build_image(tag: str = DEFAULT_IMAGE, method: str = "debootstrap", base: str = "python:3.11-slim",
                console=None, force: bool = False) -> str:
    """Build the sandbox image locally (no registry) and return its tag.

    method "debootstrap": a minimal Debian rootfs with python3, imported with `docker import`.
    method "from-image": `docker build` FROM a local image (`base`), adding only a label.
    Raises SandboxError with one line when debootstrap or docker fails.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    client = _client(timeout=600)
    if not force and _has_image(client, tag):
        console.print(f"image [bold]{tag}[/] already exists; rebuild with force=True (--force)")
        return tag
    if method == "debootstrap":
        _build_debootstrap(client, tag, console)
    elif method == "from-image":
        _build_from_image(client, tag, base, console)
    else:
        raise SandboxError(f"unknown build method {method!r}; use debootstrap or from-image")
    DockerProvider._checked.clear()
    size = client.images.get(tag).attrs.get("Size", 0) / 1e6
    console.print(f"[green]built[/] {tag} ({size:.0f} MB)")
    return tag


def _has_image(client, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def debian_mirror(suite: str = SUITE) -> str:
    """The first apt source that serves `suite` (one-line or deb822 format), else deb.debian.org."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for f in files:
        text = f.read_text(errors="replace") if f.is_file() else ""
        uri = _deb822_uri(text, suite) if f.suffix == ".sources" else _one_line_uri(text, suite)
        if uri:
            return uri
    return "http://deb.debian.org/debian"


def _one_line_uri(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1]
    return None


def _deb822_uri(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
        if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
            uris = fields.get("URIs", "").split()
            if uris:
                return uris[0]
    return None


def _build_debootstrap(client, tag: str, console) -> None:
    tool = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if tool is None:
        raise SandboxError("debootstrap is not installed; run `apt-get install -y debootstrap` "
                           "or use --method from-image")
    if os.geteuid() != 0:
        raise SandboxError("debootstrap needs root; run the build as root or use --method from-image")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="trajdistill-rootfs-") as tmp:
        root = Path(tmp) / "root"
        argv = [tool, "--variant=minbase", f"--include={PACKAGES}", SUITE, str(root), mirror]
        _run_with_status(argv, f"debootstrap {SUITE} from {mirror}", console)
        _slim(root)
        tarball = Path(tmp) / "rootfs.tar"
        _run_with_status(["tar", "-C", str(root), "-cf", str(tarball), "."], "packing the rootfs", console)
        with console.status(f"docker import -> {tag}"):
            repo, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
            try:
                client.api.import_image(src=str(tarball), repository=repo, tag=version, changes=_CHANGES)
            except docker.errors.DockerException as e:
                raise SandboxError(f"docker import failed: {_short(e)}") from e
        if not _has_image(client, tag):
            raise SandboxError(f"docker import did not produce {tag}")


def _slim(root: Path) -> None:
    for rel in _SLIM:
        d = root / rel
        if d.is_dir():
            shutil.rmtree(d)
            d.mkdir(parents=True)
    (root / WORKDIR.lstrip("/")).mkdir(exist_ok=True)


def _run_with_status(argv: list[str], what: str, console) -> None:
    """Run a build step, showing its latest output line; one-line SandboxError on failure."""
    tail: list[str] = []
    with console.status(what) as status:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        for line in proc.stdout:
            line = line.strip()
            if line:
                tail = (tail + [line])[-20:]
                status.update(f"{what}: {line[:100]}")
        code = proc.wait()
    if code != 0:
        last = next((t for t in reversed(tail) if t.startswith("E:")), tail[-1] if tail else "")
        raise SandboxError(f"{what} failed (exit {code}): {last}")


def _build_from_image(client, tag: str, base: str, console) -> None:
    if not _has_image(client, base):
        raise SandboxError(f"base image {base!r} is not present locally (no registry here); "
                           "load it with `docker load`, or use --method debootstrap")
    dockerfile = f"FROM {base}\nLABEL {LABEL}.image=1\n"
    with console.status(f"docker build FROM {base} -> {tag}"):
        try:
            client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, pull=False, rm=True)
        except docker.errors.DockerException as e:
            raise SandboxError(f"docker build failed: {_short(e)}") from e


__all__ = ["DockerProvider", "DockerSandbox", "build_image", "debian_mirror", "remove_stale"]
