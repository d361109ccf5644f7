"""Segment assistant turns into `reason`, `act`, `answer` and `context` spans.

Offsets index into `assistant_text(message)`, the exact text a student is trained to produce
for that turn (so every `Span.field` is "content"). For a ReAct text turn that is the content.
For a native turn it follows the Qwen/Hermes convention:

    <think>\\n{reasoning}\\n</think>\\n          (only when there is reasoning)
    {content}
    \\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   (per tool call; no leading
                                                                     newline when nothing precedes it)

Spans cover every character of every assistant text exactly once, never overlap and are sorted;
whitespace between two sections belongs to the preceding span. Non-assistant messages get no spans.

Segmenters register by name in `segmenters`: a segmenter is called as `segmenter(trajectory)` and returns
its spans. `react` (`segment` with the default rules) reads the one ReAct grammar and native tool calls;
an env names its own in `Env.segmenter`. Third parties add theirs with `@segmenters.register("name")` or
through the `trajdistill.segmenters` entry-point group.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

from trajdistill.envs import REACT_MARKERS, Registry, UnknownNameError, envs

from ._schema import Message, Span, SpanKind, Trajectory

THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"


@dataclass(frozen=True)
class SegmentRules:
    """How one env's assistant turns are read; the defaults are the ReAct grammar of `envs.REACT_MARKERS`."""

    thought_markers: tuple[str, ...] = REACT_MARKERS["thought"]
    action_markers: tuple[str, ...] = REACT_MARKERS["action"]
    input_markers: tuple[str, ...] = REACT_MARKERS["input"]
    answer_markers: tuple[str, ...] = REACT_MARKERS["answer"]
    # A line starting with one of these ends the current section; what follows is never trained.
    stop_markers: tuple[str, ...] = REACT_MARKERS["stop"]
    stray: Literal["reason", "context"] = "reason"  # ReAct text before the first marker
    answer_tools: tuple[str, ...] = ("final_answer",)  # native tool calls that give the answer
    action_format: Literal["auto", "react", "tools"] = "auto"  # auto: native if any turn looks native


# ---- the trained text of a turn ----------------------------------------------------------------


def tool_call_text(name: str, arguments: str) -> str:
    """One native tool call as Hermes-style text; arguments that are not JSON stay a string."""
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        args = arguments
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _native_pieces(message: Message) -> list[tuple[str, str]]:
    """(role of the piece, text) in order: think, content, then each call; pieces carry their separator."""
    pieces: list[tuple[str, str]] = []
    if message.reasoning:
        pieces.append(("think", f"{THINK_OPEN}{message.reasoning}{THINK_CLOSE}"))
    if message.content:
        pieces.append(("content", message.content))
    for call in message.tool_calls or []:
        if pieces:  # the separator is whitespace, so it belongs to the preceding piece
            role, text = pieces[-1]
            pieces[-1] = (role, text + "\n")
        pieces.append((call.function.name, tool_call_text(call.function.name, call.function.arguments)))
    return pieces


def is_native(message: Message) -> bool:
    return bool(message.tool_calls) or message.reasoning is not None


def assistant_text(message: Message) -> str:
    """The exact text a student is trained to produce for this assistant turn (see the module doc)."""
    if not is_native(message):
        return message.content
    return "".join(text for _, text in _native_pieces(message))


def field_spans(message: Message, spans: Iterable[Span]) -> list[dict[str, Any]]:
    """One turn's spans as offsets into the message's own fields, for readers of OpenAI messages: a `content`
    or `reasoning` entry indexes into that field; a `tool_calls` entry names the call by `index` and covers
    its `arguments`. The think tags and tool-call wrapping that `assistant_text` adds belong to no field."""
    out: list[dict[str, Any]] = []
    for s in spans:
        if s.field != "content" or not is_native(message):  # ReAct text: assistant_text is the content
            out.append({"kind": s.kind, "field": s.field, "start": s.start, "end": s.end})
            continue
        for r in _field_regions(message):
            lo, hi = max(s.start, r.body_start), min(s.end, r.body_end)
            if hi <= lo:
                continue
            entry = {"kind": s.kind, "field": r.field, "start": lo - r.body_start, "end": hi - r.body_start}
            if r.index is not None:  # a call is labelled whole, over its arguments string
                entry = {"kind": s.kind, "field": r.field, "index": r.index, "start": 0, "end": r.length}
            out.append(entry)
    return out


