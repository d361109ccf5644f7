"""The `mcp` env: tasks from a JSONL file, tools from any MCP server, a verifier per task.

    trajdistill envs show mcp                               # the bundled example
    make_env("mcp:/path/tasks.jsonl", server="python server.py")
    make_env("mcp", tasks="tasks.jsonl", server="http://127.0.0.1:8000/mcp")

One task per line:

    {"id": "inv-001", "prompt": "...", "split": "train", "category": "inventory", "difficulty": 1,
     "verify": {"type": "exact", "answer": "85", "ignore_case": false}
            or {"type": "regex", "pattern": "36(\\.0+)?"}          # re.fullmatch on the stripped answer
            or {"type": "python", "code": "import sys; sys.exit(0 if answer == '85' else 1)"},
     "solution": {"steps": [{"tool": "inventory_lookup", "arguments": {"sku": "B-310"}, "why": "..."}],
                  "answer": "85"}}

A python check gets the answer in the variable `answer` (and on stdin) and exits 0
on success. It runs in the episode's sandbox, never in this process. A task
without "split" is placed by a stable hash of its id (80/10/10).

The env holds one MCP client session, owned by a background task in the running
event loop (anyio requires a transport's context to be entered and exited in the
same task); episodes share it, and calls may run concurrently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from ._env import FINAL_ANSWER, Env, Episode, final_answer_spec
from ._errors import ConfigError
from ._react_text import format_action, format_final
from ._tools import ToolSpec, parse_docstring
from ._types import SPLITS, Observation, Outcome, PolicyRequest, Task, Turn

EXAMPLE_DIR = Path(__file__).parent / "data" / "mcp_example"
VERIFY_TYPES = ("exact", "regex", "python")
CONFIG_ENV = ("TRAJDISTILL_CONFIG_DIR", "XDG_CONFIG_HOME")  # where trajdistill servers find the user config
PYTHON_PRELUDE = "import sys\nanswer = sys.stdin.read().strip()\n"


class McpConnectionError(ConnectionError):
    """The MCP server could not be started or reached."""


# ---------------------------------------------------------------- tasks file


def load_tasks(path: Path, env_name: str = "mcp", split_by: str = "field") -> list[Task]:
    """Read and check a tasks file; any problem is one ValueError naming the file and line."""
    if split_by not in ("field", "hash"):
        raise ConfigError(f"split_by must be 'field' (use a task's split, else hash) or 'hash'; got {split_by!r}")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"mcp tasks file {path} cannot be read: {e.strerror or e}") from None
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = _parse_task(line, env_name, split_by)
        except ValueError as e:
            raise ConfigError(f"{path}:{lineno}: {e}") from None
        if task.id in seen:
            raise ConfigError(f"{path}:{lineno}: duplicate task id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"mcp tasks file {path} holds no tasks")
    return tasks


def _parse_task(line: str, env_name: str, split_by: str) -> Task:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise ConfigError("each line must be a JSON object")
    for key in ("id", "prompt"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"field {key!r} must be a non-empty string")
    split = raw.get("split") if split_by == "field" else None
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    verify = _check_verify(raw.get("verify"))
    data: dict[str, Any] = {"verify": verify, "needs_sandbox": verify["type"] == "python"}
    if raw.get("solution") is not None:
        data["solution"] = _check_solution(raw["solution"], raw.get("answer"))
    difficulty = raw.get("difficulty")
    if difficulty is not None and not isinstance(difficulty, int):
        raise ConfigError("field 'difficulty' must be an integer")
    return Task(id=raw["id"], env=env_name, split=split or hash_split(raw["id"]), prompt=raw["prompt"],
                category=raw.get("category"), difficulty=difficulty, data=data)


def _check_verify(verify: Any) -> dict[str, Any]:
    if not isinstance(verify, dict) or verify.get("type") not in VERIFY_TYPES:
        raise ConfigError('field "verify" must be an object whose "type" is exact, regex or python')
    need = {"exact": "answer", "regex": "pattern", "python": "code"}[verify["type"]]
    if not isinstance(verify.get(need), str):
        raise ConfigError(f'a {verify["type"]} verifier needs a string "{need}"')
    if verify["type"] == "regex":
        try:
            re.compile(verify["pattern"])
        except re.error as e:
            raise ConfigError(f"verify pattern is not a valid regex: {e}") from None
    if verify["type"] == "python":
        try:
            compile(PYTHON_PRELUDE + verify["code"], "<verify>", "exec")
        except SyntaxError as e:
            raise ConfigError(f"verify code is not valid Python: {e.msg} (line {e.lineno})") from None
    return verify


def _check_solution(solution: Any, answer: Any) -> dict[str, Any]:
    """Accept {"steps": [...], "answer": ...} or a bare list of steps with a task-level "answer"."""
    if isinstance(solution, list):
        solution = {"steps": solution, "answer": answer}
    if not isinstance(solution, dict) or not isinstance(solution.get("steps", []), list):
        raise ConfigError('field "solution" must be {"steps": [...], "answer": ...}')
    if solution.get("answer") is None:
        raise ConfigError('a solution needs an "answer"')
    for i, step in enumerate(solution.get("steps", [])):
        if not (isinstance(step, dict) and isinstance(step.get("tool"), str)
                and isinstance(step.get("arguments", {}), dict)):
            raise ConfigError(f'solution step {i} must be {{"tool": NAME, "arguments": {{...}}}}')
    return {"steps": solution.get("steps", []), "answer": str(solution["answer"])}


def hash_split(task_id: str) -> str:
    """train/dev/test at 80/10/10 by a stable hash of the id (the same on every machine and run)."""
    bucket = int(hashlib.sha256(task_id.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("dev" if bucket == 8 else "test")


# ---------------------------------------------------------------- MCP client


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


async def list_tools_once(server: str, timeout_s: float = 30.0) -> list[ToolSpec]:
    """Connect, list the tools, disconnect."""
    conn = await McpConnection(server, timeout_s).start()
    try:
        return await conn.list_tools()
    finally:
        await conn.close()


def _run_sync(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, even when a loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make_coro()).result()


# ---------------------------------------------------------------- verifier


async def verify(spec: dict[str, Any], answer: str, sandbox: Any) -> tuple[bool, str]:
    """(success, detail) for an answer. A python check runs in `sandbox`, never here."""
    kind = spec["type"]
    if kind == "exact":
        want, got = spec["answer"].strip(), answer.strip()
        ok = want.casefold() == got.casefold() if spec.get("ignore_case") else want == got
        return ok, f"expected {want!r}, got {got!r}"
    if kind == "regex":
        ok = re.fullmatch(spec["pattern"], answer.strip()) is not None
        return ok, f"{answer.strip()!r} {'matches' if ok else 'does not match'} /{spec['pattern']}/"
    if sandbox is None:
        raise ConfigError("a python check must run in a sandbox; start the episode with one")
    res = await sandbox.exec([sandbox.python, "-c", PYTHON_PRELUDE + spec["code"]], stdin=answer)
    return res.ok, f"python check: {res.observation()[-500:]}"


# ---------------------------------------------------------------- env and episode


class McpEpisode(Episode):
    async def call(self, name: str, arguments: Any) -> Observation:
        specs = {s.name: s for s in self.env.tools() if s.name != FINAL_ANSWER}
        if name not in specs:
            return Observation(f"Error: unknown tool {name!r}. Valid tools: {self.valid_tools()}.", invalid=True)
        problem = specs[name].validate(arguments)
        if problem:
            return Observation(f"Error: {problem}. Valid tools: {self.valid_tools()}.", invalid=True)
        try:
            conn = await self.env.connection()  # reconnects when the server went away
        except McpConnectionError as e:
            return Observation(f"Error: {e}", error_kind="tool_error")
        return await conn.call(name, arguments)

    def valid_tools(self) -> str:
        return ", ".join(s.name for s in self.env.tools())

    def hints(self) -> dict[str, Any]:
        return {"solution": self.task.data.get("solution")}

    async def finish(self, answer: str | None) -> Outcome:
        self.done = True
        if answer is None:
            self.outcome = Outcome(final_answer=None, detail="no final answer was given")
            return self.outcome
        ok, detail = await verify(self.task.data["verify"], str(answer), self.sandbox)
        self.outcome = Outcome(success=ok, reward=float(ok), final_answer=str(answer), detail=detail)
        return self.outcome


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


class McpEnv(Env):
    """Tasks from a JSONL file, tools from an MCP server (stdio command or http URL)."""

    name = "mcp"
    version = "1"
    episode_cls = McpEpisode
    needs_sandbox = True  # narrowed per instance: only python checks need one

    def __init__(self, variant: str | None = None, *, tasks: str | Path | None = None, server: str | None = None,
                 split_by: str = "field", timeout_s: float = 30.0, **params: Any):
        super().__init__(variant, **params)
        self.tasks_path = Path(tasks or variant or EXAMPLE_DIR / "tasks.jsonl").expanduser()
        self._tasks = load_tasks(self.tasks_path, self.name, split_by)
        self.server = server or _default_server(self.tasks_path)
        server_target(self.server)  # a command line that cannot be parsed fails here, not mid-run
        self.timeout_s = float(timeout_s)
        self.needs_sandbox = any(t.data["needs_sandbox"] for t in self._tasks)
        self._tools: list[ToolSpec] | None = None
        self._live = LiveConnection(self.server, self.timeout_s)

    @property
    def id(self) -> str:
        return self.name if self.tasks_path == EXAMPLE_DIR / "tasks.jsonl" else f"{self.name}:{self.tasks_path}"

    # tasks

    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        self.check_split(split)
        chosen = [t for t in self._tasks if t.split == split]
        return chosen[offset: None if n is None else offset + n]

    def split_sizes(self) -> dict[str, int]:
        return {s: sum(t.split == s for t in self._tasks) for s in SPLITS}

    def system_prompt(self) -> str:
        return ("Solve the task with the tools of an MCP server. Call one tool at a time and read its result. "
                f"When you know the answer, give it with `{FINAL_ANSWER}`, as short as possible.")

    # tools and the connection

    def tools(self) -> list[ToolSpec]:
        if self._tools is None:
            self._tools = _run_sync(lambda: list_tools_once(self.server, self.timeout_s))
        return self._tools + [final_answer_spec()]

    async def connection(self) -> McpConnection:
        """The env's live session, (re)started in the running loop when needed."""
        conn = await self._live.get()
        if self._tools is None:
            self._tools = await conn.list_tools()
        return conn

    async def start(self, task: Task, sandbox: Any = None) -> Episode:
        if task.data.get("needs_sandbox") and sandbox is None:
            raise ConfigError(f"task {task.id!r} of env {self.id!r} has a python check and needs a sandbox")
        await self.connection()
        return self.episode_cls(self, task, sandbox)

    async def close(self) -> None:
        await self._live.close()

    def experts(self) -> dict[str, Callable[[], Any]]:
        return {"replay": lambda: replay_expert}


