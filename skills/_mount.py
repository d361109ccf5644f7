"""Mount skill boxes in any agent: an Env wrapper that adds a box's MCP tools and skills.

    env = mount_skills(make_env("math"), ["./box", "http://127.0.0.1:8000/mcp", "python server.py"])

A source is a box directory (served by `trajdistill skills serve BOX` as a stdio subprocess,
so its tool code runs in that server's sandbox; it must be signed by a trusted key or pinned),
an http(s) URL (streamable HTTP), or any other stdio command. Every call goes through a real
MCP client session (`McpConnection` from the mcp env), so the ReAct loop and the collector
need no change: the mounted env's tools are the env's tools plus the boxes' tools (a clashing
name gets a `<box>__` prefix) plus `read_skill`, and its system prompt lists the skills (or
holds them, with preload).

A box does not put all of that in every prompt. With `top_k` (default 3), a task is shown only the
k box tools and skills most relevant to it, ranked together by BM25 over their names, descriptions
and the tasks they were mined from (see _retrieve.py); `read_skill` is listed when a skill is, and
reads every skill; a box tool left out of the list still answers when called. `top_k=0` lists
everything.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trajdistill.envs import FINAL_ANSWER, ConfigError, Env, Episode, Observation, Outcome, Task, ToolSpec, tool_spec
from trajdistill.envs._mcp_mount import _free_name
from trajdistill.envs.mcp_env import (LiveConnection, McpConnection, McpConnectionError, _describe, _run_sync,
                                      server_target)

from ._box import SkillBox
from ._retrieve import BM25
from ._server import SKILL_SCHEME, TASKS_META
from ._trust import Trust

READ_SKILL = "read_skill"
TOP_K = 2  # with the math box mined from 200 tasks: 1.5x the box-less system prompt (bench/box_prompt_tokens.py)


def _read_skill(name: str) -> str:
    """Read a skill in full.

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
    texts: dict[str, str] = field(default_factory=dict)  # skill name -> SKILL.md, when preloaded or ranked
    tasks: dict[str, list[str]] = field(default_factory=dict)  # tool name -> prompts of its source tasks


async def _skill_text(conn: McpConnection, uri: str) -> str:
    result = await conn.client.read_resource(uri)
    return "\n".join(getattr(c, "text", "") for c in result.contents)


async def _tool_tasks(conn: McpConnection) -> dict[str, list[str]]:
    """The source tasks a box server lists in each tool's `_meta` (other servers list none)."""
    out: dict[str, list[str]] = {}
    cursor = None
    while True:
        page = await conn.client.list_tools(cursor=cursor)
        for t in page.tools:
            tasks = (t.meta or {}).get(TASKS_META)
            if isinstance(tasks, list):
                out[t.name] = [str(x) for x in tasks]
        cursor = page.next_cursor
        if cursor is None:
            return out


async def describe(conn: McpConnection, preload: bool) -> BoxInfo:
    """The tools and skills (resources under skill://) of a connected source; `preload` reads every SKILL.md."""
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
    return BoxInfo(info.name if info and info.name else "box", tools, skills, texts, await _tool_tasks(conn))


class Source:
    """One mounted MCP server: a live session per event loop, restarted when it dies."""

    def __init__(self, spec: str, server: str, timeout_s: float):
        self.spec = spec
        self.server = server
        self.timeout_s = timeout_s
        self.info: BoxInfo | None = None
        self._live = LiveConnection(server, timeout_s)

    async def describe_once(self, preload: bool = False) -> BoxInfo:
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