def spans_from_fields(message: Message, index: int, entries: Iterable[dict[str, Any]]) -> list[Span]:
    """The inverse of `field_spans` for message `index`: an entry that reaches the edge of its field takes in
    the wrapping next to it, so the spans `segment` wrote come back as they were."""
    if not is_native(message):
        return [Span(message=index, **e) for e in entries]
    regions = {(r.field, r.index): r for r in _field_regions(message)}
    pieces: list[tuple[SpanKind, int, int]] = []
    kept: list[Span] = []
    for e in entries:
        r = regions.get((e["field"], e.get("index")))
        if r is None:  # a span of another field than `segment` writes: kept as it was stored
            kept.append(Span(message=index, **e))
            continue
        whole = r.index is not None
        start = r.start if whole or e["start"] == 0 else r.body_start + e["start"]
        end = r.end if whole or e["end"] >= r.length else r.body_start + e["end"]
        pieces.append((e["kind"], start, end))
    merged = [Span(message=index, start=s, end=t, kind=k) for k, s, t in _merge(sorted(pieces, key=lambda p: p[1]))]
    return merged + kept


@dataclass(frozen=True)
class _Region:
    """Where one field sits in `assistant_text`: its piece (with wrapping and separator) and its own text."""

    field: str
    index: int | None  # the tool call's, for a `tool_calls` region
    start: int
    end: int
    body_start: int  # where the field's own text starts (a call's: its whole piece)
    body_end: int
    length: int  # of the field's own text (a call's: of its arguments string)


def _field_regions(message: Message) -> list[_Region]:
    heads = [f for f, text in (("reasoning", message.reasoning), ("content", message.content)) if text]
    regions: list[_Region] = []
    pos = 0
    for k, (_, text) in enumerate(_native_pieces(message)):
        end = pos + len(text)
        if k < len(heads):
            lead = len(THINK_OPEN) if heads[k] == "reasoning" else 0
            body = (message.reasoning if heads[k] == "reasoning" else message.content) or ""
            regions.append(_Region(heads[k], None, pos, end, pos + lead, pos + lead + len(body), len(body)))
        else:
            call = message.tool_calls[k - len(heads)]  # type: ignore[index]
            regions.append(_Region("tool_calls", k - len(heads), pos, end, pos, end, len(call.function.arguments)))
        pos = end
    return regions


# ---- segmentation -------------------------------------------------------------------------------


Segmenter = Callable[[Trajectory], list[Span]]
segmenters: Registry[Segmenter] = Registry("segmenter", "trajdistill.segmenters")


def segment(traj: Trajectory, rules: SegmentRules | None = None) -> list[Span]:
    """Spans over the assistant turns; stored context spans are kept, every other stored span is replaced.

    A turn whose stored spans are all context (a failed teacher's prefix that the DualDistill composer
    marked) stays context as a whole; a stored context range inside a turn (the composer's switch
    turn) stays context and the rest of the turn is segmented.
    """
    rules = rules or SegmentRules()
    native = _trajectory_is_native(traj, rules)
    stored = _stored_context(traj)
    spans: list[Span] = []
    for i, m in enumerate(traj.messages):
        if m.role != "assistant":
            continue
        text = assistant_text(m)
        ranges = stored.get(i)
        if ranges == "all":
            pieces: list[tuple[SpanKind, int, int]] = [("context", 0, len(text))]
        else:
            pieces = _native_spans(m, rules) if native else react_spans(m.content, rules)
            pieces = _overlay_context(pieces, ranges or [], len(text))
        spans.extend(Span(message=i, start=s, end=e, kind=k, field="content") for k, s, e in _merge(pieces))
    return spans


segmenters.register("react", segment)  # the default rules: the one ReAct grammar


def _stored_context(traj: Trajectory) -> dict[int, "list[tuple[int, int]] | str"]:
    """Per message: "all" when its stored spans are all context, else its stored context ranges."""
    kinds: dict[int, set[str]] = {}
    ranges: dict[int, list[tuple[int, int]]] = {}
    for s in traj.spans:
        kinds.setdefault(s.message, set()).add(s.kind)
        if s.kind == "context":
            ranges.setdefault(s.message, []).append((s.start, s.end))
    return {i: "all" if kinds[i] == {"context"} else ranges[i] for i in ranges}