def _default_server(tasks_path: Path) -> str:
    """The example server, or a server.py next to the tasks file."""
    candidate = tasks_path.parent / "server.py"
    if candidate.is_file():
        return shlex.join([sys.executable, str(candidate)])
    raise ConfigError(f"mcp env needs server=COMMAND_OR_URL: no server.py next to {tasks_path}")


# ---------------------------------------------------------------- replay expert


def replay_expert(request: PolicyRequest) -> Turn:
    """Replay the task's solution: step k on the k-th assistant turn, then the answer."""
    solution = request.task.data.get("solution")
    if not solution:
        return Turn(content=format_final("This task has no recorded solution to replay.", ""))
    steps, done = solution["steps"], sum(m.get("role") == "assistant" for m in request.messages)
    seen = _last_observation(request.messages) if done else ""
    if done < len(steps):
        step = steps[done]
        why = step.get("why") or _tool_purpose(request.tools, step["tool"])
        thought = f"{seen}I call {step['tool']}: {why}."
        return Turn(content=format_action(thought, step["tool"], step.get("arguments", {})))
    return Turn(content=format_final(f"{seen}That gives the answer: {solution['answer']}.", solution["answer"]))


def _last_observation(messages: list[dict[str, Any]]) -> str:
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant":
        return ""
    text = " ".join(str(last.get("content") or "").split())
    text = text.removeprefix("Observation:").strip()
    return f"The last result was: {text[:160]}{'...' if len(text) > 160 else ''}. "


def _tool_purpose(tools: list[Any], name: str) -> str:
    for spec in tools:
        if getattr(spec, "name", None) == name:
            return spec.description.rstrip(".").lower() if spec.description else name
    return "it fits the next step"