def _summary(description: str) -> str:
    """A box tool's description as listed: its first paragraph (the rest, provenance and examples, is for people
    and for retrieval, and would cost every prompt tokens)."""
    return description.strip().split("\n\n")[0].strip()


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
        return ", ".join(t.name for t in self.env.tools_for(self.task))

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
                 timeout_s: float = 60.0, trust: Trust | None = None, top_k: int = TOP_K):
        super().__init__(env.variant, **env.params)
        if not sources:
            raise ConfigError("give at least one skill box (a directory, an http(s) URL or a stdio command)")
        if top_k < 0:
            raise ConfigError(f"--skills-top-k must be 0 (list every tool and skill) or more, got {top_k}")
        self.top_k = top_k
        self.inner = env
        self.name, self.version = env.name, env.version  # type: ignore[misc]
        self.needs_sandbox, self.answer_tool = env.needs_sandbox, env.answer_tool  # type: ignore[misc]
        self.preload = preload
        self.sources = [Source(s, source_server(s, sandbox, trust), timeout_s) for s in sources]
        self.routes: dict[str, tuple[Source, str]] = {}
        self.skill_routes: dict[str, tuple[Source, str]] = {}  # exposed skill name -> (source, uri)
        self._tools: list[ToolSpec] | None = None
        self.inner_tool_names: set[str] = set()
        self._index = BM25([])
        self._items: list[tuple[str, str]] = []  # ("tool" | "skill", exposed name), in index order

    @property
    def id(self) -> str:
        return self.inner.id

    # discovery: once, before the first episode (the ReAct loop reads tools() when it is built)

    def _discover(self) -> list[ToolSpec]:
        if self._tools is not None:
            return self._tools
        async def describe_all() -> list[BoxInfo]:
            # ranking reads every SKILL.md once, as preload does
            return list(await asyncio.gather(*(s.describe_once(self.preload or self.top_k > 0)
                                               for s in self.sources)))

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
        tool_docs, skill_docs = [], []
        for source, info in zip(self.sources, infos):
            source.info = info
            for spec in info.tools:
                name = _free_name(spec.name, info.name, taken)
                self.routes[name] = (source, spec.name)
                boxed.append(ToolSpec(name, _summary(spec.description), spec.parameters))
                tool_docs.append("\n".join([spec.name, spec.description, *info.tasks.get(spec.name, [])]))
            for skill, (desc, uri) in info.skills.items():
                self.skill_routes[_free_name(skill, info.name, set(self.skill_routes))] = (source, uri)
                skill_docs.append("\n".join([skill, desc, info.texts.get(skill, "")]))
        self._items = [("tool", t.name) for t in boxed] + [("skill", n) for n in self.skill_routes]
        self._index = BM25(tool_docs + skill_docs)
        reader = [read_skill_spec()] if self.skill_routes else []
        self._tools = own + boxed + reader + answer
        return self._tools

    def tools(self) -> list[ToolSpec]:
        return list(self._discover())

    def relevant(self, task: Task) -> tuple[list[str], list[str]]:
        """(box tools, skills) listed for `task`: the top_k most relevant to it, best first (all with top_k=0)."""
        self._discover()
        ranked = range(len(self._items)) if not self.top_k else self._index.top(task.prompt, self.top_k)
        items = [self._items[i] for i in ranked]
        return [n for kind, n in items if kind == "tool"], [n for kind, n in items if kind == "skill"]

    def tools_for(self, task: Task) -> list[ToolSpec]:
        """The env's tools, the box tools relevant to `task`, read_skill when a skill is listed, final_answer."""
        tools = self._discover()
        if not self.top_k:
            return list(tools)
        boxed, skills = self.relevant(task)
        keep = set(boxed) | ({READ_SKILL} if skills else set())
        return [t for t in tools if (t.name not in self.routes and t.name != READ_SKILL) or t.name in keep]

    def spec_of(self, name: str) -> ToolSpec | None:
        return next((t for t in self._discover() if t.name == name), None)

    def skills(self) -> dict[str, str]:
        """Exposed skill name -> description."""
        self._discover()
        return {name: src.info.skills[uri.removeprefix(SKILL_SCHEME)][0]
                for name, (src, uri) in self.skill_routes.items()}

    def system_prompt(self) -> str:
        """The env's prompt and every skill of the mounted boxes."""
        return self._prompt(list(self.skills()))

    def system_prompt_for(self, task: Task) -> str:
        """The env's prompt and the top-k skills for `task` (every skill with top_k=0)."""
        if not self.top_k:
            return self.system_prompt()
        return self._prompt(self.relevant(task)[1])

    def _prompt(self, names: list[str]) -> str:
        base = self.inner.system_prompt().strip()
        every = self.skills()
        skills = {n: every[n] for n in names}  # in rank order
        if not skills:
            return base
        if self.preload:
            texts = [src.info.texts[uri.removeprefix(SKILL_SCHEME)]
                     for src, uri in (self.skill_routes[n] for n in skills)]
            block = "Skills you have (follow the one that fits the task):\n\n" + "\n\n".join(t.strip() for t in texts)
        else:
            lines = "\n".join(f"- {name}: {desc}" for name, desc in skills.items())
            block = f"Skills you have ({READ_SKILL} reads one in full):\n{lines}"
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
                 timeout_s: float = 60.0, trust: Sequence[str] = (), allow_unsigned: bool = False,
                 top_k: int = TOP_K) -> Env:
    """`env` with the skill boxes of `sources` mounted; `env` itself when `sources` is empty.

    A box directory must be signed by a trusted key (this machine's, the trust file's, or one in
    `trust`) or pinned by a `sha256:` digest in `trust`; `allow_unsigned` is for development.
    Each task is shown the `top_k` most relevant box tools and skills (0: all of them).
    """
    if not sources:
        return env
    return MountedEnv(env, list(sources), preload=preload, sandbox=sandbox, timeout_s=timeout_s,
                      trust=Trust.of(trust, allow_unsigned), top_k=top_k)
