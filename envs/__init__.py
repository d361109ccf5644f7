"""Environments: tasks, typed tools, verifiers, experts and sandboxes."""

from typing import Any

from ._cache import cache_root
from ._errors import CannotActError, ConfigError, TrajdistillError
from ._env import FINAL_ANSWER, Env, Episode, ToolError, envs, final_answer_spec, make_env
from ._react_prefix import react_prefix_fits
from ._react_text import REACT_MARKERS
from ._registry import Registry, UnknownNameError
from ._tools import ToolSchemaError, ToolSpec, tool, tool_spec
from ._types import SPLITS, ErrorKind, Observation, Outcome, PolicyRequest, Task, ToolCall, Turn

# Mounting MCP servers loads the MCP SDK (about half a second): its names load on first use, so that importing
# `trajdistill.envs` (every command, `--help` included) does not pay for it.
_MCP_MOUNT = (
    "McpConnection", "McpMountedEnv", "McpMountedEpisode", "McpSource", "ServerInfo", "free_name", "mount_mcp",
    "resource_text",
)


def __getattr__(name: str) -> Any:
    if name in _MCP_MOUNT:
        from . import _mcp_mount

        return getattr(_mcp_mount, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FINAL_ANSWER",
    "REACT_MARKERS",
    "SPLITS",
    "CannotActError",
    "ConfigError",
    "Env",
    "Episode",
    "ErrorKind",
    "McpConnection",
    "McpMountedEnv",
    "McpMountedEpisode",
    "McpSource",
    "Observation",
    "Outcome",
    "PolicyRequest",
    "Registry",
    "ServerInfo",
    "Task",
    "ToolCall",
    "ToolError",
    "ToolSchemaError",
    "ToolSpec",
    "TrajdistillError",
    "Turn",
    "UnknownNameError",
    "cache_root",
    "envs",
    "final_answer_spec",
    "free_name",
    "make_env",
    "mount_mcp",
    "react_prefix_fits",
    "resource_text",
    "tool",
    "tool_spec",
]