def _overlay_context(pieces: list[tuple[SpanKind, int, int]], context: list[tuple[int, int]],
                     length: int) -> list[tuple[SpanKind, int, int]]:
    """`pieces` with the `context` char ranges cut out of them and marked context."""
    marks: list[tuple[int, int]] = []
    for s, e in sorted((max(0, s), min(e, length)) for s, e in context):
        if e <= s:
            continue
        if marks and s <= marks[-1][1]:  # overlapping or touching stored ranges become one
            marks[-1] = (marks[-1][0], max(marks[-1][1], e))
        else:
            marks.append((s, e))
    if not marks:
        return pieces
    out: list[tuple[SpanKind, int, int]] = []
    for kind, s, e in pieces:
        for cs, ce in marks:
            if ce <= s or cs >= e:
                continue
            out.append((kind, s, cs))  # empty pieces are dropped by _merge
            s = max(s, ce)
        out.append((kind, s, e))
    out.extend(("context", s, e) for s, e in marks)
    return sorted(out, key=lambda p: (p[1], p[2]))


@functools.lru_cache(maxsize=None)  # once per env name: the lookup imports the env's module
def env_segmenter(env: str) -> str:
    """The segmenter that env `env` (`name` or `name:variant`) names; `react` for an env not installed here."""
    try:
        return getattr(envs.get(env.partition(":")[0]), "segmenter", "react")
    except UnknownNameError:
        return "react"


def segment_as_env(traj: Trajectory) -> list[Span]:
    """Spans by the segmenter that the trajectory's env names (`react` for every built-in env)."""
    return segmenters.get(env_segmenter(traj.env.name))(traj)


def with_spans(traj: Trajectory) -> Trajectory:
    """`traj` when it carries spans, else a copy with the spans of the segmenter its env names: what the store
    writes, and what export and train read from runs written before spans were stored."""
    return traj if traj.spans else traj.model_copy(update={"spans": segment_as_env(traj)})


def failed_calls(traj: Trajectory) -> list[int]:
    """Indices of the assistant turns whose action failed: a tool message answering it has an error kind (a
    tool error, a sandbox failure, an unparsable action). Runs recorded before error kinds existed have none."""
    failed, turn = [], None
    for i, m in enumerate(traj.messages):
        if m.role == "assistant":
            turn = i
        elif m.role == "tool" and m.error_kind is not None and turn is not None and turn not in failed:
            failed.append(turn)
    return failed


def mask_failed_calls(traj: Trajectory) -> Trajectory:
    """`traj` with every failed call's turn (`failed_calls`) a context span as a whole, never trained: a student
    learns the turn that recovers from a slip, not the slip. The other turns keep their spans."""
    failed = set(failed_calls(traj))
    if not failed:
        return traj
    spans = [s for s in with_spans(traj).spans if s.message not in failed]
    spans += [Span(message=i, start=0, end=len(assistant_text(traj.messages[i])), kind="context") for i in failed]
    return traj.model_copy(update={"spans": sorted(spans, key=lambda s: (s.message, s.start))})


def segment_run(trajs: Iterable[Trajectory], rules: SegmentRules | None = None) -> list[Trajectory]:
    """Copies of the trajectories with their spans filled by `segment`."""
    return [t.model_copy(update={"spans": segment(t, rules)}) for t in trajs]


def _trajectory_is_native(traj: Trajectory, rules: SegmentRules) -> bool:
    if rules.action_format != "auto":
        return rules.action_format == "tools"
    return any(m.role == "assistant" and is_native(m) for m in traj.messages) or any(
        m.role == "tool" and m.tool_call_id for m in traj.messages)


def _native_spans(message: Message, rules: SegmentRules) -> list[tuple[SpanKind, int, int]]:
    has_calls = bool(message.tool_calls)
    out: list[tuple[SpanKind, int, int]] = []
    pos = 0
    for role, text in _native_pieces(message):
        if role == "think":
            kind: SpanKind = "reason"
        elif role == "content":
            kind = "reason" if has_calls else "answer"  # a reply with no tool call is the final answer
        else:
            kind = "answer" if role in rules.answer_tools else "act"
        out.append((kind, pos, pos + len(text)))
        pos += len(text)
    return out


