"""Serve a skill box over MCP: its tools run in a sandbox, its SKILL.md files are resources and prompts.

    trajdistill skills serve BOX [--transport stdio|http] [--host 127.0.0.1] [--port P] [--sandbox B]

The box is verified against its manifest, and its signature against the trusted keys (or a
pinned digest, see _trust.py), before anything is served. Tool code was written
by a model, so it never runs in the server process: every call goes through
`run_tool_in_sandbox` in a sandbox of the provider. A tool that raises, loops or
exhausts memory answers with an MCP tool error (`is_error`), and the server keeps serving.

Each client session holds its own sandbox (`SessionSandboxes`): the box's tool files are
installed in it once, read-only, and every call runs in an exec that sees nothing of the
calls before it (an emptied /work, no leftover process: `Sandbox.exec_fresh`); it goes
back to the provider when the session ends. The session is the transport's one client on
stdio; over HTTP, a stateful session (one with an id), else the server's lifetime, shared by
the stateless requests (the 2026 protocol has no sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.resources.types import TextResource
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from trajdistill.envs import ConfigError
from trajdistill.envs.sandbox import Limits, Sandbox, SandboxProvider, get_provider

from ._box import BoxTool, Skill, SkillBox, ToolTest, install_tools, run_tool_in_sandbox
from ._trust import Trust

SKILL_SCHEME = "skill://"
TASKS_META = "trajdistill/tasks"  # a tool's `_meta` key: prompts of the tasks it was mined from, for retrieval
EXAMPLES_META = "trajdistill/examples"  # a tool's `_meta` key: {"task", "arguments"} of a call that solved each
MAX_META_TASKS = 8
TRANSPORTS = ("stdio", "http")
OUTER_GRACE_S = 15.0  # the sandbox's own limit fires first; this guards a stuck backend
SANDBOXES = "trajdistill/sandboxes"  # where a session's SessionSandboxes live: lifespan or connection state


def skill_uri(name: str) -> str:
    return f"{SKILL_SCHEME}{name}"


def _placeholder() -> None:
    """Never called: a box tool's work happens in `_BoxTool.run`."""


class _BoxTool(Tool):
    """An MCP tool whose schema is the box's ToolSpec and whose body runs in a sandbox."""

    box: Any = Field(exclude=True)
    provider: Any = Field(exclude=True)
    timeout_s: float | None = Field(default=None, exclude=True)

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> CallToolResult:
        sandboxes = session_sandboxes(context, self.box, self.provider)
        if sandboxes is None:
            ok, value = await call_box_tool(self.box, self.provider, self.name, arguments, self.timeout_s)
        else:
            ok, value = await sandboxes.call(self.name, arguments, self.timeout_s)
        return CallToolResult(content=[TextContent(type="text", text=value_text(value))], is_error=not ok)


class SessionSandboxes:
    """The sandboxes of one client session, each with the box's tool files installed once.

    A call borrows a free one, or makes one (concurrent calls never share), runs in an exec that sees
    nothing of the calls before it, and gives it back; `close`, at the session's end, hands them all back
    to the provider. On a backend that cannot install files, `pooled` turns False and each call gets a
    fresh sandbox instead (`call_box_tool`).
    """

    def __init__(self, box: SkillBox, provider: SandboxProvider):
        self.box = box
        self.provider = provider
        self.pooled = True
        self._free: list[tuple[Sandbox, str]] = []
        self._closed = False

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float | None = None) -> tuple[bool, Any]:
        """(ok, value or one-line error) of one call."""
        taken = await self._take() if self.pooled else None
        if taken is None:
            return await call_box_tool(self.box, self.provider, name, arguments, timeout_s)
        sandbox, installed = taken
        limit = (timeout_s or self.provider.limits.timeout_s) + OUTER_GRACE_S
        try:
            result = await asyncio.wait_for(
                run_tool_in_sandbox(self.box, name, arguments, sandbox, timeout=timeout_s, installed=installed), limit)
        except BaseException as e:
            # a stuck backend, a cancelled call: the sandbox's state is unknown, so it goes, not back to the pool
            with anyio.CancelScope(shield=True):
                await self.provider.release(sandbox)
            if isinstance(e, TimeoutError):
                return False, f"tool {name} did not finish within {limit:g}s"
            raise
        await self._give_back(sandbox, installed)
        return result

    async def _take(self) -> tuple[Sandbox, str] | None:
        if self._free:
            return self._free.pop()
        sandbox = await self.provider.create()
        try:
            return sandbox, await install_tools(self.box, sandbox)
        except BaseException as e:
            await self.provider.release(sandbox)
            if not isinstance(e, NotImplementedError):
                raise
            warnings.warn(f"{e}: every box tool call gets a fresh sandbox", stacklevel=2)
        self.pooled = False
        return None

    async def _give_back(self, sandbox: Sandbox, installed: str) -> None:
        if self._closed:
            await self.provider.release(sandbox)
        else:
            self._free.append((sandbox, installed))

    async def close(self) -> None:
        """Hand every idle sandbox back to the provider; one still in a call goes back when the call ends."""
        self._closed = True
        free, self._free = self._free, []
        for sandbox, _ in free:
            await self.provider.release(sandbox)


