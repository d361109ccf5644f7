"""Mount skill boxes in any agent: an Env wrapper that adds a box's MCP tools and skills.

    env = mount_skills(make_env("math"), ["./box", "http://127.0.0.1:8000/mcp", "python server.py"])

A source is a box directory (served by `trajdistill skills serve BOX` as a stdio subprocess,
so its tool code runs in that server's sandbox; it must be signed by a trusted key or pinned),
an http(s) URL (streamable HTTP), or any other stdio command. Every call goes through a real
MCP client session: `MountedEnv` builds on the envs layer's generic MCP mount (`McpMountedEnv`), so the
ReAct loop and the collector need no change: the mounted env's tools are the env's tools plus the boxes'
tools (a clashing name gets a `<box>__` prefix) plus `read_skill`, and its system prompt lists the skills
(or holds them, with preload).

A box does not put all of that in every prompt. With `top_k` (default 2), a task is shown only the
k box tools and skills most relevant to it, ranked together by BM25 over their names, descriptions
and the tasks they were mined from (see _retrieve.py); `read_skill` is listed when a skill is, and
reads every skill; a box tool left out of the list still answers when called. `top_k=0` lists
everything.

With `examples` (default 0), each listed box tool also shows that many calls that solved a source task, the
source tasks nearest this task first (BM25): `Example: "Compute (4 * 11 + 18) mod 7." -> {"expression": "(4 * 11
+ 18) % 7"}`. A small student copies the pattern: the task's wording turned into the tool's arguments and notation.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from trajdistill.envs import (ConfigError, Env, McpConnection, McpMountedEnv, McpSource, Observation, ServerInfo, Task,
                              ToolSpec, free_name, resource_text, tool_spec)

from ._box import SkillBox
from ._retrieve import BM25
from ._server import EXAMPLES_META, SKILL_SCHEME, TASKS_META
from ._trust import Trust

READ_SKILL = "read_skill"
Calls = list[tuple[str, dict[str, Any]]]  # a box tool's example calls: (source task, arguments)
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
    if not path.is_dir():
        return source
    # a tampered or untrusted box fails here, with the server's own one-line reason
    box = SkillBox.load(path, verify=True, trust=trust or Trust())
    # The server gets a scrubbed environment (other user config): pin exactly what was verified here.
    pin = ["--trust", box.digest] if box.trust.vouched else ["--allow-unsigned"]
    return shlex.join([sys.executable, "-m", "trajdistill", "skills", "serve", str(path.resolve()),
                       "--sandbox", sandbox, *pin])


@dataclass
class BoxInfo(ServerInfo):
    """What one source offers, learned once over MCP."""

    skills: dict[str, tuple[str, str]] = field(default_factory=dict)  # skill name -> (description, resource uri)
    texts: dict[str, str] = field(default_factory=dict)  # skill name -> SKILL.md, when preloaded or ranked
    tasks: dict[str, list[str]] = field(default_factory=dict)  # tool name -> prompts of its source tasks
    examples: dict[str, Calls] = field(default_factory=dict)  # tool name -> calls that solved its source tasks


async def _tool_meta(conn: McpConnection) -> tuple[dict[str, list[str]], dict[str, Calls]]:
    """The source tasks and example calls a box server lists in each tool's `_meta` (other servers list none)."""
    tasks: dict[str, list[str]] = {}
    examples: dict[str, Calls] = {}
    cursor = None
    while True:
        page = await conn.client.list_tools(cursor=cursor)
        for t in page.tools:
            meta = t.meta or {}
            if isinstance(meta.get(TASKS_META), list):
                tasks[t.name] = [str(x) for x in meta[TASKS_META]]
            if isinstance(meta.get(EXAMPLES_META), list):
                examples[t.name] = [(str(e["task"]), e["arguments"]) for e in meta[EXAMPLES_META]
                                    if isinstance(e, dict) and isinstance(e.get("arguments"), dict) and e.get("task")]
        cursor = page.next_cursor
        if cursor is None:
            return tasks, examples


class BoxSource(McpSource):
    """One mounted skill source: its tools, its skills (resources under skill://) and their source tasks."""

    default_name = "box"

    def __init__(self, server: str, timeout_s: float, read_texts: bool):
        super().__init__(server, timeout_s)
        self.read_texts = read_texts  # read every SKILL.md when describing (preload and ranking need them)
        self.info: BoxInfo | None = None

    async def describe(self, conn: McpConnection) -> BoxInfo:
        tools = await conn.list_tools()
        skills: dict[str, tuple[str, str]] = {}
        caps = conn.client.server_capabilities
        if caps is not None and caps.resources is not None:
            for res in (await conn.client.list_resources()).resources:
                uri = str(res.uri)
                name = uri.removeprefix(SKILL_SCHEME)
                if uri.startswith(SKILL_SCHEME) and "/" not in name:  # references are read through their skill
                    skills[name] = (res.description or "", uri)
        texts = {n: await resource_text(conn, uri) for n, (_, uri) in skills.items()} if self.read_texts else {}
        return BoxInfo(self.server_name(conn), tools, skills, texts, *await _tool_meta(conn))


def _summary(description: str) -> str:
    """A box tool's description as listed: its first paragraph (the rest, provenance and examples, is for people
    and for retrieval, and would cost every prompt tokens)."""
    return description.strip().split("\n\n")[0].strip()


def _example_text(task: str, arguments: dict[str, Any]) -> str:
    task = task if len(task) <= 160 else task[:157].rsplit(" ", 1)[0] + "..."
    return f"{json.dumps(task, ensure_ascii=False)} -> {json.dumps(arguments, ensure_ascii=False)}"