def _marker_pattern(markers: Iterable[str]) -> str:
    # "Action Input:" must be tried before "Action:"; a space before the colon is tolerated
    alts = []
    for mk in sorted(set(markers), key=len, reverse=True):
        head = mk[:-1].rstrip() if mk.endswith(":") else mk
        alts.append(re.escape(head) + (r"[ \t]*:" if mk.endswith(":") else ""))
    return "|".join(alts)


def _marker_regex(rules: SegmentRules) -> re.Pattern[str]:
    groups = {"reason": rules.thought_markers, "action": rules.action_markers, "input": rules.input_markers,
              "answer": rules.answer_markers, "stop": rules.stop_markers}
    return _compile_markers(tuple((name, tuple(mks)) for name, mks in groups.items() if mks))


@functools.lru_cache(maxsize=64)
def _compile_markers(groups: tuple[tuple[str, tuple[str, ...]], ...]) -> re.Pattern[str]:
    # built once per grammar: every assistant turn of every stored trajectory is segmented with it
    body = "|".join(f"(?P<{name}>{_marker_pattern(mks)})" for name, mks in groups)
    return re.compile(rf"^(?:{body})", re.MULTILINE)


def react_spans(text: str, rules: SegmentRules | None = None) -> list[tuple[SpanKind, int, int]]:
    """(kind, start, end) pieces of one ReAct text turn, covering all of it.

    Thoughts (and stray text, per `rules.stray`) are reason; `Action:` with its `Action Input:`
    through the end of the JSON is act; `Final Answer:` and its answer is answer. Everything after
    the first action or answer, and anything after a stop marker, is context.
    """
    rules = rules or SegmentRules()
    marks = list(_marker_regex(rules).finditer(text))
    out: list[tuple[SpanKind, int, int]] = []
    first = marks[0].start() if marks else len(text)
    if first:
        out.append((rules.stray, 0, first))
    for k, mark in enumerate(marks):
        start, end = mark.start(), marks[k + 1].start() if k + 1 < len(marks) else len(text)
        kind = mark.lastgroup
        if kind == "reason":
            out.append(("reason", start, end))
            continue
        if kind == "stop":
            out.append(("context", start, end))
            continue
        if kind == "answer":
            out.append(("answer", start, end))
        elif kind == "action" and k + 1 < len(marks) and marks[k + 1].lastgroup == "input":
            nxt = marks[k + 2].start() if k + 2 < len(marks) else len(text)
            end = _json_end(text, marks[k + 1].end(), nxt)
            out.append(("act", start, end))
        else:  # an action without input, or an input without action: the turn is malformed
            out.append(("act", start, end))
        break
    if out and out[-1][2] < len(text):
        out.append(("context", out[-1][2], len(text)))  # whatever follows the first action or answer
    return _merge(out)


def _json_end(text: str, start: int, limit: int) -> int:
    """End of the JSON value after `start` (with its closing code fence and trailing whitespace),
    or `limit` when it does not parse."""
    pos = _skip_space(text, start, limit)
    fenced = text.startswith("```", pos)
    if fenced:
        newline = text.find("\n", pos, limit)
        if newline < 0:
            return limit
        pos = _skip_space(text, newline + 1, limit)
    try:
        _, end = json.JSONDecoder().raw_decode(text[:limit], pos)
    except json.JSONDecodeError:
        return limit
    if fenced:
        close = text.find("```", end, limit)
        if close < 0 or text[end:close].strip():
            return limit
        end = close + 3
    return _skip_space(text, end, limit)


def _skip_space(text: str, pos: int, limit: int) -> int:
    while pos < limit and text[pos].isspace():
        pos += 1
    return pos


def _merge(pieces: list[tuple[SpanKind, int, int]]) -> list[tuple[SpanKind, int, int]]:
    """Drop empty pieces and join neighbours of the same kind."""
    out: list[tuple[SpanKind, int, int]] = []
    for kind, s, e in pieces:
        if e <= s:
            continue
        if out and out[-1][0] == kind and out[-1][2] == s:
            out[-1] = (kind, out[-1][1], e)
        else:
            out.append((kind, s, e))
    return out
