"""The two scripted experts of `math`: a reasoner that solves by hand and a coder that runs a program."""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import random
import re
from dataclasses import dataclass
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


def coder(request: PolicyRequest, slips: bool = False, trusting: bool = False) -> Turn:
    """Runs its program, then answers with what the program printed. With a skill box mounted, it first calls a
    listed box tool that computes its program, when there is one (`box_tool_call`), and answers with what the
    tool returned; a box tool that fails sends it back to its program.

    With `slips` (the `slipping-coder` expert) it makes a small student's commonest box slip in half the
    episodes (by task id) where the slip exists: it copies the task's expression into an expression tool as
    the task writes it (`(5 * 12 + 16) mod 3`, `4027 + 552 ÷ 8`), reads the tool's error, and calls again in
    Python's notation, naming what it translated (a tool that reads the task's notation, as mined ones now do,
    just answers). Train on such runs with `--mask-failed-calls`: the recovery is learned, the slip is context.

    It acts from any state of an episode, not only along its own path: it looks back over what the
    episode has shown so far for a run of its own program (whoever made the call, whitespace aside), or of
    any program that printed exactly what its own prints (it knows that value: `pow(71, 9, 69)` and
    `71 ** 9 % 69` agree), answers from the latest one, and runs its program when there is none (after
    another policy's wrong program, say).

    With `trusting` (the `trusting-coder` expert) it acts only on what the episode shows, as a student can: after
    any program that printed a number and did not fail it answers with that number (it does not check the value),
    and after a failed one it names the failure and runs its own program. On its own path it is the coder; as a
    DAgger teacher its labels depend on nothing the student cannot see (the coder's "run my program again" after a
    wrong number does).
    """
    task = request.task
    kind = _kind_of(task)
    if kind is None:
        return Turn(content=format_final("I do not recognise this kind of problem.", "0"))
    params = task.data["params"]
    output, source = _output_of(request.messages, kind.program(params), task.data.get("answer")), "program"
    failed = None
    if output is None and trusting:
        output, failed = _latest_run(request.messages)
    if output is None and failed is not None:
        thought = (f"The last program {failed}, so I start again from the problem. "
                   f"Plan: {kind.plan(params)}. Python does the arithmetic exactly, so I'll run a short program.")
        return Turn(content=format_action(thought, "python", {"code": kind.program(params)}))
    if output is None:
        output, source = _box_output(request), "tool"
    tried = _box_tried(request.messages)
    wanted = output is None and (slips or not tried)  # the plain coder tries a box tool once
    fit = box_tool_call(request.tools, kind.program(params), task.prompt) if wanted else None
    if fit is not None and not tried:  # a box tool computes this program: call it
        example = _cited_example(request.tools, fit[0])
        how = f". {example} so I call it the same way with this" if example else ", so I'll call it with the"
        thought = (f"The listed tool {fit[0]} computes exactly this problem's calculation{how} problem's numbers "
                   "instead of writing a program.")
        slip = _slip(task, fit) if slips else None
        return Turn(content=format_action(thought, fit[0], slip or fit[1]))
    if fit is not None and slips and (again := _recovery(request, fit)) is not None:
        return again
    if output is None:
        thought = f"Plan: {kind.plan(params)}. Python does the arithmetic exactly, so I'll run a short program."
        if any(m.get("role") == "assistant" for m in request.messages):
            thought = "Nothing so far has run a program that computes this, so I start from the problem. " + thought
        return Turn(content=format_action(thought, "python", {"code": kind.program(params)}))
    numbers = _NUMBER_LINE.findall(output)
    if not numbers:
        return Turn(content=format_final(f"The program gave no number:\n{output}\nI have no result.", "unknown"))
    if _FAILED.search(output):
        thought = f"The program failed; the last number it showed is {numbers[-1]}, the best I have."
    else:
        thought = f"The {source} {'printed' if source == 'program' else 'returned'} {numbers[-1]}, so that is the answer."
    return Turn(content=format_final(thought, numbers[-1]))


def trusting_coder(request: PolicyRequest) -> Turn:
    """The coder acting on what the episode shows (see `coder`): the DAgger teacher whose labels a student can learn."""
    return coder(request, trusting=True)


