"""Tool mining (AgentDistill's MCP-Box): reusable tools from the code of successful trajectories.

    candidates     every `python`-style tool call (a `code` argument) of a successful trajectory
    abstraction    lift literals to typed parameters, turn the final print(x) into return x, name and
                   document the function (deterministic; an analyst LLM may write it instead)
    replay         each candidate, run in the sandbox with the lifted values, must print what the
                   original call printed; a candidate that does not is dropped and counted
    clustering     one candidate per normalised AST, then per behaviour on the union of the inputs
                   of candidates with the same signature
    consolidation  a candidate whose calls another (more general) one reproduces is folded into it:
                   by unifying the programs, or, for two tools of one name, by replaying every test
                   of the special one through the general one with a parameter fixed (0 or 1)
    naming         a name says what the tool computes (`evaluate_expression`, `modular_power`,
                   `count_arrangements`), read from the program's idioms; two different tools never
                   share a name, and no name gets a numeric suffix
    support        a kept tool covers at least `min_support` distinct calls; by default
                   `default_min_support(calls)`, which grows with the run (one-off tools go on large runs)

Nothing here runs mined code on the host: every execution goes through a ToolRunner (sandbox).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import itertools
import json
import math
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from trajdistill.envs import PolicyRequest, Task
from trajdistill.envs._react_text import ParsedAction, ParsedFinal, parse_react
from trajdistill.trajectories import Message, Trajectory

from ._box import ToolDraft, ToolResult, ToolRunner, spec_from_source

Listener = Callable[[str, int, int], None]  # (stage, done, total)
CODE_ARGS = ("code", "program", "source")
STRUCTURAL = (-1, 0, 1)  # loop bounds and indices, not task values: only lifted as a whole assignment
ERROR_MARKS = ("Traceback (most recent call last)", "[exit code", "[timed out]", "[killed", "Error:",
               "is not a valid action")
CALL_NAMES = {"comb": "count_combinations", "perm": "count_permutations", "Counter": "count_arrangements",
              "lcm": "least_common_multiple", "gcd": "greatest_common_divisor", "isqrt": "integer_square_root",
              "factorial": "factorial"}
ARG_NAMES = {"comb": ("n", "k"), "perm": ("n", "k"), "pow": ("base", "exponent", "modulus"),
             "range": ("start", "stop", "step"), "factorial": ("n",), "gcd": ("a", "b"), "lcm": ("a", "b")}
CALL_SUMMARIES = {
    "count_combinations": "Count the ways to choose k of n items (a binomial coefficient, via math.comb).",
    "count_permutations": "Count ordered selections of items (via math.perm).",
    "count_arrangements": "Count the distinct arrangements of a multiset, e.g. the letters of a word.",
    "modular_power": "The remainder of base^exponent divided by modulus, exactly (three-argument pow).",
    "count_multiples": "Count the integers in a range divisible by at least one of some divisors.",
    "arithmetic_sequence_term": "The n-th term of an arithmetic sequence (constant difference) from its first terms.",
    "geometric_sequence_term": "The n-th term of a geometric sequence (constant ratio) from its first terms.",
    "recurrence_term": "The n-th term of a sequence defined by a linear recurrence on its previous terms.",
    "evaluate_expression": "Evaluate an arithmetic expression exactly: + - * / // % ** (or ^) and parentheses.",
}
EXPRESSION = "evaluate_expression"
# the one tool every literal arithmetic program becomes: it evaluates the expression it is given, exactly
EXPRESSION_SOURCE = '''import ast
import operator
import re
from fractions import Fraction


def evaluate_expression(expression: str):
    """{summary}

    `/` divides exactly, and a whole result comes back as an integer; `^` is a power, as in 2^10. It reads
    an expression as a person writes it too: `×`, `÷`, `−` and `mod` are `*`, `/`, `-` and `%`.

    Mined from successful trajectories of tasks like: {example}

    Args:
        expression: The expression, with numbers only; e.g. {expression}

    Returns:
        The value of the expression.
    """
    operators = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                 ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in operators:
            return operators[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not an arithmetic expression of numbers: {ast.unparse(node)}")

    python = re.sub(r"\\bmod\\b", "%", expression)
    for sign, op in (("×", "*"), ("÷", "/"), ("−", "-"), ("^", "**")):
        python = python.replace(sign, op)
    result = value(ast.parse(python, mode="eval").body)
    return int(result) if result.denominator == 1 else float(result)
'''
OP_WORDS = {ast.Add: "sum", ast.Sub: "difference", ast.Mult: "product", ast.Div: "quotient",
            ast.FloorDiv: "quotient", ast.Mod: "remainder", ast.Pow: "power"}


# --------------------------------------------------------------------------- steps of a trajectory


@dataclass
class StepRecord:
    """One action of a trajectory and what came back."""

    tool: str
    args: Any
    observation: str
    thought: str = ""
    index: int = 0  # message index of the assistant turn
    failed: bool = False  # the call failed (see `tool_failed`)


def tool_failed(msg: Message | None, kinds_recorded: bool) -> bool:
    """A tool call failed: its message has an error kind. Runs recorded before error kinds existed carry
    none, so for them the sandbox's and env's wording in the output is the sign."""
    if msg is None:
        return False
    return msg.error_kind is not None if kinds_recorded else any(mark in msg.content for mark in ERROR_MARKS)


def trajectory_steps(traj: Trajectory) -> list[StepRecord]:
    """Actions in order, for both ReAct text and native tool calls; a final answer is the last step."""
    msgs = traj.messages
    kinds = any(m.error_kind for m in msgs)
    steps: list[StepRecord] = []
    for i, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        following = _tool_messages(msgs, i)
        if m.tool_calls:
            by_id = {t.tool_call_id: t for t in following if t.tool_call_id}
            for k, call in enumerate(m.tool_calls):
                reply = by_id.get(call.id, following[k] if k < len(following) else None)
                steps.append(StepRecord(call.function.name, _json_or_raw(call.function.arguments),
                                        reply.content if reply else "", m.reasoning or m.content, i,
                                        tool_failed(reply, kinds)))
            continue
        parsed = parse_react(m.content)
        reply = following[0] if following else None
        obs, failed = (reply.content if reply else ""), tool_failed(reply, kinds)
        if isinstance(parsed, ParsedAction):
            steps.append(StepRecord(parsed.tool, parsed.arguments, obs, parsed.thought, i, failed))
        elif isinstance(parsed, ParsedFinal):
            steps.append(StepRecord("final_answer", {"answer": parsed.answer}, "", parsed.thought, i))
        elif following:  # a malformed action: the loop answered with a parse error
            steps.append(StepRecord("(malformed)", m.content[:200], obs, "", i, failed))
        elif m.content.strip():  # a plain reply in native tool mode is the answer
            steps.append(StepRecord("final_answer", {"answer": m.content.strip()}, "", m.reasoning or "", i))
    return steps


def _tool_messages(msgs: list, i: int) -> list:
    out = []
    for m in msgs[i + 1:]:
        if m.role != "tool":
            break
        out.append(m)
    return out


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def task_prompt(traj: Trajectory) -> str:
    for m in traj.messages:
        if m.role == "user":
            return m.content
    return ""


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class SourceCall:
    """One code call of a successful trajectory, with what it printed."""

    run: str
    traj_id: str
    category: str
    prompt: str
    code: str
    observation: str

    @property
    def expected(self) -> str:
        return self.observation.strip()


def source_calls(trajs: list[tuple[str, Trajectory]]) -> list[SourceCall]:
    """Code calls of successful trajectories whose output shows no error."""
    out = []
    for run, traj in trajs:
        if not traj.outcome.success:
            continue
        for step in trajectory_steps(traj):
            code = _code_of(step.args)
            if code is not None and step.observation.strip() and not step.failed:
                out.append(SourceCall(run, traj.id, traj.category or "task", task_prompt(traj), code,
                                      step.observation))
    return out


def _code_of(args: Any) -> str | None:
    if isinstance(args, dict):
        for key in CODE_ARGS:
            if isinstance(args.get(key), str):
                return args[key]
    return None


@dataclass
class Param:
    name: str  # the name in the pattern (stable) -- final names live in Candidate.names
    type: str  # int, float, str, list[int], list[float], list[str]
    example: Any
    origin: str  # the statement it was lifted from


@dataclass
class Candidate:
    name: str
    source: str
    params: list[tuple[str, str]]  # final (name, type) in signature order
    key: str  # normalised AST: equal keys are the same tool
    calls: list[tuple[SourceCall, dict[str, Any]]]  # each source call and the arguments that reproduce it
    pattern: list[ast.stmt] | None = None  # statements with parameters as names, for unification
    pnames: dict[str, str] = field(default_factory=dict)  # pattern name -> final name

    @property
    def signature(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.params)


class AbstractionError(ValueError):
    """A program cannot be turned into a tool (the reason is counted)."""


# --------------------------------------------------------------------------- abstraction


def prepare(code: str) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(imports, statements) with earlier top-level prints dropped and the final print(x) as return x."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        raise AbstractionError("code does not parse") from None
    imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    rest = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom)) and not _docstring(s)]
    if not rest or not _is_print(rest[-1]):
        raise AbstractionError("program does not end with print(value)")
    call = rest[-1].value  # type: ignore[attr-defined]
    if len(call.args) != 1 or call.keywords:
        raise AbstractionError("program does not end with print(value)")
    body = [s for s in rest[:-1] if not _is_print(s)] + [ast.Return(call.args[0])]
    return imports, body


def _docstring(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)


def _is_print(s: ast.stmt) -> bool:
    return (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name)
            and s.value.func.id == "print")


def literal_of(node: ast.AST) -> tuple[Any, str] | None:
    """(value, type) of a liftable literal: a number, a string, or a list of either."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        if isinstance(node.value, (int, float, str)):
            return node.value, type(node.value).__name__
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = literal_of(node.operand)
        if inner and inner[1] in ("int", "float"):
            return -inner[0], inner[1]
    if isinstance(node, ast.List) and node.elts:
        items = [literal_of(e) for e in node.elts]
        if all(i and not i[1].startswith("list") for i in items):
            kinds = {i[1] for i in items}  # type: ignore[index]
            kind = "float" if kinds == {"int", "float"} else kinds.pop() if len(kinds) == 1 else None
            if kind:
                return [i[0] for i in items], f"list[{kind}]"  # type: ignore[index]
    return None


