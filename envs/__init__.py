"""Environments: tasks, typed tools, verifiers, experts and sandboxes."""

from ._cache import cache_root
from ._errors import CannotActError, ConfigError, TrajdistillError
from ._env import FINAL_ANSWER, Env, Episode, ToolError, envs, final_answer_spec, make_env
from ._react_text import REACT_MARKERS
from ._registry import Registry, UnknownNameError
from ._tools import ToolSchemaError, ToolSpec, tool, tool_spec
from ._types import SPLITS, ErrorKind, Observation, Outcome, PolicyRequest, Task, ToolCall, Turn

__all__ = [
    "FINAL_ANSWER",
    "REACT_MARKERS",
    "SPLITS",
    "CannotActError",
    "ConfigError",
    "Env",
    "Episode",
    "ErrorKind",
    "Observation",
    "Outcome",
    "PolicyRequest",
    "Registry",
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
    "make_env",
    "tool",
    "tool_spec",
]
