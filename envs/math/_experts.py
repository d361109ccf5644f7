"""The two scripted experts of `math`: a reasoner that solves by hand and a coder that runs a program."""

from __future__ import annotations

import ast
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
    """Runs its program, then answers with what the program printed. With a skill box mounted, it first calls a
    listed box tool that computes its program, when there is one (`box_tool_call`), and answers with what the
    tool returned; a box tool that fails sends it back to its program.

    It acts from any state of an episode, not only along its own path: it looks back over what the
    episode has shown so far for a run of its own program (whoever made the call, whitespace aside), or of
    any program that printed exactly what its own prints (it knows that value: `pow(71, 9, 69)` and
    `71 ** 9 % 69` agree), answers from the latest one, and runs its program when there is none (after
    another policy's wrong program, say).
    """
    task = request.task
    kind = _kind_of(task)
    if kind is None:
        return Turn(content=format_final("I do not recognise this kind of problem.", "0"))
    params = task.data["params"]
    output, source = _output_of(request.messages, kind.program(params), task.data.get("answer")), "program"
    if output is None:
        output, source = _box_output(request), "tool"
    if output is None and not _box_tried(request.messages):
        fit = box_tool_call(request.tools, kind.program(params))
        if fit is not None:  # a mounted box tool that computes this program: call it instead of writing code
            thought = (f"The listed tool {fit[0]} computes exactly this problem's calculation, so I'll call it "
                       "with the problem's numbers instead of writing a program.")
            return Turn(content=format_action(thought, fit[0], fit[1]))
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
        thought = f"The {source} {'printed' if source == 'program' else 'returned'} {numbers[-1]}, so that is the answer."
    return Turn(content=format_final(thought, numbers[-1]))


# ---- box-aware: a mounted tool that computes the coder's program ----------------------------------
# The coder reads the tool list as the prompt shows it. A tool mined from programs documents, per parameter,
# the expression its value came from (`from `pow(71, 9, 69)`; e.g. 71`), or takes a whole arithmetic
# expression as a string (`e.g. "(6 + 25) * 8"`). It fits when that expression has the shape of the
# coder's own printed expression; its arguments are the coder's numbers in the same places.

_ORIGIN = re.compile(r"from `([^`]*)`")
_EXAMPLE = re.compile(r"e\.g\. (.+)$")


def box_tool_call(tools: list[Any], program: str) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) of the first listed tool that computes `program`'s printed expression, or None."""
    printed = _printed(program)
    if printed is None:
        return None
    for spec in tools:
        args = _fit(spec, printed)
        if args is not None:
            return spec.name, args
    return None


def _printed(program: str) -> ast.expr | None:
    """The expression the program's last statement prints."""
    try:
        last = ast.parse(program).body[-1]
    except (SyntaxError, IndexError):
        return None
    call = last.value if isinstance(last, ast.Expr) else None
    if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "print" and len(call.args) == 1:
        return call.args[0]
    return None


def _fit(spec: Any, printed: ast.expr) -> dict[str, Any] | None:
    props = spec.parameters.get("properties", {})
    notes = [str(p.get("description", "")) for p in props.values()]
    if len(props) == 1 and next(iter(props.values())).get("type") == "string":
        example = _EXAMPLE.search(notes[0])
        try:
            shown = ast.parse(json.loads(example.group(1)), mode="eval").body if example else None
        except (ValueError, SyntaxError):
            return None
        if shown is not None and _arithmetic(shown) and _arithmetic(printed):
            return {next(iter(props)): ast.unparse(printed)}
        return None
    origins = {m.group(1) for m in map(_ORIGIN.search, notes) if m}
    if not props or len(origins) != 1 or len(notes) != sum(bool(_ORIGIN.search(n)) for n in notes):
        return None
    try:
        origin = ast.parse(origins.pop().removeprefix("return "), mode="eval").body
    except SyntaxError:
        return None
    numbers = _numbers(printed)
    if _shape(origin) != _shape(printed) or len(numbers) != len(props):
        return None
    return dict(zip(props, numbers))


def _arithmetic(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return _arithmetic(node.operand)
    return isinstance(node, ast.BinOp) and _arithmetic(node.left) and _arithmetic(node.right)


def _numbers(node: ast.AST) -> list[Any]:
    """The number literals of an expression, in source order."""
    found = [n for n in ast.walk(node) if isinstance(n, ast.Constant) and type(n.value) in (int, float)]
    return [n.value for n in sorted(found, key=lambda n: (n.lineno, n.col_offset))]


def _shape(node: ast.AST) -> str:
    """The expression with every number literal replaced by one placeholder."""
    class Blank(ast.NodeTransformer):
        def visit_Constant(self, n: ast.Constant) -> ast.AST:
            return ast.Name(id="N") if type(n.value) in (int, float) else n

    return ast.dump(Blank().visit(ast.parse(ast.unparse(node), mode="eval")))


def _box_tried(messages: list[dict[str, Any]]) -> bool:
    """Whether the episode already called a tool other than python (the coder tries a box tool once)."""
    return any(_called_tools(m) - {"python"} for m in messages if m.get("role") == "assistant")


def _box_output(request: PolicyRequest) -> str | None:
    """What the latest call of a listed non-python tool returned, when it returned a bare number."""
    for i in range(len(request.messages) - 1, -1, -1):
        m = request.messages[i]
        if m.get("role") == "assistant" and _called_tools(m) - {"python"}:
            seen = _observation_after(request.messages, i)
            return seen if seen is not None and re.fullmatch(r"\s*-?\d+(?:/\d+)?\s*", seen) else None
    return None


def _called_tools(message: dict[str, Any]) -> set[str]:
    parsed = parse_react(str(message.get("content") or ""))
    names = {parsed.tool} if isinstance(parsed, ParsedAction) else set()
    return names | {(c.get("function") or {}).get("name") for c in message.get("tool_calls") or []}


def _output_of(messages: list[dict[str, Any]], program: str, value: str | None = None) -> str | None:
    """What the latest run of `program` printed (or of any program that printed exactly `value`, what
    `program` prints), or None when the episode holds no such run."""
    own = "".join(program.split())
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") != "assistant":
            continue
        codes = ["".join(str(c).split()) for c in _python_calls(m)]
        seen = _observation_after(messages, i) if codes else None
        if own in codes or (value is not None and seen is not None and seen.strip() == value):
            return seen
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