def _latest_run(messages: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(what the latest python run printed, None) when it printed a bare number and did not fail; (None, what went
    wrong, as "failed: <its last line>" or "printed no number") otherwise; (None, None) when no program has run."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "assistant" or not _python_calls(messages[i]):
            continue
        seen = _observation_after(messages, i)
        if seen is None:
            return None, None
        lines = [line.strip() for line in seen.splitlines() if line.strip() and not _EXIT.fullmatch(line.strip())]
        if _FAILED.search(seen):
            return None, f"failed: {lines[-1][:120]}" if lines else "failed"
        if _NUMBER_LINE.search(seen):
            return seen, None
        return None, "printed no number"
    return None, None


_FAILED = re.compile(r"Traceback|\[exit code|\[timed out\]")  # a program that failed in the sandbox
_EXIT = re.compile(r"\[exit code -?\d+\]")
# only lines that are a bare number: tracebacks and exit codes hold digits too
_NUMBER_LINE = re.compile(r"^\s*(-?\d+(?:/\d+)?)\s*$", re.MULTILINE)


def slipping_coder(request: PolicyRequest) -> Turn:
    """The coder with its box slips (see `coder`): runs whose episodes recover from a failed box call."""
    return coder(request, slips=True)


# ---- the slipping coder: a copied expression, its error, the call in Python's notation ------------

_WRITTEN = re.compile(r"[\d\s()+\-*/%^×÷−]+|[\d\s()+\-*/%^×÷−]*\bmod\b[\d\s()+\-*/%^×÷−]*")


def _slip(task: Task, fit: tuple[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The expression tool's arguments with the task's expression as the task writes it, where that differs from
    Python's; in half such tasks (by id), None in the rest and for any other tool."""
    expression = next(iter(fit[1].values())) if len(fit[1]) == 1 else None
    if not isinstance(expression, str) or int(hashlib.sha256(f"slip:{task.id}".encode()).hexdigest()[:8], 16) % 2:
        return None
    written = _as_written(task.prompt, expression)
    return {next(iter(fit[1])): written} if written and written.split() != expression.split() else None


def _as_written(prompt: str, expression: str) -> str | None:
    """The stretch of `prompt` from the expression's first number to its last, with the brackets around them;
    None when the numbers are not there in order, or what lies between them is not an expression."""
    numbers, pos, start = re.findall(r"\d+", expression), 0, None
    for number in numbers:
        found = re.compile(rf"(?<!\d){number}(?!\d)").search(prompt, pos)
        if found is None:
            return None
        start, pos = found.start() if start is None else start, found.end()
    if start is None:
        return None
    while start > 0 and prompt[start - 1] == "(":
        start -= 1
    while prompt[start:pos].count("(") > prompt[start:pos].count(")") and prompt[pos:pos + 1] == ")":
        pos += 1
    text = prompt[start:pos]
    return text if text.count("(") == text.count(")") and _WRITTEN.fullmatch(text) else None


def _recovery(request: PolicyRequest, fit: tuple[str, dict[str, Any]]) -> Turn | None:
    """After its own slip failed (the latest box call is the fitting tool, with other arguments, and no call
    with the right ones yet): the call again in Python's notation, saying what changed."""
    calls = [c for m in request.messages if m.get("role") == "assistant" and (c := _box_call(m))]
    if not calls or calls[-1][0] != fit[0] or any(args == fit[1] for _, args in calls):
        return None
    (wrote,), (right,) = calls[-1][1].values(), fit[1].values()
    changes = ", ".join(f"{b} for {a}" for a, b in _changed(str(wrote), str(right)))
    example = _cited_example(request.tools, fit[0])
    how = f" {example} as Python writes it." if example else ""
    thought = (f"The tool could not read the expression as the problem writes it: Python writes {changes}.{how} "
               f"I call {fit[0]} again with the expression in Python's notation.")
    return Turn(content=format_action(thought, fit[0], fit[1]))


def _box_call(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    parsed = parse_react(str(message.get("content") or ""))
    if isinstance(parsed, ParsedAction) and parsed.tool != "python" and isinstance(parsed.arguments, dict):
        return parsed.tool, parsed.arguments
    return None


def _changed(wrote: str, right: str) -> list[tuple[str, str]]:
    """The pieces of `wrote` that `right` writes otherwise, each once: [("÷", "//"), ("mod", "%")]."""
    a, b = re.findall(r"\d+|[a-z]+|\S", wrote), re.findall(r"\d+|[a-z]+|//|\*\*|\S", right)
    pairs = []
    for tag, i, j, k, m in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        pair = (" ".join(a[i:j]), " ".join(b[k:m]))
        if tag != "equal" and pair not in pairs:
            pairs.append(pair)
    return pairs


# ---- box-aware: a mounted tool that computes the coder's program ----------------------------------
# The coder reads the tool list as the prompt shows it. A tool mined from programs documents, per parameter,
# the program line its value came from (`from `pow(71, 9, 69)`; e.g. 71`, `from `terms = [8, 15]`; e.g.
# [8, 15]`), or takes a whole arithmetic expression as a string (`e.g. "(6 + 25) * 8"`). It fits when every
# parameter's line has the shape of a line of the coder's own program (literals blanked, `return x` read as
# `print(x)`); each argument is the coder's literal in the place the example value held. Of several fitting
# tools, the one whose description shares most words with the task is called (list order breaks ties).

_ORIGIN = re.compile(r"from `([^`]*)`")
_LISTED_EXAMPLE = re.compile(r'Examples?: ("(?:[^"\\]|\\.)*") -> (\{.*?\})(?:; "|$)')
_EXAMPLE = re.compile(r"e\.g\. (.+)$")
_WORDS = re.compile(r"[a-z]+")


def _cited_example(tools: list[Any], name: str) -> str:
    """The first example call the list shows for tool `name` (`--skills-examples`), as a sentence; "" when none.
    Citing it ties the call's arguments to the example in the student's context, not to the task's notation."""
    spec = next((t for t in tools if t.name == name), None)
    found = _LISTED_EXAMPLE.search(spec.description) if spec is not None else None
    return f"Its example turns {found.group(1)} into {found.group(2)}," if found else ""


def box_tool_call(tools: list[Any], program: str, task: str = "") -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) of the listed tool that computes `program`, or None; the one whose description
    is closest to `task` in words when several do."""
    lines = [line for text in program.splitlines() if (line := _line(text)) is not None]
    fits = [(spec, args) for spec in tools if (args := _fit(spec, lines)) is not None]
    if not fits:
        return None
    asked = set(_WORDS.findall(task.lower()))
    spec, args = max(fits, key=lambda f: len(asked & set(_WORDS.findall(f[0].description.lower()))))
    return spec.name, args


@dataclass(frozen=True)
class _Line:
    shape: str  # the line's AST with its literals blanked
    values: list[Any]  # its literals (numbers, strings, lists of numbers) in source order
    printed: ast.expr | None  # what it prints, for a print line


def _line(text: str) -> _Line | None:
    """A program line as the fit compares it (a block header without its body, `return x` as `print(x)`);
    None when the line does not parse on its own."""
    src = text.strip()
    try:
        node = ast.parse(src + " pass" if src.endswith(":") else src).body[0]
    except (SyntaxError, IndexError):
        return None
    if isinstance(node, ast.Return) and node.value is not None:
        node = ast.Expr(ast.Call(ast.Name("print"), [node.value], []))
    if isinstance(node, (ast.While, ast.If, ast.For)):
        node.body, node.orelse = [ast.Pass()], []
    printed = node.value.args[0] if isinstance(node, ast.Expr) and _prints(node.value) else None  # type: ignore
    found: list[tuple[int, int, Any]] = []
    blanked = _Blank(found).visit(ast.parse(ast.unparse(node)).body[0])
    return _Line(ast.dump(blanked), [v for *_, v in sorted(found, key=lambda f: f[:2])], printed)


def _prints(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print" and len(node.args) == 1


class _Blank(ast.NodeTransformer):
    """Replaces each literal (a number, a string, a list of numbers) by one placeholder, collecting it."""

    def __init__(self, found: list[tuple[int, int, Any]]):
        self.found = found

    def visit_Constant(self, n: ast.Constant) -> ast.AST:
        if type(n.value) not in (int, float, str):
            return n
        self.found.append((n.lineno, n.col_offset, n.value))
        return ast.Name(id="N")

    def visit_List(self, n: ast.List) -> ast.AST:
        if n.elts and all(isinstance(e, ast.Constant) and type(e.value) in (int, float) for e in n.elts):
            self.found.append((n.lineno, n.col_offset, [e.value for e in n.elts]))  # type: ignore[attr-defined]
            return ast.Name(id="N")
        return self.generic_visit(n)


def _fit(spec: Any, lines: list[_Line]) -> dict[str, Any] | None:
    props = spec.parameters.get("properties", {})
    notes = [str(p.get("description", "")) for p in props.values()]
    if len(props) == 1 and next(iter(props.values())).get("type") == "string" and not _ORIGIN.search(notes[0]):
        return _expression_fit(next(iter(props)), notes[0], lines)
    if not props or not all(_ORIGIN.search(n) and _EXAMPLE.search(n) for n in notes):
        return None
    args: dict[str, Any] = {}
    taken: dict[str, tuple[_Line, _Line, set[int]]] = {}  # shape -> (origin, own line, places given to params)
    for name, note in zip(props, notes):
        origin = _line(_ORIGIN.search(note).group(1))  # type: ignore[union-attr]
        example = _literal(_EXAMPLE.search(note).group(1))  # type: ignore[union-attr]
        mine = next((ln for ln in lines if origin is not None and ln.shape == origin.shape), None)
        if origin is None or example is None or mine is None:
            return None
        used = taken.setdefault(origin.shape, (origin, mine, set()))[2]
        place = next((i for i, v in enumerate(origin.values) if v == example and i not in used), None)
        if place is None:
            return None
        used.add(place)
        args[name] = mine.values[place]
    # a literal the tool keeps (not a parameter) must be the program's too: range(1, n + 1) is not range(0, n)
    kept = all(o.values[i] == m.values[i] for o, m, used in taken.values()
               for i in range(len(o.values)) if i not in used)
    return args if kept else None


def _expression_fit(name: str, note: str, lines: list[_Line]) -> dict[str, Any] | None:
    """A tool that evaluates an arithmetic expression string fits a one-line program that prints one."""
    example = _literal(m.group(1)) if (m := _EXAMPLE.search(note)) else None
    try:
        shown = ast.parse(example, mode="eval").body if isinstance(example, str) else None
    except SyntaxError:
        return None
    printed = lines[0].printed if len(lines) == 1 else None
    if shown is not None and printed is not None and _arithmetic(shown) and _arithmetic(printed):
        return {name: ast.unparse(printed)}
    return None


def _literal(text: str) -> Any:
    """An example value as a parameter note writes it (JSON or a Python literal); None when it is neither."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None


def _arithmetic(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return _arithmetic(node.operand)
    return isinstance(node, ast.BinOp) and _arithmetic(node.left) and _arithmetic(node.right)


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
