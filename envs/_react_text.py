"""The ReAct text action format: writing it (experts) and reading it (the agent loop).

    Thought: <free text>
    Action: <tool name>
    Action Input: <JSON object>
or
    Thought: <free text>
    Final Answer: <answer>

`Reasoning:` is accepted in place of `Thought:`; text before the first marker
counts as thought.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# The one ReAct grammar: the parser here, span segmentation (`SegmentRules`) and `inspect` read these.
REACT_MARKERS: dict[str, tuple[str, ...]] = {
    "thought": ("Thought:", "Reasoning:"),
    "action": ("Action:",),
    "input": ("Action Input:",),
    "answer": ("Final Answer:",),
    "stop": ("Observation:",),  # what the env says; a model that writes it is inventing observations
}
THOUGHT_MARKERS = REACT_MARKERS["thought"]
# longest first, so "Action Input" is never read as "Action"
_NAMES = sorted((m[:-1] for k in ("thought", "action", "input", "answer") for m in REACT_MARKERS[k]), key=len,
                reverse=True)
_MARK = re.compile(rf"^({'|'.join(map(re.escape, _NAMES))})\s*:", re.MULTILINE)


@dataclass
class ParsedAction:
    thought: str
    tool: str
    arguments: Any


@dataclass
class ParsedFinal:
    thought: str
    answer: str


@dataclass
class ParseError:
    message: str


def format_action(thought: str, tool: str, arguments: dict[str, Any]) -> str:
    return f"Thought: {thought.strip()}\nAction: {tool}\nAction Input: {json.dumps(arguments, ensure_ascii=False)}"


def format_final(thought: str, answer: Any) -> str:
    return f"Thought: {thought.strip()}\nFinal Answer: {answer}"


def _sections(text: str) -> list[tuple[str, int, int]]:
    """(marker, value_start, value_end) for each marker, in order."""
    marks = list(_MARK.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((m.group(1), m.end(), end))
    return out


def parse_react(text: str) -> ParsedAction | ParsedFinal | ParseError:
    """Read one ReAct turn. The first Action or Final Answer wins; anything after it is ignored."""
    secs = _sections(text)
    thought_parts = [text[: _MARK.search(text).start()].strip()] if secs else [text.strip()]
    for i, (mark, s, e) in enumerate(secs):
        value = text[s:e].strip()
        if mark in ("Thought", "Reasoning"):
            thought_parts.append(value)
        elif mark == "Final Answer":
            return ParsedFinal(_join(thought_parts), value)
        elif mark == "Action":
            tool = value.splitlines()[0].strip() if value else ""
            if not tool:
                return ParseError("`Action:` names no tool")
            nxt = secs[i + 1] if i + 1 < len(secs) else None
            if nxt is None or nxt[0] != "Action Input":
                return ParseError(f"`Action: {tool}` must be followed by `Action Input:` with a JSON object")
            raw = text[nxt[1]:nxt[2]].strip()
            try:
                args = json.JSONDecoder().raw_decode(_strip_fence(raw))[0]
            except json.JSONDecodeError as err:
                return ParseError(f"`Action Input` is not valid JSON ({err.msg} at char {err.pos})")
            return ParsedAction(_join(thought_parts), tool, args)
        elif mark == "Action Input":
            return ParseError("`Action Input:` without a preceding `Action:`")
    return ParseError("no `Action:` or `Final Answer:` found; reply with Thought, then Action and "
                      "Action Input, or Final Answer")


def _join(parts: list[str]) -> str:
    return "\n".join(p for p in parts if p)


def _strip_fence(raw: str) -> str:
    if raw.startswith("```"):
        raw = raw.split("\n", 1)[1] if "\n" in raw else ""
        raw = raw.rsplit("```", 1)[0]
    return raw.strip()
