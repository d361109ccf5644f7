"""Sandboxes: one interface, three backends (docker, nsjail, none)."""

from ._base import (
    ExecResult,
    Limits,
    OutputBuffer,
    Sandbox,
    SandboxError,
    SandboxProvider,
    get_provider,
    resolve_backend,
    sandboxes,
)
from ._selfcheck import self_check

__all__ = [
    "ExecResult",
    "Limits",
    "OutputBuffer",
    "Sandbox",
    "SandboxError",
    "SandboxProvider",
    "get_provider",
    "resolve_backend",
    "sandboxes",
    "self_check",
]
