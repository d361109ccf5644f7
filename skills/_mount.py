"""Mount skill boxes in any agent: an Env wrapper that adds a box's MCP tools and skills.

    env = mount_skills(make_env("math"), ["./box", "http://127.0.0.1:8000/mcp", "python server.py"])

A source is a box directory (served by `trajdistill skills serve BOX` as a stdio subprocess,
so its tool code runs in that server's sandbox; it must be signed by a trusted key or pinned),
an http(s) URL (streamable HTTP), or any other stdio command. Every call goes through a real
MCP client session (`McpConnection` from the mcp env), so the ReAct loop and the collector
need no change: the mounted env's tools are the env's tools plus the boxes' tools (a clashing
name gets a `<box>__` prefix) plus `read_skill`, and its system prompt lists the skills (or
holds them, with preload).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trajdistill.envs import FINAL_ANSWER, ConfigError, Env, Episode, Observation, Outcome, Task, ToolSpec, tool_spec
from trajdistill.envs.mcp_env import (LiveConnection, McpConnection, McpConnectionError, _describe, _run_sync,
                                      server_target)

from ._box import SkillBox
from ._server import SKILL_SCHEME
from ._trust import Trust

READ_SKILL = "read_skill"


def _read_skill(name: str) -> str:
    """Read the full text of a skill (its SKILL.md) before you follow it.

    Args:
        name: The skill's name, as listed under Skills.
    """
    return name


def read_skill_spec() -> ToolSpec:
    return tool_spec(_read_skill, name=READ_SKILL)


def source_server(source: str, sandbox: str = "auto", trust: Trust | None = None) -> str:
    """The MCP server a `--skills` value names: a serve command for a box directory, else the value itself."""
    path = Path(source).expanduser()
    if path.is_dir():
        # a tampered or untrusted box fails here, with the server's own one-line reason
        box = SkillBox.load(path, verify=True, trust=trust or Trust())
        # The server gets a scrubbed environment (other user config): pin exactly what was verified here.
        pin = ["--trust", box.digest] if box.trust.vouched else ["--allow-unsigned"]
        return shlex.join([sys.executable, "-m", "trajdistill", "skills", "serve", str(path.resolve()),
                           "--sandbox", sandbox, *pin])
    server_target(source)  # an unparsable command line fails now, not mid-run
    return source


@dataclass
class BoxInfo:
    """What one source offers, learned once over MCP."""

    name: str
    tools: list[ToolSpec]
    skills: dict[str, tuple[str, str]]  # skill name -> (description, resource uri)
    texts: dict[str, str] = field(default_factory=dict)  # skill name -> SKILL.md, when preloaded


async def _skill_text(conn: McpConnection, uri: str) -> str:
    result = await conn.client.read_resource(uri)
    return "\n".join(getattr(c, "text", "") for c in result.contents)


async def describe(conn: McpConnection, preload: bool) -> BoxInfo:
    """The tools and skills (resources under skill://) of a connected source."""
    tools = await conn.list_tools()
    skills: dict[str, tuple[str, str]] = {}
    caps = conn.client.server_capabilities
    if caps is not None and caps.resources is not None:
        for res in (await conn.client.list_resources()).resources:
            uri = str(res.uri)
            name = uri.removeprefix(SKILL_SCHEME)
            if uri.startswith(SKILL_SCHEME) and "/" not in name:  # references are read through their skill
                skills[name] = (res.description or "", uri)
    texts = {n: await _skill_text(conn, uri) for n, (_, uri) in skills.items()} if preload else {}
    info = conn.client.server_info
    return BoxInfo(info.name if info and info.name else "box", tools, skills, texts)


class Source:
    """One mounted MCP server: a live session per event loop, restarted when it dies."""

    def __init__(self, spec: str, server: str, timeout_s: float):
        self.spec = spec
        self.server = server
        self.timeout_s = timeout_s
        self.info: BoxInfo | None = None
        self._live = LiveConnection(server, timeout_s)

    async def describe_once(self, preload: bool) -> BoxInfo:
        conn = await McpConnection(self.server, self.timeout_s).start()
        try:
            return await describe(conn, preload)
        finally:
            await conn.close()

    async def connection(self) -> McpConnection:
        return await self._live.get()

    async def call(self, tool: str, arguments: dict[str, Any]) -> Observation:
        try:
            conn = await self.connection()
        except McpConnectionError as e:
            return Observation(f"Error: {e}", error_kind="tool_error")
        return await conn.call(tool, arguments)

    async def read(self, uri: str) -> Observation:
        try:
            conn = await self.connection()
            return Observation(await _skill_text(conn, uri))
        except Exception as e:  # noqa: BLE001 - a failed read is something the agent can see and work around
            return Observation(f"Error: reading {uri} failed: {_describe(e)}", error_kind="tool_error")

    async def close(self) -> None:
        await self._live.close()


def _prefix(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "box"


def _free_name(name: str, box: str, taken: set[str]) -> str:
    """`name`, or `<box>__name` (then a numbered form) when an env tool or another box has it."""
    candidate, i = name, 2
    while candidate in taken:
        candidate = f"{_prefix(box)}__{name}" if i == 2 else f"{_prefix(box)}{i - 1}__{name}"
        i += 1
    taken.add(candidate)
    return candidate


class MountedEpisode(Episode):
    """Box tools and read_skill go to the MCP sessions; everything else to the wrapped episode."""

    def __init__(self, env: "MountedEnv", task: Task, sandbox: Any, inner: Episode):
        super().__init__(env, task, sandbox)
        self.inner = inner

    async def start(self) -> str | None:
        return await self.inner.start()

    def hints(self) -> dict[str, Any]:
        return self.inner.hints()

    async def call(self, name: str, arguments: Any) -> Observation:
        env: MountedEnv = self.env  # type: ignore[assignment]
        spec = env.spec_of(name)
        if spec is None or name == FINAL_ANSWER:
            return Observation(f"Error: unknown tool {name!r}. Valid tools: {self.valid_tools()}.", invalid=True)
        if name in env.inner_tool_names:
            return await self.inner.call(name, arguments)
        problem = spec.validate(arguments)
        if problem:
            return Observation(f"Error: {problem}. Valid tools: {self.valid_tools()}.", invalid=True)
        if name == READ_SKILL:
            return await env.read_skill(str(arguments["name"]))
        source, tool = env.routes[name]
        return await source.call(tool, arguments)

    def valid_tools(self) -> str:
        return ", ".join(t.name for t in self.env.tools())

    async def finish(self, answer: str | None) -> Outcome:
        self.outcome = await self.inner.finish(answer)
        self.done = True
        return self.outcome

    async def close(self) -> None:
        await self.inner.close()


class MountedEnv(Env):
    """An env with skill boxes mounted over MCP. Tasks, verifier and experts stay the wrapped env's."""

    episode_cls = MountedEpisode

    def __init__(self, env: Env, sources: Sequence[str], *, preload: bool = False, sandbox: str = "auto",
                 timeout_s: float = 60.0, trust: Trust | None = None):
        super().__init__(env.variant, **env.params)
        if not sources:
            raise ConfigError("give at least one skill box (a directory, an http(s) URL or a stdio command)")
        self.inner = env
        self.name, self.version = env.name, env.version  # type: ignore[misc]
        self.needs_sandbox, self.answer_tool = env.needs_sandbox, env.answer_tool  # type: ignore[misc]
        self.preload = preload
        self.sources = [Source(s, source_server(s, sandbox, trust), timeout_s) for s in sources]
        self.routes: dict[str, tuple[Source, str]] = {}
        self.skill_routes: dict[str, tuple[Source, str]] = {}  # exposed skill name -> (source, uri)
        self._tools: list[ToolSpec] | None = None
        self.inner_tool_names: set[str] = set()

    @property
    def id(self) -> str:
        return self.inner.id

    # discovery: once, before the first episode (the ReAct loop reads tools() when it is built)

    def _discover(self) -> list[ToolSpec]:
        if self._tools is not None:
            return self._tools
        async def describe_all() -> list[BoxInfo]:
            return list(await asyncio.gather(*(s.describe_once(self.preload) for s in self.sources)))

        try:
            infos = _run_sync(describe_all)
        except McpConnectionError as e:  # a bad --skills value is the user's to fix: one line
            raise ConfigError(f"cannot mount skills: {e}") from e
        inner = self.inner.tools()
        answer = [t for t in inner if t.name == FINAL_ANSWER]
        own = [t for t in inner if t.name != FINAL_ANSWER]
        self.inner_tool_names = {t.name for t in own}
        taken = self.inner_tool_names | {FINAL_ANSWER, READ_SKILL}
        boxed: list[ToolSpec] = []
        for source, info in zip(self.sources, infos):
            source.info = info
            for spec in info.tools:
                name = _free_name(spec.name, info.name, taken)
                self.routes[name] = (source, spec.name)
                boxed.append(ToolSpec(name, spec.description, spec.parameters))
            for skill, (_, uri) in info.skills.items():
                self.skill_routes[_free_name(skill, info.name, set(self.skill_routes))] = (source, uri)
        reader = [read_skill_spec()] if self.skill_routes else []
        self._tools = own + boxed + reader + answer
        return self._tools

    def tools(self) -> list[ToolSpec]:
        return list(self._discover())

    def spec_of(self, name: str) -> ToolSpec | None:
        return next((t for t in self._discover() if t.name == name), None)

    def skills(self) -> dict[str, str]:
        """Exposed skill name -> description."""
        self._discover()
        return {name: src.info.skills[uri.removeprefix(SKILL_SCHEME)][0]
                for name, (src, uri) in self.skill_routes.items()}

    def system_prompt(self) -> str:
        base = self.inner.system_prompt().strip()
        skills = self.skills()
        if not skills:
            return base
        if self.preload:
            texts = [src.info.texts[uri.removeprefix(SKILL_SCHEME)] for src, uri in self.skill_routes.values()]
            block = "Skills you have (follow the one that fits the task):\n\n" + "\n\n".join(t.strip() for t in texts)
        else:
            lines = "\n".join(f"- {name}: {desc}" for name, desc in skills.items())
            block = (f"Skills you have. When one fits the task, call {READ_SKILL} with its name to read it "
                     f"in full, then follow it:\n{lines}")
        return f"{base}\n\n{block}" if base else block

    async def read_skill(self, name: str) -> Observation:
        if name not in self.skill_routes:
            return Observation(f"Error: no skill named {name!r}. Skills: {', '.join(self.skill_routes)}.",
                               invalid=True)
        source, uri = self.skill_routes[name]
        return await source.read(uri)

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
        return MountedEpisode(self, task, sandbox, inner)

    async def close(self) -> None:
        try:
            await asyncio.gather(*(s.close() for s in self.sources))
        finally:
            await self.inner.close()


def mount_skills(env: Env, sources: Sequence[str], preload: bool = False, *, sandbox: str = "auto",
                 timeout_s: float = 60.0, trust: Sequence[str] = (), allow_unsigned: bool = False) -> Env:
    """`env` with the skill boxes of `sources` mounted; `env` itself when `sources` is empty.

    A box directory must be signed by a trusted key (this machine's, the trust file's, or one in
    `trust`) or pinned by a `sha256:` digest in `trust`; `allow_unsigned` is for development.
    """
    if not sources:
        return env
    return MountedEnv(env, list(sources), preload=preload, sandbox=sandbox, timeout_s=timeout_s,
                      trust=Trust.of(trust, allow_unsigned))
