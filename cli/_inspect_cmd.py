"""`trajdistill inspect RUN [--show ID [--spans]]`: stats tables, or one trajectory turn by turn."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trajdistill.envs import REACT_MARKERS, ConfigError
from trajdistill.envs._react_text import _MARK
from trajdistill.trajectories import (Message, RunError, RunStore, Trajectory, assistant_text, env_segmenter,
                                      segmenters)

THOUGHT, ACTION, ANSWER, CONTEXT = "cyan", "bold magenta", "bold green", "dim"
KIND_STYLE = {"thought": THOUGHT, "action": ACTION, "input": ACTION, "answer": ANSWER}
MARK_STYLE = {m.rstrip(":"): KIND_STYLE[kind] for kind in KIND_STYLE for m in REACT_MARKERS[kind]}
# --spans: one colour per span kind; text the student is never trained on (prompts, observations) is dim
SPAN_STYLE = {"reason": "cyan", "act": "bold magenta", "answer": "bold green", "context": "yellow"}
UNTRAINED = "dim"


def inspect_run(console: Console, run_path: str | Path, show: str | None = None, spans: bool = False,
                segmenter: str | None = None) -> None:
    if (spans or segmenter) and show is None:
        raise ConfigError(f"{'--spans' if spans else '--segmenter'} needs --show TRAJ_ID")
    store = RunStore.open(run_path)
    trajs = store.load()
    if show is not None:
        traj = find_trajectory(trajs, show)
        if spans or segmenter:
            show_spans(console, traj, segmenter)
        else:
            show_trajectory(console, traj)
        return
    console.print(escape(f"{store.path}  env {store.config.get('env', '?')}  "
                         f"split {store.config.get('split', '?')}  {len(trajs)} trajectories"))
    console.print(teacher_table(trajs, store.errors()))
    for title, key in (("difficulty", lambda t: t.difficulty), ("category", lambda t: t.category)):
        if any(key(t) is not None for t in trajs):
            console.print(breakdown_table(trajs, title, key))


# ---- stats ---------------------------------------------------------------------------------------


def _rate(ts: list[Trajectory]) -> str:
    return f"{sum(t.outcome.success for t in ts) / len(ts):.1%}" if ts else "-"


def _mean(ts: list[Trajectory], value: Callable[[Trajectory], float], fmt: str) -> str:
    return format(sum(value(t) for t in ts) / len(ts), fmt) if ts else "-"


def teacher_table(trajs: list[Trajectory], errors: list[dict[str, Any]]) -> Table:
    by_teacher: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        by_teacher[t.teacher.spec].append(t)
    finished = {t.key for t in trajs}
    pending: dict[str, set[str]] = defaultdict(set)  # errored pairs not yet redone by a --resume
    for e in errors:
        if (e.get("task_id"), e.get("teacher")) not in finished:
            pending[e.get("teacher", "?")].add(e.get("task_id", "?"))
    table = Table(title="per teacher")
    table.add_column("teacher")
    for col in ("n", "success", "mean steps", "mean tokens", "errors"):
        table.add_column(col, justify="right")
    for spec in sorted(set(by_teacher) | set(pending)):
        ts = by_teacher.get(spec, [])
        table.add_row(spec, str(len(ts)), _rate(ts), _mean(ts, lambda t: t.usage.steps, ".1f"),
                      _mean(ts, lambda t: t.usage.total_tokens, ".0f"), str(len(pending.get(spec, ()))))
    return table


def breakdown_table(trajs: list[Trajectory], title: str, key: Callable[[Trajectory], Any]) -> Table:
    """Success rate (n) per value of `key`, one column per teacher."""
    teachers = sorted({t.teacher.spec for t in trajs})
    cells: dict[Any, dict[str, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        cells[key(t)][t.teacher.spec].append(t)
    table = Table(title=f"success per {title}")
    table.add_column(title)
    for spec in teachers:
        table.add_column(spec, justify="right")
    for value in sorted(cells, key=lambda v: (v is None, str(v) if not isinstance(v, int) else f"{v:09d}")):
        row = cells[value]
        table.add_row("-" if value is None else str(value),
                      *(f"{_rate(row[s])} ({len(row[s])})" if row.get(s) else "-" for s in teachers))
    return table


# ---- one trajectory ------------------------------------------------------------------------------


def find_trajectory(trajs: list[Trajectory], wanted: str) -> Trajectory:
    """By id, unique id prefix, or a task id that only one trajectory has."""
    exact = [t for t in trajs if t.id == wanted]
    hits = exact or [t for t in trajs if t.id.startswith(wanted)] or [t for t in trajs if t.task_id == wanted]
    if len(hits) == 1:
        return hits[0]
    if hits:
        listed = ", ".join(f"{t.id} ({t.teacher.spec})" for t in hits[:5])
        raise RunError(f"{wanted!r} matches {len(hits)} trajectories: {listed}; give more of the id")
    known = ", ".join(t.id for t in trajs[:5]) or "(the run has no trajectories)"
    raise RunError(f"no trajectory {wanted!r} in this run; known ids include: {known}")


def show_trajectory(console: Console, traj: Trajectory) -> None:
    console.print(Text(traj.id, style="bold") + Text(
        f"  task {traj.task_id}  teacher {traj.teacher.spec}  env {traj.env.name}@{traj.env.version}  "
        f"difficulty {traj.difficulty}  category {traj.category}"))
    for i, m in enumerate(traj.messages):
        console.print(render_message(i, m))
    console.print(outcome_panel(traj))


def render_message(i: int, m: Message):
    if m.role in ("system", "user"):
        return Panel(Text(m.content, style=CONTEXT), title=f"[{i}] {m.role}", title_align="left",
                     border_style="dim")
    if m.role == "tool":
        return Panel(Text(m.content), title=escape(f"[{i}] observation: {m.name or 'tool'}"), title_align="left",
                     border_style="blue")
    parts: list[Any] = []
    if m.reasoning:
        parts.append(Text("reasoning: ", style="bold " + THOUGHT) + Text(m.reasoning, style=THOUGHT))
    if m.content:
        parts.append(react_text(m.content))
    for c in m.tool_calls or []:
        parts.append(Text(f"tool call {c.function.name}", style=ACTION)
                     + Text(f" {_pretty_args(c.function.arguments)}", style="magenta"))
    return Panel(Group(*parts) if parts else Text("(empty)", style="dim"), title=f"[{i}] assistant",
                 title_align="left", border_style="white")


def react_text(content: str) -> Text:
    """ReAct text with each section coloured by its marker; text before any marker counts as thought."""
    out = Text()
    marks = list(_MARK.finditer(content))
    out.append(content[: marks[0].start() if marks else len(content)], style=THOUGHT)
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(content)
        style = MARK_STYLE[mark.group(1)]
        out.append(content[mark.start():mark.end()], style="bold " + style.replace("bold ", ""))
        out.append(content[mark.end():end], style=style)
    return out


def show_spans(console: Console, traj: Trajectory, segmenter: str | None = None) -> None:
    """Each assistant turn as the text the student is trained on, coloured by span kind; `segmenter`:
    a name in `segmenters` (default: the one the trajectory's env names)."""
    name = segmenter or env_segmenter(traj.env.name)
    spans = segmenters.get(name)(traj)
    console.print(Text(traj.id, style="bold") + Text(f"  task {traj.task_id}  teacher {traj.teacher.spec}  "
                                                     f"segmenter {name}"))
    console.print(Text("spans: ") + Text("  ").join(Text(kind, style=style) for kind, style in SPAN_STYLE.items())
                  + Text("  untrained", style=UNTRAINED))
    chars = {kind: 0 for kind in SPAN_STYLE}
    for s in spans:
        chars[s.kind] += s.end - s.start
    for i, m in enumerate(traj.messages):
        if m.role != "assistant":
            title = f"[{i}] {m.role}" + (f": {m.name}" if m.role == "tool" and m.name else "")
            console.print(Panel(Text(m.content, style=UNTRAINED), title=escape(title), title_align="left",
                                border_style="dim"))
            continue
        console.print(Panel(spans_text(assistant_text(m), [s for s in spans if s.message == i]),
                            title=f"[{i}] assistant", title_align="left", border_style="white"))
    console.print(Text("chars per kind: " + "  ".join(f"{k} {v}" for k, v in chars.items())))
    console.print(outcome_panel(traj))


def spans_text(text: str, spans: list) -> Text:
    out = Text()
    pos = 0
    for s in sorted(spans, key=lambda s: s.start):
        out.append(text[pos:s.start], style=UNTRAINED)  # nothing here when the spans tile the text
        out.append(text[s.start:s.end], style=SPAN_STYLE[s.kind])
        pos = max(pos, s.end)
    out.append(text[pos:], style=UNTRAINED)
    return out if text else Text("(empty)", style=UNTRAINED)


def _pretty_args(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except json.JSONDecodeError:
        return arguments


def outcome_panel(traj: Trajectory) -> Panel:
    o, u = traj.outcome, traj.usage
    verdict = Text("success", style="bold green") if o.success else Text("failure", style="bold red")
    lines = [verdict + Text(f"  reward {o.reward:g}  steps {u.steps}  tokens {u.total_tokens}  "
                            f"invalid actions {u.invalid_actions}  wall {u.wall_s:.2f}s")]
    if o.final_answer is not None:
        lines.append(Text("final answer: ", style="bold") + Text(o.final_answer, style=ANSWER))
    if o.detail:
        lines.append(Text(f"verifier: {o.detail}"))
    if o.error:
        lines.append(Text(f"error: {o.error}", style="red"))
    return Panel(Group(*lines), title="outcome", title_align="left",
                 border_style="green" if o.success else "red")
