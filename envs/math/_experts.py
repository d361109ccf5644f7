"""The two scripted experts of `math`: a reasoner that solves by hand and a coder that runs a program."""

from __future__ import annotations

import random
import re
from typing import Any

from .._react_text import format_action, format_final
from .._types import PolicyRequest, Task, Turn
from ._kinds import KINDS, Kind, Mind


def _kind_of(task: Task) -> Kind | None:
    return KINDS.get(task.data.get("kind", ""))


def reasoner(request: PolicyRequest) -> Turn:
    """Solves by hand in one turn. Exact on small numbers; slips now and then on big ones."""
    task = request.task
    kind = _kind_of(task)
    if kind is None:
        return Turn(content=format_final("I do not recognise this kind of problem.", "0"))
    mind = Mind(random.Random(f"reasoner:{task.id}"))
    answer = kind.solve(task.data["params"], mind)
    thought = "I'll work it out by hand, step by step.\n" + "\n".join(mind.lines) + f"\nSo the answer is {answer}."
    return Turn(content=format_final(thought, answer))


def coder(request: PolicyRequest) -> Turn:
    """Turn 1 writes and runs a program; turn 2 answers with what it printed."""
    task = request.task
    if not any(m.get("role") == "assistant" for m in request.messages):
        kind = _kind_of(task)
        if kind is None:
            return Turn(content=format_final("I do not recognise this kind of problem.", "0"))
        params = task.data["params"]
        thought = f"Plan: {kind.plan(params)}. Python does the arithmetic exactly, so I'll run a short program."
        return Turn(content=format_action(thought, "python", {"code": kind.program(params)}))
    output = _last_observation(request.messages)
    # only lines that are a bare number: tracebacks and exit codes hold digits too
    numbers = re.findall(r"^\s*(-?\d+(?:/\d+)?)\s*$", output, re.MULTILINE)
    if not numbers:
        return Turn(content=format_final(f"The program gave no number:\n{output}\nI have no result.", "unknown"))
    if "Traceback" in output or "[exit code" in output or "[timed out]" in output:
        thought = f"The program failed; the last number it showed is {numbers[-1]}, the best I have."
    else:
        thought = f"The program printed {numbers[-1]}, so that is the answer."
    return Turn(content=format_final(thought, numbers[-1]))


def _last_observation(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "tool":
            return str(m.get("content") or "")
        if m.get("role") == "user" and str(m.get("content", "")).startswith("Observation:"):
            return str(m["content"])[len("Observation:"):]
    return ""
