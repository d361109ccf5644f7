"""Mount any MCP server's tools into an env: an Env wrapper that lists them next to the env's own.

    env = mount_mcp(make_env("math"), ["http://127.0.0.1:8000/mcp", "python server.py"])

A server is an http(s) URL (streamable HTTP) or a stdio command line. Every call goes through a real
MCP client session (`McpConnection`), one per server and event loop, restarted when it dies, so the
ReAct loop and the collector need no change. A server tool whose name the env or an earlier server
already uses gets a `<server>__` prefix. Tasks, verifier, experts and the system prompt stay the
wrapped env's. Skill boxes build on this (`trajdistill.skills.MountedEnv`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from ._env import FINAL_ANSWER, Env, Episode
from ._errors import ConfigError
from ._tools import ToolSpec
from ._types import Observation, Outcome, Task
from ._mcp_client import LiveConnection, McpConnection, McpConnectionError, _describe, _run_sync, server_target


@dataclass
class ServerInfo:
    """What one server offers, learned once over MCP."""

    name: str
    tools: list[ToolSpec]


class McpSource:
    """One mounted MCP server: a live session per event loop, restarted when it dies."""

    default_name: ClassVar[str] = "server"  # the prefix of its clashing tools when the server gives no name

    def __init__(self, server: str, timeout_s: float = 60.0):
        server_target(server)  # an unparsable command line fails now, not mid-run
        self.server = server
        self.timeout_s = timeout_s
        self.info: ServerInfo | None = None
        self._live = LiveConnection(server, timeout_s)

    async def describe_once(self) -> ServerInfo:
        """Connect, learn what the server offers, disconnect."""
        conn = await McpConnection(self.server, self.timeout_s).start()
        try:
            return await self.describe(conn)
        finally:
            await conn.close()

    async def describe(self, conn: McpConnection) -> ServerInfo:
        return ServerInfo(self.server_name(conn), await conn.list_tools())

    def server_name(self, conn: McpConnection) -> str:
        info = conn.client.server_info
        return info.name if info and info.name else self.default_name

    async def connection(self) -> McpConnection:
        return await self._live.get()

    async def call(self, tool: str, arguments: dict[str, Any]) -> Observation:
        try:
            conn = await self.connection()
        except McpConnectionError as e:
            return Observation(f"Error: {e}", error_kind="tool_error")
        return await conn.call(tool, arguments)

    async def read(self, uri: str) -> Observation:
        """A resource's text; a failed read is an error observation the agent can work around."""
        try:
            return Observation(await resource_text(await self.connection(), uri))
        except Exception as e:  # noqa: BLE001 - the agent sees it
            return Observation(f"Error: reading {uri} failed: {_describe(e)}", error_kind="tool_error")

    async def close(self) -> None:
        await self._live.close()


async def resource_text(conn: McpConnection, uri: str) -> str:
    """The text of a server's resource (its text blocks, one per line)."""
    result = await conn.client.read_resource(uri)
    return "\n".join(getattr(c, "text", "") for c in result.contents)