class MountedEnv(McpMountedEnv):
    """An env with skill boxes mounted over MCP. Tasks, verifier and experts stay the wrapped env's."""

    what = "skills"
    reserved = (READ_SKILL,)

    def __init__(self, env: Env, sources: Sequence[str], *, preload: bool = False, sandbox: str = "auto",
                 timeout_s: float = 60.0, trust: Trust | None = None, top_k: int = TOP_K, examples: int = 0):
        if not sources:
            raise ConfigError("give at least one skill box (a directory, an http(s) URL or a stdio command)")
        if top_k < 0:
            raise ConfigError(f"--skills-top-k must be 0 (list every tool and skill) or more, got {top_k}")
        if examples < 0:
            raise ConfigError(f"--skills-examples must be 0 (none) or more, got {examples}")
        read_texts = preload or top_k > 0  # ranking reads every SKILL.md once, as preload does
        super().__init__(env, [BoxSource(source_server(s, sandbox, trust), timeout_s, read_texts) for s in sources])
        self.top_k = top_k
        self.examples = examples
        self.preload = preload
        self.skill_routes: dict[str, tuple[BoxSource, str]] = {}  # exposed skill name -> (source, uri)
        self._index = BM25([])
        self._items: list[tuple[str, str]] = []  # ("tool" | "skill", exposed name), in index order
        self._example_index: dict[str, BM25] = {}  # exposed tool name -> BM25 over its examples' tasks

    def listed_description(self, description: str) -> str:
        return _summary(description)

    def extra_tools(self) -> list[ToolSpec]:
        """Route the boxes' skills, index box tools and skills for ranking; read_skill when there is a skill."""
        tool_docs, skill_docs = [], []
        for source in self.sources:
            info: BoxInfo = source.info  # type: ignore[assignment]
            tool_docs += ["\n".join([t.name, t.description, *info.tasks.get(t.name, [])]) for t in info.tools]
            for skill, (desc, uri) in info.skills.items():
                self.skill_routes[free_name(skill, info.name, set(self.skill_routes))] = (source, uri)
                skill_docs.append("\n".join([skill, desc, info.texts.get(skill, "")]))
        self._items = [("tool", n) for n in self.routes] + [("skill", n) for n in self.skill_routes]
        self._index = BM25(tool_docs + skill_docs)
        return [read_skill_spec()] if self.skill_routes else []

    async def call_mounted(self, name: str, arguments: dict[str, Any]) -> Observation:
        if name == READ_SKILL:
            return await self.read_skill(str(arguments["name"]))
        return await super().call_mounted(name, arguments)

    def relevant(self, task: Task) -> tuple[list[str], list[str]]:
        """(box tools, skills) listed for `task`: the top_k most relevant to it, best first (all with top_k=0)."""
        self._discover()
        ranked = range(len(self._items)) if not self.top_k else self._index.top(task.prompt, self.top_k)
        items = [self._items[i] for i in ranked]
        return [n for kind, n in items if kind == "tool"], [n for kind, n in items if kind == "skill"]

    def tools_for(self, task: Task) -> list[ToolSpec]:
        """The env's tools, the box tools relevant to `task`, read_skill when a skill is listed, final_answer;
        with `examples`, each box tool's description ends with its example calls nearest `task`."""
        tools = self._discover()
        if self.top_k:
            boxed, skills = self.relevant(task)
            keep = set(boxed) | ({READ_SKILL} if skills else set())
            tools = [t for t in tools if (t.name not in self.routes and t.name != READ_SKILL) or t.name in keep]
        return [self._with_examples(t, task) if t.name in self.routes else t for t in tools]

    def _with_examples(self, spec: ToolSpec, task: Task) -> ToolSpec:
        source, name = self.routes[spec.name]
        calls = source.info.examples.get(name, []) if self.examples else []  # type: ignore[attr-defined]
        if not calls:
            return spec
        index = self._example_index.setdefault(spec.name, BM25([t for t, _ in calls]))
        ranked = index.top(task.prompt, len(calls))
        ranked += [i for i in range(len(calls)) if i not in ranked]
        # never the task itself (a box mined from a run lists that run's tasks): its call is its answer
        near = [i for i in ranked if calls[i][0].strip() != task.prompt.strip()][:self.examples]
        if not near:
            return spec
        shown = "; ".join(_example_text(*calls[i]) for i in near)
        return replace(spec, description=f"{spec.description} Example{'s' if len(near) > 1 else ''}: {shown}")

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


def mount_skills(env: Env, sources: Sequence[str], preload: bool = False, *, sandbox: str = "auto",
                 timeout_s: float = 60.0, trust: Sequence[str] = (), allow_unsigned: bool = False,
                 top_k: int = TOP_K, examples: int = 0) -> Env:
    """`env` with the skill boxes of `sources` mounted; `env` itself when `sources` is empty.

    A box directory must be signed by a trusted key (this machine's, the trust file's, or one in
    `trust`) or pinned by a `sha256:` digest in `trust`; `allow_unsigned` is for development.
    Each task is shown the `top_k` most relevant box tools and skills (0: all of them), each tool with
    `examples` of its calls that solved the source tasks nearest the task.
    """
    if not sources:
        return env
    return MountedEnv(env, list(sources), preload=preload, sandbox=sandbox, timeout_s=timeout_s,
                      trust=Trust.of(trust, allow_unsigned), top_k=top_k, examples=examples)