class _Lifter(ast.NodeTransformer):
    """Replace literals with parameter names; whole right-hand sides of top-level assignments always lift."""

    def __init__(self, taken: set[str]):
        self.params: list[Param] = []
        self.taken = set(taken)
        self.context = "x"
        self.statement = ""  # the first line of the top-level statement being lifted
        self.lines: list[tuple[int, int, str]] = []  # (first line, last line, first line's text) per statement
        self.whole = False

    def lift_statement(self, stmt: ast.stmt) -> ast.stmt:
        self.context = _target_name(stmt) or "x"
        # a literal's origin is the innermost statement holding it: a loop body's line, not the loop's header
        self.statement = ast.unparse(stmt).splitlines()[0][:80]
        self.lines = sorted(((s.lineno, s.end_lineno or s.lineno, ast.unparse(s).splitlines()[0][:80])
                             for s in ast.walk(stmt) if isinstance(s, ast.stmt) and hasattr(s, "lineno")),
                            key=lambda ln: ln[1] - ln[0])
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            tgt, val = stmt.targets[0], stmt.value
            if isinstance(tgt, ast.Name) and literal_of(val):
                stmt.value = self._param(val, tgt.id, whole=True)
                return stmt
            if isinstance(tgt, ast.Tuple) and isinstance(val, ast.Tuple) and len(tgt.elts) == len(val.elts):
                val.elts = [self._param(v, t.id, whole=True) if isinstance(t, ast.Name) and literal_of(v)
                            else self.visit(v) for t, v in zip(tgt.elts, val.elts)]
                return stmt
        return self.visit(stmt)

    def _param(self, node: ast.AST, hint: str, whole: bool = False) -> ast.AST:
        lit = literal_of(node)
        if lit is None or (not whole and (lit[0] in STRUCTURAL and lit[1] == "int")):
            return self.generic_visit(node)
        name = self._fresh(hint)
        self.params.append(Param(name, lit[1], lit[0], self._origin(node)))
        return ast.Name(id=name, ctx=ast.Load())

    def _origin(self, node: ast.AST) -> str:
        line = getattr(node, "lineno", -1)
        return next((text for first, last, text in self.lines if first <= line <= last), self.statement)

    def _fresh(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint).strip("_").lower() or "x"
        name, k = base, 0
        while name in self.taken or name in _RESERVED:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def visit_Call(self, node: ast.Call) -> ast.AST:
        fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        names = ARG_NAMES.get(fn, ())
        node.func = self.visit(node.func)
        node.args = [self._param(a, names[i] if i < len(names) else f"{fn}_arg") if literal_of(a)
                     else self._within(a, names[i] if i < len(names) else None) for i, a in enumerate(node.args)]
        node.keywords = [self.visit(k) for k in node.keywords]
        return node

    def _within(self, node: ast.AST, hint: str | None) -> ast.AST:
        """Visit an argument; a literal inside it (`range(1, 70410 + 1)`) is named after the argument."""
        outer, self.context = self.context, hint or self.context
        try:
            return self.visit(node)
        finally:
            self.context = outer

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node.value = self.visit(node.value)  # indices stay: they say where, not what
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        """`len(terms) < 14`: the bound is a count, `n`."""
        if isinstance(node.left, ast.Call) and _callee(node.left) == "len" and len(node.comparators) == 1:
            node.left = self.visit(node.left)
            node.comparators = [self._param(node.comparators[0], "n")]
            return node
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        return self._param(node, self.context)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        return self._param(node, self.context) if literal_of(node) else self.generic_visit(node)

    def visit_List(self, node: ast.List) -> ast.AST:
        return self._param(node, self.context) if literal_of(node) else self.generic_visit(node)


