"""Why an episode failed: one kind per failed trajectory, by the furthest stage the agent reached.

    bad_format            no turn parsed as an action or a final answer
    tool_misuse           well-formed turns, but no tool call that the env accepted (unknown tool, bad arguments)
    numbers_copied_wrong  accepted calls, but each used a number that neither the task nor an observation showed
    wrong_program         the numbers were copied right, but no call's output held the expected answer
    wrong_final_answer    a call's output held the expected answer (or no answer is known), yet the final
                          answer was wrong or missing
    out_of_turns          accepted calls, no answer known to check them against (a game, verified by its state),
                          and the episode hit its turn limit unfinished (or was stopped in a loop): a loop or a
                          wander

A small student copies numbers; it cannot compute them. So a number in a tool call that the episode
never showed is a copying error, told apart from a program that is wrong in its logic.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterable

from ._schema import Message, Trajectory

FAILURE_KINDS = ("bad_format", "tool_misuse", "numbers_copied_wrong", "wrong_program", "wrong_final_answer",
                 "out_of_turns")
_CUT_OFF = "max steps ({}) reached; "  # how an episode cut off at its turn limit begins its outcome detail
_LOOPED = "stopped in a loop: the same turn and observation {} times in a row; "  # --stop-on-repeat's cut
PARSE_ERROR_TOOL = "parse_error"  # the tool-message name the agent loop gives a turn it could not parse
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_CRASH_SIGNS = ("Traceback (most recent call last)", "[exit code", "[timed out]")  # the sandbox's wording
_TRIVIAL = {"0", "1", "-1"}  # loop bounds and indices, not copied data


def numbers_in(text: str) -> set[str]:
    return {n.lstrip("-") for n in _NUMBER.findall(text)}


def failure_kind(traj: Trajectory, expected: str | None = None) -> str | None:
    """The failure kind of `traj` (None when it succeeded); `expected` is the task's answer, if known."""
    if traj.outcome.success:
        return None
    stage = 0
    shown = set().union(*(numbers_in(m.content) for m in traj.messages if m.role in ("system", "user")))
    for call, observation in _calls(traj.messages):
        if call is None:
            continue  # a turn that did not parse
        stage = max(stage, 1)
        if observation is None or _rejected(observation):
            continue
        stage = max(stage, 2)
        if numbers_in(call) - shown - _TRIVIAL:
            shown |= numbers_in(observation.content)
            continue
        stage = max(stage, 3)
        if not _crashed(observation.content) and (expected is None or expected.strip() in numbers_in(
                observation.content)):
            stage = 4
        shown |= numbers_in(observation.content)
    if stage == 0 and traj.outcome.final_answer is not None:
        return "wrong_final_answer"  # answered without a call (by hand), wrongly
    if stage >= 2 and expected is None and traj.outcome.final_answer is None and was_cut_off(traj.outcome.detail):
        return "out_of_turns"
    return FAILURE_KINDS[stage]


def cut_off_detail(max_steps: int, detail: str | None) -> str:
    """The outcome detail of an episode the loop cut off at `max_steps` turns."""
    return _CUT_OFF.format(max_steps) + (detail or "")


def looped_detail(repeats: int, detail: str | None) -> str:
    """The outcome detail of an episode the loop stopped after `repeats` identical turns and observations."""
    return _LOOPED.format(repeats) + (detail or "")


def was_cut_off(detail: str | None) -> bool:
    """Whether the loop ended the episode unfinished: at its turn limit, or stopped in a loop."""
    return (detail or "").startswith((_CUT_OFF.split("{")[0], _LOOPED.split("{")[0]))


def _crashed(text: str) -> bool:
    return any(sign in text for sign in _CRASH_SIGNS)


def _rejected(observation: Message) -> bool:
    return observation.name == PARSE_ERROR_TOOL or (
        observation.content.startswith("Error:") and "Valid tools:" in observation.content)


def _calls(messages: list[Message]) -> Iterable[tuple[str | None, Message | None]]:
    """(the call's argument text, its observation) for each tool observation; None for an unparsed turn."""
    last_args: list[str] = []
    for m in messages:
        if m.role == "assistant":
            last_args = [c.function.arguments for c in m.tool_calls or []] or [_react_input(m.content)]
        elif m.role == "tool":
            if m.name == PARSE_ERROR_TOOL:
                yield None, m
                continue
            yield (last_args.pop(0) if last_args else ""), m


def _react_input(text: str) -> str:
    marker = text.find("Action Input:")
    if marker < 0:
        return ""
    raw = text[marker + len("Action Input:"):].strip()
    try:  # the decoded code, so that "\n" escapes are not read as numbers
        return " ".join(str(v) for v in json.JSONDecoder().raw_decode(raw)[0].values())
    except (ValueError, AttributeError):
        return raw


def actions(traj: Trajectory) -> list[tuple[str, str]]:
    """The episode's tool calls in order: (tool name, argument text); a turn that did not parse is
    (PARSE_ERROR_TOOL, "")."""
    return [(PARSE_ERROR_TOOL, "") if call is None else (obs.name or "", " ".join(call.split()))
            for call, obs in _calls(traj.messages)]


def failure_counts(pairs: Iterable[tuple[Trajectory, str | None]]) -> dict[str, int]:
    """Failure kind -> number of failed episodes, every kind listed (0 when none)."""
    counts = Counter(kind for traj, expected in pairs if (kind := failure_kind(traj, expected)) is not None)
    return {kind: counts.get(kind, 0) for kind in FAILURE_KINDS}


def as_row(counts: dict[str, Any]) -> str:
    """`bad_format 3 · wrong_program 2`: the kinds that occurred, most frequent first."""
    shown = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: -kv[1])
    return " · ".join(f"{k} {v}" for k, v in shown) or "–"