def session_sandboxes(context: Any, box: SkillBox, provider: SandboxProvider) -> SessionSandboxes | None:
    """The calling session's sandboxes; None outside any request (`MCPServer.call_tool` from Python)."""
    try:
        request = context.request_context
    except ValueError:
        return None
    # mcp 2.3 gives a tool no public way to its Connection; the request's ServerSession holds it
    connection = getattr(request.session, "_connection", None)
    if connection is None or connection.session_id is None:
        return request.lifespan_context[SANDBOXES]
    mine = connection.state.get(SANDBOXES)
    if mine is None:  # a stateful HTTP session: its own, released when the session ends
        mine = connection.state[SANDBOXES] = SessionSandboxes(box, provider)
        connection.exit_stack.push_async_callback(mine.close)
    return mine


def _lifespan(box: SkillBox, provider: SandboxProvider):
    """The server run's sandboxes: stdio's one client, or HTTP's stateless requests."""
    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer):
        sandboxes = SessionSandboxes(box, provider)
        try:
            yield {SANDBOXES: sandboxes}
        finally:
            with anyio.CancelScope(shield=True):  # the transport is being cancelled: finish the hand-back
                await sandboxes.close()

    return lifespan


async def call_box_tool(box: SkillBox, provider: SandboxProvider, name: str, arguments: dict[str, Any],
                        timeout_s: float | None = None) -> tuple[bool, Any]:
    """(ok, value or one-line error) of one call, in a fresh sandbox."""
    limit = (timeout_s or provider.limits.timeout_s) + OUTER_GRACE_S
    try:
        async with provider.acquire() as sandbox:
            return await asyncio.wait_for(
                run_tool_in_sandbox(box, name, arguments, sandbox, timeout=timeout_s), limit)
    except TimeoutError:
        return False, f"tool {name} did not finish within {limit:g}s"


def value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _tool(box: SkillBox, tool: BoxTool, provider: SandboxProvider, timeout_s: float | None) -> _BoxTool:
    first: dict[str, ToolTest] = {}  # each source task's first test
    for t in box.tests.get(tool.name, []):
        if t.task:
            first.setdefault(t.task, t)
    examples = [{"task": t.task, "arguments": t.args} for t in list(first.values())[:MAX_META_TASKS]]
    meta = {TASKS_META: [e["task"] for e in examples], EXAMPLES_META: examples} if examples else None
    return _BoxTool(fn=_placeholder, name=tool.name, description=tool.spec.description,
                    parameters=tool.spec.parameters, fn_metadata=func_metadata(_placeholder, structured_output=False),
                    is_async=True, meta=meta,
                    box=box, provider=provider, timeout_s=timeout_s)


def _resources(box: SkillBox, skill: Skill) -> list[TextResource]:
    """The SKILL.md itself, then each reference document it links to."""
    out = [TextResource(uri=skill_uri(skill.name), name=skill.name, description=skill.description,
                        mime_type="text/markdown", text=skill.path.read_text(encoding="utf-8"))]
    for rel in skill.references:
        ref = rel.removeprefix(f"skills/{skill.name}/")
        out.append(TextResource(uri=f"{skill_uri(skill.name)}/{ref}", name=f"{skill.name}/{ref}",
                                description=f"{ref}, linked from skill {skill.name}", mime_type="text/markdown",
                                text=(box.path / rel).read_text(encoding="utf-8")))
    return out


def _prompt(skill: Skill, text: str) -> Prompt:
    def render() -> str:
        return text

    return Prompt.from_function(render, name=skill.name, description=skill.description)


def build_server(box: SkillBox, sandbox_provider: SandboxProvider, *, exclude: Iterable[str] = (),
                 timeout_s: float | None = None) -> MCPServer:
    """An MCPServer for `box`. `exclude` leaves skills or tools out by name (for ablations)."""
    skip = set(exclude)
    unknown = skip - {s.name for s in box.skills} - {t.name for t in box.tools}
    if unknown:
        raise ConfigError(f"box {box.name!r} has no skill or tool named {', '.join(sorted(unknown))}")
    tools = [_tool(box, t, sandbox_provider, timeout_s) for t in box.tools if t.name not in skip]
    skills = [s for s in box.skills if s.name not in skip]
    listing = "; ".join(f"{s.name}: {s.description}" for s in skills)
    server = MCPServer(name=box.name, version=box.version, tools=tools, lifespan=_lifespan(box, sandbox_provider),
                       instructions=f"Skill box {box.name}. Skills (read skill://NAME): {listing or 'none'}.")
    for skill in skills:
        resources = _resources(box, skill)
        for res in resources:
            server.add_resource(res)
        server.add_prompt(_prompt(skill, resources[0].text))
    return server


def load_verified(path: str | Path, trust: Trust | None = None) -> SkillBox:
    """The box at `path`, every file checked against the manifest and the manifest against `trust`
    (default: this machine's key and the trust file); BoxError, one line, otherwise."""
    return SkillBox.load(path, verify=True, trust=trust or Trust())


async def serve_async(box_path: str | Path, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000,
                      sandbox: str = "auto", timeout_s: float = 10.0, memory_mb: int = 512,
                      exclude: Iterable[str] = (), trust: Trust | None = None) -> None:
    """Verify the box, then serve it until the transport closes (stdio) or the process is stopped (http)."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    box = load_verified(box_path, trust)
    provider = get_provider(sandbox, Limits(timeout_s=timeout_s, memory_mb=memory_mb))
    async with provider:
        server = build_server(box, provider, exclude=exclude, timeout_s=timeout_s)
        if transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=host, port=port)


def serve(box_path: str | Path, **options: Any) -> None:
    """Sync wrapper of `serve_async`."""
    asyncio.run(serve_async(box_path, **options))
