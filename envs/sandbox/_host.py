"""The `none` backend: runs on the host, unconfined. Explicit opt-in only."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

from ._base import Command, ExecResult, Limits, Sandbox, SandboxProvider, install_paths
from ._proc import run_process


class UnsandboxedWarning(UserWarning):
    """Code is about to run on the host with no confinement."""


class HostSandbox(Sandbox):
    backend = "none"

    def __init__(self, limits: Limits):
        super().__init__(limits)
        self.root = Path(tempfile.mkdtemp(prefix="trajdistill-none-"))
        self.python = sys.executable  # not the pyenv shim on PATH, which costs ~20 ms a start
        self.box: Path | None = None

    def _path(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute():
            p = p.relative_to("/work") if p.is_relative_to("/work") else p
        return self.root / p if not p.is_absolute() else p

    async def exec(self, cmd: str | Sequence[str], *, stdin=None, timeout=None, env=None) -> ExecResult:
        # A minimal environment: the host's variables (tokens, keys) never leak in.
        run_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.root), "LANG": "C.UTF-8"}
        run_env.update(env or {})
        return await run_process(
            Command.of(cmd).argv, cwd=str(self.root), env=run_env, stdin=stdin,
            timeout=timeout or self.limits.timeout_s, limits=self.limits,
        )

    async def write_file(self, path: str, data: str | bytes) -> None:
        p = self._path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    async def read_file(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    async def install(self, files) -> str:
        # Read-only by mode only: nothing on this backend is confined.
        wanted = install_paths(files)
        self._drop_box()
        self.box = Path(tempfile.mkdtemp(prefix="trajdistill-none-box-"))
        for rel, data in wanted.items():
            (self.box / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.box / rel).write_bytes(data)
            (self.box / rel).chmod(0o444)
        return str(self.box)

    async def exec_fresh(self, cmd, *, stdin=None, timeout=None, env=None) -> ExecResult:
        # Leftovers died with the previous exec's process group; one that left it (setsid) lives on:
        # this backend confines nothing.
        self._new_root()
        return await self.exec(cmd, stdin=stdin, timeout=timeout, env=env)

    def _new_root(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

    def _drop_box(self) -> None:
        if self.box is not None:
            shutil.rmtree(self.box, ignore_errors=True)
            self.box = None

    async def reset(self) -> None:
        self._new_root()
        self._drop_box()

    async def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._drop_box()


class HostProvider(SandboxProvider):
    name = "none"
    contained = False

    async def create(self) -> Sandbox:
        warnings.warn("sandbox backend 'none' runs untrusted code on the host with no confinement",
                      UnsandboxedWarning, stacklevel=2)
        return HostSandbox(self.limits)
