"""Export a run for trainers: parquet (HF datasets), OpenAI messages JSONL, ShareGPT JSONL.

parquet
    One row per trajectory, typed by `trajectory_features()`; nested fields stay
    nested. `datasets.load_dataset("parquet", data_files=OUT)` reads it back and
    `Trajectory.from_row(row)` rebuilds the model. The `spans` column holds the
    schema's spans: offsets into each assistant turn's trained text (`assistant_text`).

openai
    `{"messages": [...], "tools": [...]}` per line, the conversational format of
    TRL's SFTTrainer. Messages are OpenAI chat messages: assistant turns keep
    `tool_calls` (arguments as a JSON string, as the API sends them) and
    `reasoning` when present; observations are `tool` messages with
    `tool_call_id` (native tool calls) or only `name` (ReAct text, where the
    call lives in the assistant's text). `tools` (OpenAI function specs) is
    given only for trajectories with native tool calls, taken from run.yaml's
    `tools` or else from the env registry; ReAct prompts already list the tools.
    Each assistant message carries `spans`: `{"kind", "field", "start", "end"}`
    character offsets into its `content` or `reasoning`, and
    `{"kind", "field": "tool_calls", "index", "start", "end"}` for a whole call
    (over its `arguments`). `import` reads them back.

sharegpt
    `{"conversations": [{"from", "value", "loss", "spans"}...], "system": ..., "id", "task_id", "teacher"}`
    per line, after AgentTuning / Agent-FLAN / AgentGym:

    =========================  =============  =====
    message                    from           loss
    =========================  =============  =====
    first system message       (`system` key)  -
    later system messages      system         False
    user                       human          False
    assistant                  gpt            True
    tool (observation)         observation    False
    =========================  =============  =====

    A ReAct-text assistant turn is copied as is. A native turn is rendered as
    ReAct text, so one student can learn from both kinds of teacher:
    `Thought: <reasoning and content>` then `Action: <name>` /
    `Action Input: <arguments JSON>` per tool call, or `Final Answer: <content>`
    for a turn without tool calls. Observations of one multi-call turn are merged
    into one `observation` turn so human/gpt turns keep alternating.
    `function_call` (LLaMA-Factory's JSON call role) is not emitted: calls are
    text inside `gpt` turns so that they are trained on.
    Each `gpt` turn carries `spans`, `{"kind", "start", "end"}` character offsets
    into its `value` (other turns an empty list): a ReAct-text turn's stored spans,
    a rendered native turn's from the ReAct grammar (all context where the stored
    spans make the whole turn context).

Every format carries spans: a trajectory stored without them (a run written before
spans were stored) gets those of the segmenter its env names.

Formats register by name in `export_formats`: a writer is called as `writer(store, trajectories, out)`.
Third parties add their own with `@export_formats.register("name")` or through the
`trajdistill.export_formats` entry-point group.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from trajdistill.envs import Registry, make_env

from ._features import trajectory_features
from ._schema import Message, Span, Trajectory
from ._spans import field_spans, react_spans, with_spans
from ._store import RunStore, check_output

log = logging.getLogger(__name__)

ROLE_TO_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


ExportWriter = Callable[[RunStore, list[Trajectory], Path], None]
export_formats: Registry[ExportWriter] = Registry("export format", "trajdistill.export_formats")


def export_run(run_path: str | Path, fmt: str, out_path: str | Path, *, only_success: bool = False,
               force: bool = False) -> int:
    """Write the run's trajectories to `out_path` in `fmt` (an existing file only with `force`); returns the
    number of rows written."""
    writer = export_formats.get(fmt)
    store = RunStore.open(run_path)
    check_output(out_path, [run_path], force=force)
    trajs = [with_spans(t) for t in store.load() if t.outcome.success or not only_success]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer(store, trajs, out)
    return len(trajs)


@export_formats.register("parquet")
def _write_parquet(store: RunStore, trajs: list[Trajectory], out: Path) -> None:
    from datasets import Dataset
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI reports rows written; datasets' one-batch bar is noise
    try:
        Dataset.from_list([t.to_row() for t in trajs], features=trajectory_features()).to_parquet(str(out))
    finally:
        if not quiet:
            enable_progress_bars()


@export_formats.register("openai")
def _write_openai(store: RunStore, trajs: list[Trajectory], out: Path) -> None:
    tools = _ToolLookup(store)
    _write_jsonl(out, (openai_row(t, tools(t)) for t in trajs))


@export_formats.register("sharegpt")
def _write_sharegpt(store: RunStore, trajs: list[Trajectory], out: Path) -> None:
    _write_jsonl(out, (sharegpt_row(t) for t in trajs))


def _write_jsonl(out: Path, rows: Any) -> None:
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- openai ------------------------------------------------------------------------------------------


def is_native(traj: Trajectory) -> bool:
    """True when the teacher spoke native tool calls rather than ReAct text."""
    return any(m.tool_calls for m in traj.messages)


def openai_row(traj: Trajectory, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spans = _by_message(traj)
    row: dict[str, Any] = {"messages": [_openai_message(m, spans.get(i, [])) for i, m in enumerate(traj.messages)]}
    if tools and is_native(traj):
        row["tools"] = tools
    return row


def _openai_message(m: Message, spans: list[Span]) -> dict[str, Any]:
    d = m.openai()
    if m.role == "assistant":
        d["spans"] = field_spans(m, spans)
    return d


def _by_message(traj: Trajectory) -> dict[int, list[Span]]:
    out: dict[int, list[Span]] = {}
    for s in traj.spans:
        out.setdefault(s.message, []).append(s)
    return out


class _ToolLookup:
    """OpenAI tool specs for an env: run.yaml's `tools`, else the env registry (once per env)."""

    def __init__(self, store: RunStore):
        self.configured = store.config.get("tools")
        self.cache: dict[str, list[dict[str, Any]] | None] = {}

    def __call__(self, traj: Trajectory) -> list[dict[str, Any]] | None:
        if not is_native(traj):
            return None
        if isinstance(self.configured, list):
            return self.configured
        name = traj.env.name
        if name not in self.cache:
            self.cache[name] = _env_tools(name)
        return self.cache[name]


