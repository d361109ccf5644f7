"""An MCP client session for envs: a server's tools, its calls and its resources over stdio or streamable HTTP.

`McpConnection` owns one client session in a background task of the event loop that started it (anyio
requires a transport's context to be entered and exited in the same task); `LiveConnection` keeps one
per loop, restarted when it dies. The `mcp` env and the generic mount (`_mcp_mount.py`) build on these.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import os
import re
import shlex
import tempfile
from typing import Any, Callable

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from ._errors import ConfigError
from ._tools import ToolSpec, parse_docstring
from ._types import Observation


CONFIG_ENV = ("TRAJDISTILL_CONFIG_DIR", "XDG_CONFIG_HOME")  # where trajdistill servers find the user config


class McpConnectionError(ConnectionError):
    """The MCP server could not be started or reached."""


def server_target(server: str) -> str | StdioServerParameters:
    """An MCP `Client` target: the URL itself, or stdio parameters for a command line."""
    if re.match(r"^https?://", server):
        return server
    try:
        argv = shlex.split(server)
    except ValueError as e:
        raise ConfigError(f"mcp server command {server!r} cannot be parsed: {e}") from None
    if not argv:
        raise ConfigError("mcp server command is empty")
    # The SDK scrubs the server's environment; the user config (a skill box server's trusted keys) must follow.
    config = {k: os.environ[k] for k in CONFIG_ENV if k in os.environ}
    return StdioServerParameters(command=argv[0], args=argv[1:], env=config or None)


class McpConnection:
    """One MCP client session, owned by a background task of the loop it was started in."""

    def __init__(self, server: str, timeout_s: float = 30.0):
        self.server = server
        self.timeout_s = timeout_s
        self.client: Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: Exception | None = None
        self._errlog: Any = None  # the stdio server's stderr, quoted when it fails

    async def start(self) -> "McpConnection":
        self.loop = asyncio.get_running_loop()
        self._errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._task = asyncio.create_task(self._own(), name=f"mcp-session {self.server}")
        await self._ready.wait()
        if self._error is not None:
            message = f"cannot connect to MCP server {self.server!r}: {_describe(self._error)}{self._stderr_tail()}"
            await self.close()
            raise McpConnectionError(message) from self._error
        return self

    async def _own(self) -> None:
        target = server_target(self.server)
        transport = target if isinstance(target, str) else stdio_client(target, errlog=self._errlog)
        try:
            async with Client(transport, read_timeout_seconds=self.timeout_s) as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except Exception as e:  # noqa: BLE001 - kept and reported by start() or by the next call
            self._error = e
        finally:
            self.client = None
            self._ready.set()

    @property
    def alive(self) -> bool:
        return (self.client is not None and not self._stop.is_set()
                and self._task is not None and not self._task.done())

    async def list_tools(self) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        cursor = None
        while True:
            page = await self.client.list_tools(cursor=cursor)
            specs += [tool_from_mcp(t) for t in page.tools]
            cursor = page.next_cursor
            if cursor is None:
                return specs

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        """Call a tool; a tool error or a broken transport becomes an observation."""
        if not self.alive:
            why = f": {_describe(self._error)}" if self._error else ""
            return Observation(f"Error: the MCP server is not connected{why}{self._stderr_tail()}",
                               error_kind="tool_error")
        try:
            result = await self.client.call_tool(name, arguments)
        except Exception as e:  # noqa: BLE001 - transport failure, timeout or protocol error: the agent sees it
            if _broken(e):
                self._stop.set()  # retire this session; the env's next call starts a fresh one
            return Observation(f"Error: MCP call {name!r} failed: {_describe(e)}", error_kind="tool_error")
        text = result_text(result)
        if result.is_error:
            return Observation(f"Error: {text}", error_kind="tool_error")
        return Observation(text)

    async def close(self) -> None:
        if self.loop is asyncio.get_running_loop():
            self._stop.set()
        if self._task is not None and not self._task.done():
            if self.loop is asyncio.get_running_loop():
                await self._task
            elif self.loop is not None and not self.loop.is_closed():  # owned by another loop: ask it
                self.loop.call_soon_threadsafe(self._stop.set)
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None

    def _stderr_tail(self, n: int = 400) -> str:
        if self._errlog is None or self._errlog.closed:
            return ""
        self._errlog.flush()
        self._errlog.seek(0)
        tail = self._errlog.read()[-n:].strip()
        return f" (server stderr: ...{tail})" if tail else ""


def tool_from_mcp(tool: Any) -> ToolSpec:
    """A ToolSpec for a listed MCP tool, its schema as the server gave it.

    A Google-style `Args:` section in the description moves into the parameters'
    descriptions, so that MCP tools read like the env tools `tool_spec` builds.
    """
    description = tool.description or tool.title or tool.name
    params = copy.deepcopy(dict(tool.input_schema))
    summary, arg_docs = parse_docstring(description)
    props = params.get("properties", {})
    if arg_docs and set(arg_docs) <= set(props):
        description = summary
        for name, doc in arg_docs.items():
            props[name].setdefault("description", doc)
    return ToolSpec(tool.name, description, params)


def _broken(e: BaseException) -> bool:
    """Whether a failed call means the session is gone (not a timeout or a refused request)."""
    if isinstance(e, MCPError):
        return e.code == CONNECTION_CLOSED
    return not isinstance(e, TimeoutError)


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup) and e.exceptions:
        return _describe(e.exceptions[0])
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def result_text(result: Any) -> str:
    """The text of a CallToolResult: its text blocks, else its structured content, else a note."""
    parts = []
    for block in result.content or []:
        if getattr(block, "type", None) == "text":
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} content omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts) if parts else "[no output]"


def _run_sync(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, even when a loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make_coro()).result()


class LiveConnection:
    """One server's session for the running loop, restarted when it dies; concurrent callers share it."""

    def __init__(self, server: str, timeout_s: float):
        self.server, self.timeout_s = server, timeout_s
        self._conn: McpConnection | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._retiring: set[asyncio.Task] = set()

    async def get(self) -> McpConnection:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:  # a lock belongs to one loop
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._conn is None or not self._conn.alive or self._conn.loop is not loop:
                if self._conn is not None:  # its shutdown can take seconds; do not make calls wait
                    self._retiring.add(asyncio.create_task(self._conn.close()))
                    self._conn = None
                self._conn = await McpConnection(self.server, self.timeout_s).start()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        retiring = [t for t in self._retiring if t.get_loop() is asyncio.get_running_loop()]
        self._retiring.clear()
        await asyncio.gather(*retiring)
