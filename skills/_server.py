"""Serve a skill box over MCP: its tools run in a sandbox, its SKILL.md files are resources and prompts.

    trajdistill skills serve BOX [--transport stdio|http] [--host 127.0.0.1] [--port P] [--sandbox B]

The box is verified against its manifest, and its signature against the trusted keys (or a
pinned digest, see _trust.py), before anything is served. Tool code was written
by a model, so it never runs in the server process: every call goes through
`run_tool_in_sandbox` in a fresh sandbox of the provider. A tool that raises, loops or
exhausts memory answers with an MCP tool error (`is_error`), and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.resources.types import TextResource
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from trajdistill.envs import ConfigError
from trajdistill.envs.sandbox import Limits, SandboxProvider, get_provider

from ._box import BoxTool, Skill, SkillBox, run_tool_in_sandbox
from ._trust import Trust

SKILL_SCHEME = "skill://"
TASKS_META = "trajdistill/tasks"  # a tool's `_meta` key: prompts of the tasks it was mined from, for retrieval
MAX_META_TASKS = 8
TRANSPORTS = ("stdio", "http")
OUTER_GRACE_S = 15.0  # the sandbox's own limit fires first; this guards a stuck backend


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
        ok, value = await call_box_tool(self.box, self.provider, self.name, arguments, self.timeout_s)
        return CallToolResult(content=[TextContent(type="text", text=value_text(value))], is_error=not ok)


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
    tasks = list(dict.fromkeys(t.task for t in box.tests.get(tool.name, []) if t.task))[:MAX_META_TASKS]
    return _BoxTool(fn=_placeholder, name=tool.name, description=tool.spec.description,
                    parameters=tool.spec.parameters, fn_metadata=func_metadata(_placeholder, structured_output=False),
                    is_async=True, meta={TASKS_META: tasks} if tasks else None,
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
    server = MCPServer(name=box.name, version=box.version, tools=tools,
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
