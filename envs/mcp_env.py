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

The env holds one MCP client session (`_mcp_client.py`), owned by a background task in the running
event loop (anyio requires a transport's context to be entered and exited in the
same task); episodes share it, and calls may run concurrently.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from ._env import FINAL_ANSWER, Env, Episode
from ._errors import ConfigError
from ._mcp_client import McpConnection, McpConnectionError, _run_sync  # noqa: F401 - callers catch McpConnectionError
from ._mcp_mount import McpMountedEnv, McpSource
from ._react_text import format_action, format_final
from ._types import SPLITS, Outcome, PolicyRequest, Task, Turn

EXAMPLE_DIR = Path(__file__).parent / "data" / "mcp_example"
VERIFY_TYPES = ("exact", "regex", "python")
PYTHON_PRELUDE = "import sys\nanswer = sys.stdin.read().strip()\n"


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
    """A task of the file: its solution is the replay expert's hint, its verifier checks the answer.

    Tool calls never reach it: the mount (`McpEnv`) routes each one to the server."""

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


class McpTasks(Env):
    """The tasks half of the `mcp` env: a JSONL file's tasks, their verifiers, the replay expert; no tools."""

    name = "mcp"
    version = "1"
    episode_cls = McpEpisode
    needs_sandbox = True  # narrowed per instance: only python checks need one

    def __init__(self, variant: str | None = None, *, tasks: str | Path | None = None, split_by: str = "field",
                 **params: Any):
        super().__init__(variant, **params)
        self.tasks_path = Path(tasks or variant or EXAMPLE_DIR / "tasks.jsonl").expanduser()
        self._tasks = load_tasks(self.tasks_path, self.name, split_by)
        self.needs_sandbox = any(t.data["needs_sandbox"] for t in self._tasks)

    @property
    def id(self) -> str:
        return self.name if self.tasks_path == EXAMPLE_DIR / "tasks.jsonl" else f"{self.name}:{self.tasks_path}"

    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        self.check_split(split)
        chosen = [t for t in self._tasks if t.split == split]
        return chosen[offset: None if n is None else offset + n]

    def split_sizes(self) -> dict[str, int]:
        return {s: sum(t.split == s for t in self._tasks) for s in SPLITS}

    def system_prompt(self) -> str:
        return ("Solve the task with the tools of an MCP server. Call one tool at a time and read its result. "
                f"When you know the answer, give it with `{FINAL_ANSWER}`, as short as possible.")

    async def start(self, task: Task, sandbox: Any = None) -> Episode:
        if task.data.get("needs_sandbox") and sandbox is None:
            raise ConfigError(f"task {task.id!r} of env {self.id!r} has a python check and needs a sandbox")
        return self.episode_cls(self, task, sandbox)

    def experts(self) -> dict[str, Callable[[], Any]]:
        return {"replay": lambda: replay_expert}


class McpEnv(McpMountedEnv):
    """Tasks from a JSONL file, tools from an MCP server (stdio command or http URL): the tasks with the server
    mounted. Unlike a generic mount, it learns the tools on its live session when an episode starts, and a server
    that cannot be reached raises McpConnectionError (a ConnectionError), as it always has."""

    name = "mcp"
    version = "1"
    needs_sandbox = True  # narrowed per instance: only python checks need one

    def __init__(self, variant: str | None = None, *, tasks: str | Path | None = None, server: str | None = None,
                 split_by: str = "field", timeout_s: float = 30.0, **params: Any):
        inner = McpTasks(variant, tasks=tasks, split_by=split_by, **params)
        self.tasks_path = inner.tasks_path
        self.server = server or _default_server(self.tasks_path)
        self.timeout_s = float(timeout_s)
        self.source = McpSource(self.server, self.timeout_s)  # a command line that cannot be parsed fails here
        super().__init__(inner, [self.source])

    def _describe_all(self) -> None:
        self.source.info = _run_sync(self.source.describe_once)

    async def connection(self) -> McpConnection:
        """The env's live session, (re)started in the running loop when needed."""
        conn = await self.source.connection()
        if self._tools is None:
            self.source.info = await self.source.describe(conn)
            self._tools = self._mount()
        return conn

    async def start(self, task: Task, sandbox: Any = None) -> Episode:
        inner = await self.inner.start(task, sandbox)
        await self.connection()
        return self.episode_cls(self, task, sandbox, inner)


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
