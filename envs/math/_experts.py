"""The two scripted experts of `math`: a reasoner that solves by hand and a coder that runs a program."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from .._react_text import ParsedAction, format_action, format_final, parse_react
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
    """Runs its program, then answers with what the program printed.

    It acts from any state of an episode, not only along its own path: it looks back over what the
    episode has shown so far for a run of its own program (whoever made the call), answers from the
    latest one, and runs the program when there is none (after another policy's turns, say).
    """
    task = request.task
    kind = _kind_of(task)
    if kind is None:
        return Turn(content=format_final("I do not recognise this kind of problem.", "0"))
    params = task.data["params"]
    output = _output_of(request.messages, kind.program(params))
    if output is None:
        thought = f"Plan: {kind.plan(params)}. Python does the arithmetic exactly, so I'll run a short program."
        if any(m.get("role") == "assistant" for m in request.messages):
            thought = "Nothing so far has run a program that computes this, so I start from the problem. " + thought
        return Turn(content=format_action(thought, "python", {"code": kind.program(params)}))
    # only lines that are a bare number: tracebacks and exit codes hold digits too
    numbers = re.findall(r"^\s*(-?\d+(?:/\d+)?)\s*$", output, re.MULTILINE)
    if not numbers:
        return Turn(content=format_final(f"The program gave no number:\n{output}\nI have no result.", "unknown"))
    if "Traceback" in output or "[exit code" in output or "[timed out]" in output:
        thought = f"The program failed; the last number it showed is {numbers[-1]}, the best I have."
    else:
        thought = f"The program printed {numbers[-1]}, so that is the answer."
    return Turn(content=format_final(thought, numbers[-1]))


def _output_of(messages: list[dict[str, Any]], program: str) -> str | None:
    """What the latest run of `program` printed, or None when the episode holds no run of it."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "assistant" and program in _python_calls(m):
            return _observation_after(messages, i)
    return None


def _python_calls(message: dict[str, Any]) -> list[str]:
    """The code of each python call an assistant message makes, in ReAct text or as native tool calls."""
    codes = []
    parsed = parse_react(str(message.get("content") or ""))
    if isinstance(parsed, ParsedAction) and parsed.tool == "python" and isinstance(parsed.arguments, dict):
        codes.append(parsed.arguments.get("code"))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        if fn.get("name") == "python":
            try:
                codes.append(json.loads(fn.get("arguments") or "{}").get("code"))
            except (ValueError, AttributeError):
                continue
    return codes


def _observation_after(messages: list[dict[str, Any]], i: int) -> str | None:
    """The observation that answered assistant message i; None when it has none (yet)."""
    for m in messages[i + 1:]:
        if m.get("role") == "tool":
            return str(m.get("content") or "")
        if m.get("role") == "user" and str(m.get("content", "")).startswith("Observation:"):
            return str(m["content"])[len("Observation:"):]
        if m.get("role") == "assistant":
            break
    return None