_RESERVED = {"sum", "min", "max", "len", "range", "list", "dict", "set", "int", "str", "float", "print", "pow",
             "abs", "round", "sorted", "map", "zip", "any", "all", "math", "x"}


def _target_name(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    if isinstance(stmt, ast.For) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def lift(body: list[ast.stmt]) -> tuple[list[ast.stmt], list[Param]]:
    """The pattern (statements with parameter names) and its parameters in order of appearance."""
    taken = {n.id for s in body for n in ast.walk(s) if isinstance(n, ast.Name)}
    lifter = _Lifter(taken)
    pattern = [lifter.lift_statement(copy.deepcopy(s)) for s in body]
    return pattern, lifter.params


def normalised_key(pattern: list[ast.stmt], params: list[Param]) -> str:
    """The pattern's AST with parameters and local variables renamed by order of appearance."""
    pmap = {p.name: f"p{i}:{p.type}" for i, p in enumerate(params)}
    stored = [n.id for s in pattern for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    vmap = {name: f"v{i}" for i, name in enumerate(dict.fromkeys(stored)) if name not in pmap}
    tree = copy.deepcopy(ast.Module(body=pattern, type_ignores=[]))
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            n.id = pmap.get(n.id) or vmap.get(n.id) or n.id
        elif isinstance(n, ast.arg):
            n.arg = vmap.get(n.arg, n.arg)
    return ast.dump(tree, annotate_fields=False)


def _fold_header(pattern: list[ast.stmt], params: list[Param]) -> tuple[list[ast.stmt], dict[str, str]]:
    """`n = <param>` at the top level becomes the parameter `n` itself (cosmetic; the pattern is kept)."""
    body, names = copy.deepcopy(pattern), {p.name: p.name for p in params}
    uses = Counter(n.id for s in pattern for n in ast.walk(s) if isinstance(n, ast.Name))
    out: list[ast.stmt] = []
    seen_loads: set[str] = set()
    for stmt in body:
        pairs = _header_pairs(stmt, names, uses)
        if pairs and not any(t in seen_loads or t in names.values() for t, _ in pairs):
            for target, pname in pairs:
                names[pname] = target
            continue
        seen_loads |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        out.append(stmt)
    rename = {old: new for old, new in names.items() if old != new}
    for s in out:
        for n in ast.walk(s):
            if isinstance(n, ast.Name) and n.id in rename:
                n.id = rename[n.id]
    return out, names


def _header_pairs(stmt: ast.stmt, names: dict[str, str], uses: Counter) -> list[tuple[str, str]] | None:
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return None
    tgt, val = stmt.targets[0], stmt.value
    tgts, vals = ([tgt], [val]) if isinstance(tgt, ast.Name) else (
        (tgt.elts, val.elts) if isinstance(tgt, ast.Tuple) and isinstance(val, ast.Tuple) else ([], []))
    if not tgts or len(tgts) != len(vals):
        return None
    pairs = []
    for t, v in zip(tgts, vals):
        if not (isinstance(t, ast.Name) and isinstance(v, ast.Name) and v.id in names and uses[v.id] == 1):
            return None
        pairs.append((t.id, v.id))
    return pairs


def tool_name(category: str, body: list[ast.stmt]) -> str:
    """What the program computes, read from its idioms; `solve_<category>` when none is known."""
    nodes = [n for s in body for n in ast.walk(s)]
    called = {_callee(n): n for n in nodes if isinstance(n, ast.Call)}
    if "pow" in called and len(called["pow"].args) == 3:
        return "modular_power"
    if "factorial" in called and "count" in called:  # n! / (k1! k2! ...) over letter counts
        return "count_arrangements"
    for fn, name in CALL_NAMES.items():  # in priority order: Counter before factorial
        if fn in called:
            return name
    return _counting_name(nodes) or _sequence_name(body) or _ident(f"solve_{category}")


def _callee(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _counting_name(nodes: list[ast.AST]) -> str | None:
    """`sum(1 for x in range(...) if ...)`: a count of the integers that pass a test."""
    for n in nodes:
        if isinstance(n, ast.Call) and _callee(n) == "sum" and n.args and isinstance(n.args[0], ast.GeneratorExp):
            gen = n.args[0]
            if isinstance(gen.elt, ast.Constant) and gen.elt.value == 1 and any(g.ifs for g in gen.generators):
                mods = any(isinstance(x, ast.BinOp) and isinstance(x.op, ast.Mod) for g in gen.generators
                           for c in g.ifs for x in ast.walk(c))
                return "count_multiples" if mods else "count_matching"
    return None


def _sequence_name(body: list[ast.stmt]) -> str | None:
    """`while len(terms) < n: terms.append(rule)`, then the last term: a term of a sequence, named by its rule."""
    loop = next((s for s in body if isinstance(s, ast.While)), None)
    if loop is None:
        return None
    appends = [n for s in loop.body for n in ast.walk(s) if isinstance(n, ast.Call) and _callee(n) == "append"]
    if len(appends) != 1 or not appends[0].args:
        return None
    rule = appends[0].args[0]
    lst = appends[0].func.value if isinstance(appends[0].func, ast.Attribute) else None
    if not isinstance(lst, ast.Name):
        return None
    used = {_index(n) for n in ast.walk(rule) if isinstance(n, ast.Subscript) and getattr(n.value, "id", "") == lst.id}
    ops = {type(n.op) for n in ast.walk(rule) if isinstance(n, ast.BinOp)}
    if used >= {-1, -2} and not used & {0, 1}:
        return "recurrence_term"
    if used >= {0, 1} and ops & {ast.Div, ast.FloorDiv}:
        return "geometric_sequence_term"
    if used >= {0, 1} and ast.Sub in ops:
        return "arithmetic_sequence_term"
    return "sequence_term"


def _index(node: ast.Subscript) -> int | None:
    lit = literal_of(node.slice)
    return lit[0] if lit and lit[1] == "int" else None


def _ident(text: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", text.lower())
    name = re.sub(r"_+", "_", name).strip("_") or "tool"
    return name if not name[0].isdigit() else f"t_{name}"


def render_tool(name: str, imports: list[ast.stmt], body: list[ast.stmt], params: list[tuple[str, str, str]],
                summary: str) -> str:
    """The tool file: imports, then one typed function whose docstring documents every parameter."""
    sig = ", ".join(f"{n}: {t}" for n, t, _ in params)
    doc = [summary, "", "Args:"] + [f"    {n}: {d}" for n, _, d in params] if params else [summary]
    doc += ["", "Returns:", "    The value the original program printed."]
    code = ast.unparse(ast.Module(body=body, type_ignores=[]))
    head = "".join(ast.unparse(i) + "\n" for i in imports)
    docstring = textwrap.indent('"""' + "\n".join(doc).replace('"""', "'''") + '\n"""', "    ").lstrip()
    return (f"{head}{chr(10) * 2 if head else ''}def {name}({sig}):\n    {docstring}\n"
            f"{textwrap.indent(code, '    ')}\n")


def is_expression(node: ast.AST) -> bool:
    """An arithmetic expression of number literals only, with at least one operator."""
    def ok(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return type(n.value) in (int, float)
        if isinstance(n, ast.UnaryOp):
            return isinstance(n.op, (ast.USub, ast.UAdd)) and ok(n.operand)
        return isinstance(n, ast.BinOp) and type(n.op) in OP_WORDS and ok(n.left) and ok(n.right)

    return isinstance(node, ast.BinOp) and ok(node)


def expression_candidate(call: SourceCall, expr: ast.expr) -> Candidate:
    """A program that only prints a literal expression is a call of `evaluate_expression` with that expression."""
    text = ast.unparse(expr)
    fill = {"{summary}": CALL_SUMMARIES[EXPRESSION], "{expression}": _doc_text(json.dumps(text)),
            "{example}": _doc_text(_clip(call.prompt, 160))}
    source = re.sub("|".join(map(re.escape, fill)), lambda m: fill[m.group()], EXPRESSION_SOURCE)
    return Candidate(EXPRESSION, source, [("expression", "str")], EXPRESSION, [(call, {"expression": text})])


def _doc_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', "'''")


def abstract(call: SourceCall) -> Candidate:
    """The deterministic abstraction of one code call. Raises AbstractionError with the reason."""
    imports, body = prepare(call.code)
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None \
            and is_expression(body[0].value):
        return expression_candidate(call, body[0].value)
    pattern, params = lift(body)
    if not params:
        raise AbstractionError("no literals to lift")
    folded, names = _fold_header(pattern, params)
    name = tool_name(call.category, folded)
    summary = CALL_SUMMARIES.get(name, f"Compute the answer to one kind of {call.category} problem, exactly.")
    summary += f"\n\nMined from a successful trajectory of a task like: {_clip(call.prompt, 160)}"
    final = [(names[p.name], p.type, f"{_describe(p)}") for p in params]
    source = render_tool(name, imports, folded, final, summary)
    args = {names[p.name]: p.example for p in params}
    return Candidate(name, source, [(n, t) for n, t, _ in final], normalised_key(pattern, params),
                     [(call, args)], pattern, {p.name: names[p.name] for p in params})


def _describe(p: Param) -> str:
    return f"{p.type.replace('list[', 'list of ').rstrip(']')} from `{p.origin}`; e.g. {json.dumps(p.example)}"


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- unification (generality)


def unify(pattern: list[ast.stmt], concrete: list[ast.stmt], params: set[str]) -> dict[str, Any] | None:
    """Parameter values that turn `pattern` into `concrete`, or None when they differ in structure."""
    binding: dict[str, Any] = {}
    return binding if _unify(pattern, concrete, params, binding) else None


def _unify(p: Any, c: Any, params: set[str], b: dict[str, Any]) -> bool:
    if isinstance(p, list):
        return isinstance(c, list) and len(p) == len(c) and all(_unify(x, y, params, b) for x, y in zip(p, c))
    if isinstance(p, ast.Name) and p.id in params:
        lit = literal_of(c)
        if lit is None or (p.id in b and b[p.id] != lit[0]):
            return False
        b[p.id] = lit[0]
        return True
    if isinstance(p, ast.AST):
        if type(p) is not type(c):
            return False
        return all(_unify(getattr(p, f, None), getattr(c, f, None), params, b) for f in p._fields
                   if f not in ("ctx", "type_comment"))
    return p == c and type(p) is type(c)


# --------------------------------------------------------------------------- the pipeline


@dataclass
class ToolMining:
    tools: list[ToolDraft]
    calls: int  # source code calls seen
    candidates: int
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    merged: int = 0  # candidates folded into another by dedupe, clustering or consolidation
    min_support: int = 1

    @property
    def skills(self) -> list:
        return []

    def summary(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in self.dropped.most_common()) or "none"
        return (f"{len(self.tools)} tools kept from {self.candidates} candidates ({self.calls} code calls); "
                f"{self.merged} merged; min support {self.min_support}; dropped: {why}")

    def report(self) -> dict[str, Any]:
        return {"code_calls": self.calls, "candidates": self.candidates, "kept": len(self.tools),
                "merged": self.merged, "min_support": self.min_support, "dropped": dict(self.dropped)}


def default_min_support(calls: int) -> int:
    """Distinct calls a tool must cover when the user sets none: one per order of magnitude of the run beyond
    the first, i.e. 1 below 100 code calls, 2 up to 999, 3 up to 9,999. A small run still yields tools; on a
    large one a program seen once is a one-off, not a reusable tool."""
    return max(1, int(math.log10(calls))) if calls > 0 else 1


class _Replay:
    """Runs candidate code through the sandbox runner, caching results by (source, args)."""

    def __init__(self, runner: ToolRunner):
        self.runner = runner
        self.cache: dict[tuple[str, str], ToolResult] = {}

    async def run_all(self, cand: Candidate, calls: list[dict[str, Any]]) -> list[ToolResult]:
        """Results for every argument set; the ones not cached run in one sandbox exec."""
        keys = [(cand.source, json.dumps(args, sort_keys=True)) for args in calls]
        todo = {k: args for k, args in zip(keys, calls) if k not in self.cache}
        if todo:
            results = await self.runner.run_many(cand.source, cand.name, list(todo.values()))
            for key, args, res in zip(todo, todo.values(), results):
                if not res.ok and "timed out" in res.error:  # a loaded machine, not the code: try once more
                    res = await self.runner.run(cand.source, cand.name, args)
                self.cache[key] = res
        return [self.cache[k] for k in keys]

    async def reproduce_all(self, cand: Candidate, calls: list[tuple[SourceCall, dict[str, Any]]]) -> list[bool]:
        results = await self.run_all(cand, [args for _, args in calls])
        return [res.ok and matches_output(res.text, call.expected) for res, (call, _) in zip(results, calls)]


def matches_output(text: str, expected: str) -> bool:
    """What the tool returned, printed, equals the tail of what the original call printed."""
    got = text.strip()
    lines = expected.strip().split("\n")
    want = "\n".join(lines[-max(1, len(got.split("\n"))):]).strip()
    return bool(got) and got == want


async def mine_tools(trajs: list[tuple[str, Trajectory]], runner: ToolRunner, *, analyst: Any = None,
                     workers: int = 2, min_support: int | None = None,
                     listener: Listener | None = None) -> ToolMining:
    """Mine tools from (run, trajectory) pairs; every kept tool reproduces its source calls in the sandbox.
    A tool must cover at least `min_support` distinct source calls (None: `default_min_support`): one-off
    snippets are not reusable tools."""
    calls = source_calls(trajs)
    if min_support is None:
        min_support = default_min_support(len(calls))
    dropped: Counter = Counter()
    if analyst is None:
        cands = _deterministic(calls, dropped)
    else:
        cands = await analyst_candidates(calls, analyst, workers, dropped, listener)
    total = len(cands)
    replay = _Replay(runner)
    cands, merged = _dedupe(cands)
    cands = await _replayed(cands, replay, dropped, listener)
    cands, m2 = await _cluster(cands, replay, listener)
    cands, m3 = await _consolidate(cands, replay)
    cands, m4 = await _merge_namesakes(cands, replay)
    cands = _supported(cands, min_support, dropped)
    tools = [_draft(c) for c in _unique_names(cands, dropped)]
    return ToolMining(tools, len(calls), total, dropped, merged + m2 + m3 + m4, min_support)


async def tools_miner(job: Any) -> ToolMining:
    """The `tools` miner (a MineJob in, see _miners.py)."""
    return await mine_tools(job.trajs, job.runner, analyst=job.analyst, workers=job.workers,
                            min_support=job.min_support, listener=job.listener)


def _deterministic(calls: list[SourceCall], dropped: Counter) -> list[Candidate]:
    out = []
    for call in calls:
        try:
            out.append(abstract(call))
        except AbstractionError as e:
            dropped[str(e)] += 1
    return out


def _dedupe(cands: list[Candidate]) -> tuple[list[Candidate], int]:
    by_key: dict[str, Candidate] = {}
    for c in cands:
        if c.key in by_key:
            by_key[c.key].calls += c.calls
        else:
            by_key[c.key] = c
    return list(by_key.values()), len(cands) - len(by_key)


async def _replayed(cands: list[Candidate], replay: _Replay, dropped: Counter,
                    listener: Listener | None) -> list[Candidate]:
    """Keep the calls each candidate reproduces; a candidate that reproduces none is dropped."""
    done = 0

    async def check(c: Candidate) -> Candidate | None:
        nonlocal done
        ok = await replay.reproduce_all(c, c.calls)
        done += 1
        if listener:
            listener("replay", done, len(cands))
        if not all(ok):
            dropped["replay mismatch"] += ok.count(False)
        c.calls = [ca for ca, good in zip(c.calls, ok) if good]
        return c if c.calls else None

    return [c for c in await asyncio.gather(*(check(c) for c in cands)) if c is not None]


async def _cluster(cands: list[Candidate], replay: _Replay,
                   listener: Listener | None) -> tuple[list[Candidate], int]:
    """Candidates with one signature that agree on the union of their inputs are one tool."""
    groups: dict[tuple[str, ...], list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.signature, []).append(c)
    out, merged = [], 0
    for i, group in enumerate(groups.values()):
        if listener:
            listener("cluster", i + 1, len(groups))
        if len(group) == 1:
            out += group
            continue
        inputs = [_positional(c, args) for c in group for _, args in c.calls]  # names may differ
        vectors = await asyncio.gather(*(_behaviour(c, inputs, replay) for c in group))
        clusters: dict[tuple, list[Candidate]] = {}
        for c, vec in zip(group, vectors):
            clusters.setdefault(vec, []).append(c)
        for members in clusters.values():
            best = max(members, key=lambda c: (len(c.calls), -len(c.source)))
            names = [n for n, _ in best.params]  # the members agree by position; their names may differ
            best.calls = [(call, dict(zip(names, _positional(c, args)))) for c in members for call, args in c.calls]
            merged += len(members) - 1
            out.append(best)
    return out, merged


def _positional(c: Candidate, args: dict[str, Any]) -> list[Any]:
    return [args.get(n) for n, _ in c.params]


async def _behaviour(c: Candidate, inputs: list[list[Any]], replay: _Replay) -> tuple:
    names = [n for n, _ in c.params]
    results = await replay.run_all(c, [dict(zip(names, values)) for values in inputs])
    return tuple((r.ok, r.text if r.ok else "") for r in results)


async def _consolidate(cands: list[Candidate], replay: _Replay) -> tuple[list[Candidate], int]:
    """Fold a special case into a more general candidate that reproduces all of its calls."""
    order = sorted(cands, key=lambda c: (-len(c.params), -len(c.calls), len(c.source)))
    kept: list[Candidate] = []
    for c in order:
        for general in kept:
            moved = await _covers(general, c, replay)
            if moved is not None:
                general.calls += moved
                break
        else:
            kept.append(c)
    return kept, len(cands) - len(kept)


async def _covers(general: Candidate, special: Candidate, replay: _Replay) -> list | None:
    if general.pattern is None or len(general.params) < len(special.params):
        return None
    moved = []
    for call, _ in special.calls:
        try:
            _, concrete = prepare(call.code)
        except AbstractionError:
            return None
        binding = unify(general.pattern, concrete, set(general.pnames))
        if binding is None or set(binding) != set(general.pnames):
            return None
        moved.append((call, {general.pnames[k]: v for k, v in binding.items()}))
    return moved if all(await replay.reproduce_all(general, moved)) else None


def _supported(cands: list[Candidate], min_support: int, dropped: Counter) -> list[Candidate]:
    kept = [c for c in cands if _support(c) >= min_support]
    if len(kept) < len(cands):
        dropped[f"support below {min_support}"] += len(cands) - len(kept)
    return kept


def _support(c: Candidate) -> int:
    return len({json.dumps(args, sort_keys=True) for _, args in c.calls})


async def _merge_namesakes(cands: list[Candidate], replay: _Replay) -> tuple[list[Candidate], int]:
    """Two tools of one name whose programs differ in shape (`a[-1] + 3 * a[-2]` against `2 * a[-1] + 3 * a[-2]`)
    may still compute one function: the special one is folded into the general one when the general one,
    with the special one's parameters in order and each extra parameter fixed to 1 or 0, reproduces every
    test of the special one in the sandbox (the general one's own tests it reproduced already)."""
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.name, []).append(c)
    kept, merged = [], 0
    for group in groups.values():
        group.sort(key=lambda c: (-len(c.params), -len(c.calls), len(c.source)))
        out: list[Candidate] = []
        for c in group:
            for general in out:
                moved = await _embeds(general, c, replay)
                if moved is not None:
                    general.calls += moved
                    merged += 1
                    break
            else:
                out.append(c)
        kept += out
    return kept, merged


MAX_FIXED = 2  # parameters of the general tool that may be fixed to a constant
FIXED_VALUES = (1, 0)


async def _embeds(general: Candidate, special: Candidate, replay: _Replay) -> list | None:
    """The special tool's calls as calls of the general one, when the general one reproduces all of them."""
    extra = len(general.params) - len(special.params)
    if not 0 < extra <= MAX_FIXED:
        return None
    for positions in itertools.combinations(range(len(general.params)), len(special.params)):
        if any(general.params[g][1] != special.params[s][1] for s, g in enumerate(positions)):
            continue
        free = [i for i in range(len(general.params)) if i not in positions]
        if any(general.params[i][1] != "int" for i in free):
            continue
        for values in itertools.product(FIXED_VALUES, repeat=len(free)):
            moved = [(call, _translate(general, special, positions, dict(zip(free, values)), args))
                     for call, args in special.calls]
            if all(await replay.reproduce_all(general, moved)):
                return moved
    return None


def _translate(general: Candidate, special: Candidate, positions: tuple[int, ...], fixed: dict[int, Any],
               args: dict[str, Any]) -> dict[str, Any]:
    values = dict(fixed)
    for s, g in enumerate(positions):
        values[g] = args[special.params[s][0]]
    return {general.params[i][0]: values[i] for i in range(len(general.params))}


def _unique_names(cands: list[Candidate], dropped: Counter) -> list[Candidate]:
    """Different tools that got one name are told apart by what differs (an operation, the task category, the
    parameters), the best-supported keeping the plain name; one that cannot be told apart is dropped."""
    groups: dict[str, list[Candidate]] = {}
    for c in sorted(cands, key=lambda c: (-len(c.calls), len(c.source))):
        groups.setdefault(c.name, []).append(c)
    taken = set(groups)
    out = []
    for name, group in groups.items():
        out.append(group[0])
        for c in group[1:]:
            new = next((n for n in _distinct_names(c, group) if n not in taken), None)
            if new is None:
                dropped["same name as a better-supported tool"] += 1
                continue
            taken.add(new)
            c.source = re.sub(rf"^def {c.name}\(", f"def {new}(", c.source, count=1, flags=re.MULTILINE)
            c.name = new
            out.append(c)
    return out


def _distinct_names(c: Candidate, group: list[Candidate]) -> list[str]:
    others = [o for o in group if o is not c]
    names = []
    ops = _op_words(c)
    for word in sorted(ops - set().union(*(_op_words(o) for o in others))):
        names.append(f"{c.name}_by_{word}")
    category = c.calls[0][0].category
    if all(o.calls[0][0].category != category for o in others):
        names.append(_ident(f"{c.name}_for_{category}"))
    params = [n for n, _ in c.params if not re.search(r"_\d+$", n)]
    if params:
        names.append(_ident(f"{c.name}_of_{'_'.join(params[:3])}"))
    return names


def _op_words(c: Candidate) -> set[str]:
    try:
        tree = ast.parse(c.source)
    except SyntaxError:
        return set()
    return {OP_WORDS[type(n.op)] for n in ast.walk(tree) if isinstance(n, ast.BinOp) and type(n.op) in OP_WORDS}


def _draft(c: Candidate) -> ToolDraft:
    tests, sources, seen = [], {}, set()
    for call, args in _by_category(c.calls):
        sources.setdefault(call.run, [])
        if call.traj_id not in sources[call.run]:
            sources[call.run].append(call.traj_id)
        key = json.dumps(args, sort_keys=True)
        if key not in seen:
            seen.add(key)
            tests.append({"args": args, "expected": expected_value(call.expected), "task": call.prompt})
    return ToolDraft(c.name, c.source, tests, sources)


def _by_category(calls: list[tuple[SourceCall, dict[str, Any]]]) -> list[tuple[SourceCall, dict[str, Any]]]:
    """Calls taking the task categories in turn, so that the first tests (the source tasks that tool retrieval
    reads) show every kind of task the tool solved."""
    groups: dict[str, list] = {}
    for item in calls:
        groups.setdefault(item[0].category, []).append(item)
    rounds = itertools.zip_longest(*groups.values())
    return [item for r in rounds for item in r if item is not None]


def expected_value(text: str) -> Any:
    """The printed result as JSON when it is a number, else the text (its last line)."""
    last = text.strip().split("\n")[-1].strip()
    try:
        value = json.loads(last)
    except ValueError:
        return last
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else last


# --------------------------------------------------------------------------- the analyst path

ANALYST_SYSTEM = (
    "You turn a one-off Python program into a reusable tool. Write ONE pure Python function with type hints "
    "for every parameter (int, float, str, bool, list[int], list[float] or list[str]) and a Google-style "
    "docstring with an Args: section. Lift the task-specific literals into parameters; the function returns "
    "the value the program printed last instead of printing it. Imports go above the function. "
    "Reply with the function in a ```python block, then a ```json block with the arguments that reproduce "
    "the original program's output.")


def analyst_prompt(call: SourceCall) -> str:
    return (f"Task: {call.prompt}\n\nProgram:\n```python\n{call.code}\n```\n\n"
            f"It printed:\n```\n{_clip(call.observation, 400)}\n```")


def parse_analyst_tool(text: str, call: SourceCall) -> Candidate:
    """A candidate from an analyst reply; AbstractionError when it is not one usable tool."""
    code = re.search(r"```python\s*\n(.*?)```", text, re.DOTALL)
    args = re.search(r"```json\s*\n(.*?)```", text, re.DOTALL)
    if not code or not args:
        raise AbstractionError("analyst reply lacks a python or json block")
    source = code.group(1).strip() + "\n"
    try:
        tree = ast.parse(source)
        fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        values = json.loads(args.group(1))
    except (SyntaxError, ValueError):
        raise AbstractionError("analyst reply does not parse") from None
    if len(fns) != 1 or not isinstance(values, dict) or not TOOL_IDENT.match(fns[0].name):
        raise AbstractionError("analyst reply is not one function with JSON arguments")
    try:
        spec = spec_from_source(source, fns[0].name)
    except (ValueError, TypeError, SyntaxError):
        raise AbstractionError("analyst tool lacks type hints, a docstring, or is not a plain function") from None
    if spec.validate(values) is not None:
        raise AbstractionError("analyst arguments do not fit the tool's schema")
    params = [(k, v.get("type", "any")) for k, v in spec.parameters["properties"].items()]
    body = copy.deepcopy(fns[0].body)
    if body and _docstring(body[0]):
        body = body[1:]
    key = normalised_key(body, [Param(n, t, None, "") for n, t in params])
    return Candidate(fns[0].name, source, params, key, [(call, values)])


TOOL_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


async def analyst_candidates(calls: list[SourceCall], analyst: Any, workers: int, dropped: Counter,
                             listener: Listener | None = None) -> list[Candidate]:
    """Ask the analyst for one abstraction per call, `workers` at a time."""
    sem = asyncio.Semaphore(max(1, workers))
    done = 0

    async def one(call: SourceCall) -> Candidate | None:
        nonlocal done
        async with sem:
            text = await ask(analyst, ANALYST_SYSTEM, analyst_prompt(call))
        done += 1
        if listener:
            listener("analyse tools", done, len(calls))
        try:
            return parse_analyst_tool(text, call)
        except AbstractionError as e:
            dropped[str(e)] += 1
            return None

    return [c for c in await asyncio.gather(*(one(c) for c in calls)) if c is not None]


async def ask(policy: Any, system: str, prompt: str) -> str:
    """One analyst turn: the text a policy replies to a system and a user message."""
    task = Task(id="skill-analyst", env="skills", split="train", prompt=prompt)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    turn = await policy(PolicyRequest(messages=messages, tools=[], task=task))
    return turn.content or turn.reasoning or ""
