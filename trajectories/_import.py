"""`import`: OpenAI chat messages JSONL (as `export --format openai` writes it, or real user traces) becomes a run.

One conversation per line: `{"messages": [...], "tools": [...]?, "metadata": {...}?}`. Messages keep their
`reasoning` and `tool_calls` (arguments as a JSON string; a mapping is serialised), observations are `tool`
messages. Common variants are read too: `content` as a list of text parts or null, `reasoning_content`,
the `developer` role (a system message) and the `function` role (a tool message). The `spans` that
`export --format openai` writes on assistant messages are read back; a conversation without them gets the
spans of the env's segmenter when it is stored.

`metadata` may carry `id`, `task_id`, `split`, `category`, `difficulty` and `outcome` (the schema's
fields). Without an outcome no verifier ran, so `success` is false: the `verified` curation step drops
imported traces. Without a task id the task is named by a hash of the first user message, so the same
prompt is the same task. A repeated (task, teacher) pair is numbered as a further sample (the run keeps one
trajectory per key). The first `tools` given go to run.yaml, where `export` reads them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from trajdistill import __version__
from trajdistill.envs import Outcome, envs

from ._schema import EnvRef, Message, Provenance, Teacher, Trajectory, Usage
from ._spans import spans_from_fields
from ._store import OutputError, RunError, RunStore, check_output

ROLES = {"developer": "system", "function": "tool"}
NO_VERIFIER = "imported: no verifier ran"
META_KEYS = ("task_id", "split", "category", "difficulty")


def import_messages(path: str | Path, env: str, out: str | Path, *, teacher: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """Write the conversations of `path` as the run `out`; returns how many. Every line is read and checked
    before anything is written."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise RunError(f"messages file {path} does not exist" if not path.exists() else f"{path} is not a file")
    check_output(out, [path], kind="dir")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"--out {out} exists and is not empty; choose a new run directory")
    ref = EnvRef(name=env, version=envs.get(env.partition(":")[0]).version)
    label = teacher or f"import:{path.stem}"
    rows = read_rows(path)
    trajs = [to_trajectory(row, f"{path}:{n}", ref, label) for n, row in rows]
    trajs = _number_samples(trajs)
    tools = next((row["tools"] for _, row in rows if isinstance(row.get("tools"), list)), None)
    config: dict[str, Any] = {"command": "import", "source": str(path), "env": env, "teachers": [label],
                              "split": ",".join(sorted({str(t.split) for t in trajs})),
                              "package_version": __version__}
    if tools is not None:
        config["tools"] = tools
    with RunStore.create(out, config) as store:
        for i, traj in enumerate(trajs, 1):
            store.append(traj)
            if progress:
                progress(i, len(trajs))
    return len(trajs)


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, conversation) per non-blank line; a corrupt line is refused with its number."""
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    return [(n, _row(line, f"{path}:{n}")) for n, line in lines]


def _row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise RunError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise RunError(f"{where}: expected an object with a non-empty `messages` list")
    return row


def to_trajectory(row: dict[str, Any], where: str, env: EnvRef, teacher: str) -> Trajectory:
    """One conversation as a trajectory; `where` (FILE:LINE) names it in errors and seeds its id."""
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    try:
        messages = [Message.model_validate(_message(m)) for m in row["messages"]]
        spans = [s for i, (raw, m) in enumerate(zip(row["messages"], messages))
                 for s in spans_from_fields(m, i, raw.get("spans") or [])]
        outcome = Outcome.model_validate(meta["outcome"]) if "outcome" in meta else Outcome(detail=NO_VERIFIER)
        fields = {k: meta[k] for k in META_KEYS if meta.get(k) is not None}
        return Trajectory(
            id=str(meta.get("id") or _digest(teacher, where.rpartition(":")[2], _unlabelled(row["messages"]))),
            task_id=fields.pop("task_id", None) or _task_id(messages), **fields, env=env,
            teacher=Teacher(spec=teacher, backend="import", model=teacher), messages=messages, spans=spans,
            outcome=outcome,
            usage=Usage(steps=sum(m.role == "assistant" for m in messages)),
            provenance=Provenance(package_version=__version__))
    except (ValidationError, TypeError, AttributeError, KeyError) as e:
        raise RunError(f"{where}: not a conversation this schema reads ({_first_line(e)})") from None


def _message(m: Any) -> dict[str, Any]:
    """An OpenAI message (or a common variant) in the schema's shape."""
    if not isinstance(m, dict):
        raise TypeError(f"a message must be an object, got {type(m).__name__}")
    d = dict(m)
    d["role"] = ROLES.get(d.get("role"), d.get("role"))
    content = d.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        d["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    elif content is None:
        d["content"] = ""
    if d.get("reasoning") is None and d.get("reasoning_content") is not None:
        d["reasoning"] = d["reasoning_content"]
    if d.get("tool_calls"):
        d["tool_calls"] = [_call(c) for c in d["tool_calls"]]
    return d


def _unlabelled(messages: list[dict[str, Any]]) -> str:
    """The messages as JSON without their span labels: an export with spans and one without name a trace alike."""
    return json.dumps([{k: v for k, v in m.items() if k != "spans"} for m in messages])


def _call(c: dict[str, Any]) -> dict[str, Any]:
    fn = dict(c.get("function") or {})
    if not isinstance(fn.get("arguments", ""), str):
        fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
    return {**c, "function": fn}


def _task_id(messages: list[Message]) -> str:
    prompt = next((m.content for m in messages if m.role == "user"), "")
    return f"import-{_digest(prompt)[:16]}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _number_samples(trajs: list[Trajectory]) -> list[Trajectory]:
    """A (task, teacher) pair met again becomes sample 1, 2, ...: a reader keeps one trajectory per key."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for t in trajs:
        n = seen[t.key] = seen.get(t.key, -1) + 1
        if n:
            t = t.model_copy(update={"teacher": t.teacher.model_copy(update={"sampling": {"sample": n}})})
        out.append(t)
    return out


def _first_line(e: Exception) -> str:
    lines = str(e).splitlines()
    return " ".join(lines[:3]) if isinstance(e, ValidationError) else (lines[0] if lines else type(e).__name__)