def _env_tools(name: str) -> list[dict[str, Any]] | None:
    try:
        return [spec.openai() for spec in make_env(name).tools()]
    except (LookupError, ValueError, OSError, ImportError) as e:  # unknown or unavailable env
        log.warning("export: no tool specs for env %r (%s); rows go without `tools`", name, e)
        return None


# ---- sharegpt ----------------------------------------------------------------------------------------


def sharegpt_row(traj: Trajectory) -> dict[str, Any]:
    messages = list(traj.messages)
    system = messages.pop(0).content if messages and messages[0].role == "system" else ""
    first = len(traj.messages) - len(messages)
    native = is_native(traj)
    spans = _by_message(traj)
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages, first):
        value = render_react(m) if m.role == "assistant" and native else m.content
        frm = ROLE_TO_FROM[m.role]
        if frm == "observation" and turns and turns[-1]["from"] == "observation":
            turns[-1]["value"] += "\n" + value
            continue
        turn_spans = _turn_spans(m, value, spans.get(i, []), native) if frm == "gpt" else []
        turns.append({"from": frm, "value": value, "loss": frm == "gpt", "spans": turn_spans})
    return {"conversations": turns, "system": system, "id": traj.id, "task_id": traj.task_id,
            "teacher": traj.teacher.spec}


def _turn_spans(m: Message, value: str, spans: list[Span], rendered: bool) -> list[dict[str, Any]]:
    if not rendered:  # the value is the message's content
        return [{k: e[k] for k in ("kind", "start", "end")} for e in field_spans(m, spans) if e["field"] == "content"]
    if spans and all(s.kind == "context" for s in spans):
        return [{"kind": "context", "start": 0, "end": len(value)}]
    return [{"kind": k, "start": s, "end": e} for k, s, e in react_spans(value)]


def render_react(m: Message) -> str:
    """A native assistant turn as ReAct text (Thought / Action / Action Input, or Final Answer)."""
    if m.tool_calls:
        thought = "\n".join(p.strip() for p in (m.reasoning or "", m.content) if p and p.strip())
        parts = [f"Thought: {thought}"] if thought else []
        parts += [f"Action: {c.function.name}\nAction Input: {_compact(c.function.arguments)}" for c in m.tool_calls]
        return "\n".join(parts)
    head = f"Thought: {m.reasoning.strip()}\n" if m.reasoning and m.reasoning.strip() else ""
    return f"{head}Final Answer: {m.content.strip()}"


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except json.JSONDecodeError:
        return arguments  # kept verbatim: the teacher's malformed call is what it said
