"""Strict tool calls: whether a ReAct turn being written can still end as a call the tool list allows.

A decoder that checks each token with `react_prefix_fits` writes only actions that name a listed tool, with an
`Action Input` whose keys are the tool's parameters (every required one before `}`) and whose values have the
parameter's JSON type: OpenAI's strict function calling, for the ReAct text format. Thought and Final Answer
stay free. A small student that passes `{"code": ...}` to every tool cannot write that call here.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ._react_text import _MARK
from ._tools import ToolSpec

_INPUT = "Action Input:"
_NUMBER = re.compile(r"-?(0|[1-9]\d*)?(\.\d*)?([eE][-+]?\d*)?")
_INTEGER = re.compile(r"-?(0|[1-9]\d*)?")
_ESCAPES = set('"\\/bfnrt')
_WORDS = {"boolean": ("true", "false"), "null": ("null",)}


def react_prefix_fits(text: str, tools: Sequence[ToolSpec], end: bool = False) -> bool:
    """Whether `text` begins a turn that can still be a valid call of one of `tools` (or a final answer);
    `end`: whether the turn may also stop here."""
    first = next((m for m in _MARK.finditer(text) if m.group(1) in ("Action", "Action Input", "Final Answer")), None)
    if first is None or first.group(1) == "Final Answer":
        return True
    if first.group(1) == "Action Input":
        return False  # an input without an action names no tool
    rest = text[first.end():]
    name, newline, after = rest.partition("\n")
    name = name.strip()
    if not newline:
        return not end and any(t.name.startswith(name) for t in tools)
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        return False
    if not after.startswith(_INPUT):
        return not end and _INPUT.startswith(after)
    return _ObjectScan(tool.parameters).fits(after[len(_INPUT):], end)


class _ObjectScan:
    """A character scanner of one JSON object against a tool's parameter schema."""

    def __init__(self, schema: dict[str, Any]):
        self.props: dict[str, Any] = schema.get("properties") or {}
        self.required = set(schema.get("required") or [])
        self.open_keys = not self.props and schema.get("additionalProperties", True) is not False

    def fits(self, s: str, end: bool) -> bool:
        i = _skip(s, 0)
        if i == len(s):
            return not end
        if s[i] != "{":
            return False
        i, used = i + 1, set()
        while True:
            i = _skip(s, i)
            if i == len(s):
                return not end
            if s[i] == "}":
                return self.required <= used
            if used:
                if s[i] != ",":
                    return False
                i = _skip(s, i + 1)
                if i == len(s):
                    return not end
            key, i = _string(s, i, plain=True)
            if i == -1:
                return False
            if i is None:  # the key is still being written
                return not end and (self.open_keys or any(k.startswith(key) and k not in used for k in self.props))
            if key in used or not (self.open_keys or key in self.props):
                return False
            used.add(key)
            i = _skip(s, i)
            if i == len(s):
                return not end
            if s[i] != ":":
                return False
            i = _value(s, _skip(s, i + 1), self.props.get(key, {}).get("type"))
            if i is None or i < 0:
                return i is None and not end  # None: the value is still being written


def _skip(s: str, i: int) -> int:
    """The index after one optional space at `i`: a call writes its JSON on one line, spaced as `json.dumps` does
    (more whitespace is a way for a guided small model to pad forever)."""
    return i + 1 if i < len(s) and s[i] == " " else i


def _string(s: str, i: int, plain: bool = False) -> tuple[str, int | None]:
    """A JSON string at `i`: (its text, the index after it); (text so far, None) while it is open; ("", -1) when
    `s[i]` opens no string or an escape is bad (any escape, when `plain`: a parameter name has none)."""
    if i >= len(s) or s[i] != '"':
        return "", -1
    out, j = [], i + 1
    while j < len(s):
        c = s[j]
        if c == '"':
            return "".join(out), j + 1
        if c < " ":  # a raw control character: JSON (and so the ReAct parser) refuses it
            return "", -1
        if c == "\\":
            n = _escape(s, j + 1)
            if plain or n == -1:
                return "", -1
            if n is None:
                return "".join(out), None
            j = n
            continue
        out.append(c)
        j += 1
    return "".join(out), None


def _escape(s: str, i: int) -> int | None:
    """The index after the escape whose backslash precedes `i`; None while it is open; -1 when it is bad."""
    if i == len(s):
        return None
    if s[i] in _ESCAPES:
        return i + 1
    if s[i] != "u":
        return -1
    digits = s[i + 1:i + 5]
    if not all(c in "0123456789abcdefABCDEF" for c in digits):
        return -1
    return i + 5 if len(digits) == 4 else None


def _value(s: str, i: int, kind: Any) -> int | None:
    """The index after a value of JSON type `kind` at `i`; None while it may still be written; -1 when it cannot
    be one. A number ends at the first character that is not part of it."""
    if i == len(s):
        return None
    if kind == "string":
        return _string(s, i)[1]
    if kind in ("integer", "number"):
        m = (_INTEGER if kind == "integer" else _NUMBER).match(s, i)
        j = m.end()
        if j == len(s):
            return None
        return j if j > i and s[j - 1].isdigit() else -1
    if kind in _WORDS:
        word = next((w for w in _WORDS[kind] if s.startswith(w, i) or w.startswith(s[i:])), None)
        if word is None:
            return -1
        return i + len(word) if s.startswith(word, i) else None
    return _any_value(s, i)


def _any_value(s: str, i: int) -> int | None:
    """A value of any JSON type, read loosely: it ends at a `,` or `}` outside strings and brackets."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == '"':
            _, after = _string(s, j)
            if after is None or after == -1:
                return after
            j = after
            continue
        if c in "[{":
            depth += 1
        elif c in "]}" and depth:
            depth -= 1
        elif c in ",}" and depth == 0:
            return j if j > i else -1
        j += 1
    return None
