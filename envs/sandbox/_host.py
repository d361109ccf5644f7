"""The `none` backend: runs on the host, unconfined. Explicit opt-in only."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

from ._base import Command, ExecResult, Limits, Sandbox, SandboxProvider
from ._proc import run_process


class UnsandboxedWarning(UserWarning):
    """Code is about to run on the host with no confinement."""


class HostSandbox(Sandbox):
    backend = "none"

    def __init__(self, limits: Limits):
        super().__init__(limits)
        self.root = Path(tempfile.mkdtemp(prefix="trajdistill-none-"))
        self.python = sys.executable  # not the pyenv shim on PATH, which costs ~20 ms a start

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

    async def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

    async def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class HostProvider(SandboxProvider):
    name = "none"
    contained = False

    async def create(self) -> Sandbox:
        warnings.warn("sandbox backend 'none' runs untrusted code on the host with no confinement",
                      UnsandboxedWarning, stacklevel=2)
        return HostSandbox(self.limits)