def _prefix(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "box"


def free_name(name: str, owner: str, taken: set[str]) -> str:
    """`name`, or `<owner>__name` (then a numbered form) when an env tool or another server has it."""
    candidate, i = name, 2
    while candidate in taken:
        candidate = f"{_prefix(owner)}__{name}" if i == 2 else f"{_prefix(owner)}{i - 1}__{name}"
        i += 1
    taken.add(candidate)
    return candidate


class McpMountedEpisode(Episode):
    """Mounted tools go to their server's session; everything else to the wrapped episode."""

    def __init__(self, env: "McpMountedEnv", task: Task, sandbox: Any, inner: Episode):
        super().__init__(env, task, sandbox)
        self.inner = inner

    async def start(self) -> str | None:
        return await self.inner.start()

    def hints(self) -> dict[str, Any]:
        return self.inner.hints()

    async def call(self, name: str, arguments: Any) -> Observation:
        env: McpMountedEnv = self.env  # type: ignore[assignment]
        spec = env.spec_of(name)
        if spec is None or name == FINAL_ANSWER:
            return Observation(f"Error: unknown tool {name!r}. Valid tools: {self.valid_tools()}.", invalid=True)
        if name in env.inner_tool_names:
            return await self.inner.call(name, arguments)
        problem = spec.validate(arguments)
        if problem:
            return Observation(f"Error: {problem}. Valid tools: {self.valid_tools()}.", invalid=True)
        return await env.call_mounted(name, arguments)

    def valid_tools(self) -> str:
        return ", ".join(t.name for t in self.env.tools_for(self.task))

    async def finish(self, answer: str | None) -> Outcome:
        self.outcome = await self.inner.finish(answer)
        self.done = True
        return self.outcome

    async def close(self) -> None:
        await self.inner.close()


class McpMountedEnv(Env):
    """An env with MCP servers' tools mounted. Tasks, verifier, experts and prompt stay the wrapped env's.

    Subclasses add tools of their own (`extra_tools`, named in `reserved`) and route them (`call_mounted`)."""

    episode_cls = McpMountedEpisode
    what: ClassVar[str] = "MCP servers"  # what a failed connection says could not be mounted
    reserved: ClassVar[tuple[str, ...]] = ()  # names of the tools `extra_tools` adds

    def __init__(self, env: Env, sources: Sequence[McpSource]):
        super().__init__(env.variant, **env.params)
        if not sources:
            raise ConfigError("give at least one MCP server (an http(s) URL or a stdio command)")
        self.inner = env
        self.name, self.version = env.name, env.version  # type: ignore[misc]
        self.needs_sandbox, self.answer_tool = env.needs_sandbox, env.answer_tool  # type: ignore[misc]
        self.sources = list(sources)
        self.routes: dict[str, tuple[McpSource, str]] = {}  # exposed tool name -> (source, the server's name)
        self.inner_tool_names: set[str] = set()
        self._tools: list[ToolSpec] | None = None

    @property
    def id(self) -> str:
        return self.inner.id

    # discovery: once, before the first episode (the ReAct loop reads tools() when it is built)

    def _discover(self) -> list[ToolSpec]:
        if self._tools is None:
            self._describe_all()
            self._tools = self._mount()
        return self._tools

    def _describe_all(self) -> None:
        async def describe_all() -> list[ServerInfo]:
            return list(await asyncio.gather(*(s.describe_once() for s in self.sources)))

        try:
            infos = _run_sync(describe_all)
        except McpConnectionError as e:  # a bad server value is the user's to fix: one line
            raise ConfigError(f"cannot mount {self.what}: {e}") from e
        for source, info in zip(self.sources, infos):
            source.info = info

    def _mount(self) -> list[ToolSpec]:
        """The env's tools, then each server's (renamed where they clash), the extra tools, final_answer."""
        inner = self.inner.tools()
        answer = [t for t in inner if t.name == FINAL_ANSWER]
        own = [t for t in inner if t.name != FINAL_ANSWER]
        self.inner_tool_names = {t.name for t in own}
        taken = self.inner_tool_names | {FINAL_ANSWER, *self.reserved}
        mounted: list[ToolSpec] = []
        for source in self.sources:
            for spec in source.info.tools:
                name = free_name(spec.name, source.info.name, taken)
                self.routes[name] = (source, spec.name)
                mounted.append(ToolSpec(name, self.listed_description(spec.description), spec.parameters))
        return own + mounted + self.extra_tools() + answer

    def listed_description(self, description: str) -> str:
        """A server tool's description as the agent is shown it."""
        return description

    def extra_tools(self) -> list[ToolSpec]:
        """Tools of the mount itself, listed after the servers' (none here)."""
        return []

    async def call_mounted(self, name: str, arguments: dict[str, Any]) -> Observation:
        """Run a mounted tool that passed its schema check."""
        source, tool = self.routes[name]
        return await source.call(tool, arguments)

    def tools(self) -> list[ToolSpec]:
        return list(self._discover())

    def spec_of(self, name: str) -> ToolSpec | None:
        return next((t for t in self._discover() if t.name == name), None)

    def system_prompt(self) -> str:
        return self.inner.system_prompt()

    # tasks, episodes and experts are the wrapped env's

    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        return self.inner.tasks(split, n, offset)

    def split_sizes(self) -> dict[str, int]:
        return self.inner.split_sizes()

    def experts(self) -> dict[str, Callable[[], Any]]:
        return self.inner.experts()

    async def start(self, task: Task, sandbox: Any = None) -> Episode:
        self._discover()
        inner = await self.inner.start(task, sandbox)
        return self.episode_cls(self, task, sandbox, inner)  # type: ignore[call-arg]

    async def close(self) -> None:
        try:
            await asyncio.gather(*(s.close() for s in self.sources))
        finally:
            await self.inner.close()


def mount_mcp(env: Env, servers: Sequence[str], *, timeout_s: float = 60.0) -> Env:
    """`env` with the tools of the MCP `servers` (http(s) URLs or stdio commands); `env` itself when none."""
    if not servers:
        return env
    return McpMountedEnv(env, [McpSource(s, timeout_s) for s in servers])
