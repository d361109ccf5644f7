"""DualDistill composition: several teachers' trajectories of the same tasks become one training set.

After Agentic-R1 / DualDistill (arXiv 2507.05707). Trajectories from one run with several teachers,
or from several runs over the same tasks, are grouped by task id.

`best`: per task, keep one successful trajectory: `--prefer` names a teacher to take when it
succeeded, else the cheapest wins (fewest tokens, then fewest steps, then teacher spec).

`dual`: per task,
  - one teacher succeeded and another failed: the failed attempt, truncated, is followed by a
    transition phrase and then the successful solution, as ONE conversation:

        system (the successful teacher's: it lists the tools), user (the task),
        the failed attempt's turns up to a step budget (assistant turns and their observations),
        then one assistant turn = [the failed final turn's thought, cut before the line where its
        wrong answer first appears] + transition phrase + the successful teacher's first turn,
        then the rest of the successful trajectory.

    The failed prefix is `context` (the student sees it and is never trained on it); the
    transition phrase is trained, since the switch is what the student must learn. The cut makes
    sure the wrong answer never appears. The spans written tile every assistant text, so the
    encoder uses them as they are (a merged turn is context up to the transition only).
  - several teachers succeeded: the cheaper one, as in `best`;
  - none succeeded: the task is dropped and counted.

Cost: generated tokens, then steps. Teachers report usage in their own tokenizers and scripted
experts report none, so when any candidate of a task reports no completion tokens, every candidate
of that task is measured the same way from its assistant text: one token per word piece
(`\\w+` run or single punctuation character), close to what BPE tokenizers give on English and code.

Strategies register by name in `compose_strategies`: a strategy is called as `strategy(candidates, cfg)`
with one task's trajectories and returns a `TaskResult`. Third parties add their own with
`@compose_strategies.register("name")` or through the `trajdistill.compose_strategies` entry-point group.

Composition is deterministic: ids are hashes of the source ids and the strategy, trajectories are
written in task order, and transition variants are picked by a hash of (seed, task id).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from trajdistill import __version__
from trajdistill.envs import FINAL_ANSWER, ConfigError, Registry, UnknownNameError

from ._schema import Message, Provenance, Span, Teacher, Trajectory, Usage
from ._spans import THINK_OPEN, assistant_text, segment_as_env
from ._store import RunError, RunStore, check_output, read_result
from ._taxonomy import PARSE_ERROR_TOOL

REPORT_FILE = "compose_report.json"
TOOL_EXEMPT = frozenset({FINAL_ANSWER, PARSE_ERROR_TOOL})  # tool messages that are not a real tool use

# Built-in transition phrases, by the direction of the switch.
TO_TOOL = (
    "Wait, reasoning this out by hand is error-prone. Let me verify with the tool.",
    "Hmm, a slip in this hand calculation is easy to make. I'll compute it with the tool instead.",
    "Wait, I should not trust this by-hand working. Let me check it with the tool.",
    "Let me step back: the tool can get this exactly, so I'll use it.",
)
TO_REASON = (
    "Wait, the tool is not getting me there. Let me reason it through step by step instead.",
    "Hmm, that approach is not working. I'll think it through carefully myself.",
    "Let me step back and work this out by careful reasoning instead.",
)
RETRY = (
    "Wait, this attempt looks wrong. Let me try a different approach.",
    "Hmm, I am not confident in this. Let me solve it another way.",
)

_WORD_PIECE = re.compile(r"\w+|[^\w\s]")
_FINAL_MARK = re.compile(r"^(Final Answer|Action)\s*:", re.MULTILINE)
_THOUGHT_MARK = re.compile(r"^\s*(Thought|Reasoning)\s*:[ \t]*")


@dataclass
class ComposeConfig:
    """Settings of one composition; `run.yaml` of the output holds them."""

    runs: list[str] = field(metadata={"help": "Run directories over the same tasks (one or several)."})
    out: str = field(metadata={"help": "Run directory to write."})
    strategy: str = field(default="dual", metadata={"help": (  # a name in `compose_strategies`
        "How teachers' trajectories of a task combine (best: one cheapest success; dual: failed prefix, "
        "transition, then the successful teacher)")})
    prefer: str | None = field(default=None, metadata={"help": "Teacher spec to keep whenever it succeeded."})
    transition: str | None = field(default=None, metadata={
        "help": "Transition phrase for every task (dual); default: built-in variants chosen per task."})
    seed: int = field(default=0, metadata={"help": "Picks the built-in transition variant of each task."})
    max_prefix_steps: int = field(default=4, metadata={
        "help": "Failed-attempt turns kept before the switch (dual)."})

    def __post_init__(self) -> None:
        self.runs = [str(r) for r in self.runs]
        if not self.runs:
            raise ConfigError("give at least one RUN to compose")
        try:
            compose_strategies.get(self.strategy)
        except UnknownNameError as e:
            raise UnknownNameError(f"--strategy: {e}") from None
        if self.max_prefix_steps < 1:
            raise ConfigError(f"max_prefix_steps must be at least 1, got {self.max_prefix_steps}")
        if self.transition is not None and not self.transition.strip():
            raise ConfigError("--transition must not be empty")


# ---- the report ---------------------------------------------------------------------------------


@dataclass
class GroupStats:
    tasks: int = 0
    kept: int = 0
    composed: int = 0
    dropped: int = 0
    won: dict[str, int] = field(default_factory=dict)  # teacher whose solution was kept -> tasks

    def add(self, winner: str | None, composed: bool) -> None:
        self.tasks += 1
        if winner is None:
            self.dropped += 1
            return
        self.kept += 1
        self.composed += composed
        self.won[winner] = self.won.get(winner, 0) + 1


@dataclass
class ComposeReport:
    strategy: str
    runs: list[str]
    teachers: list[str]
    total: GroupStats = field(default_factory=GroupStats)
    by_category: dict[str, GroupStats] = field(default_factory=dict)
    by_difficulty: dict[str, GroupStats] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)  # "failed->successful" teacher pair -> count
    out: str = ""

    def add(self, traj: Trajectory, winner: str | None, pair: str | None) -> None:
        composed = pair is not None
        self.total.add(winner, composed)
        self.by_category.setdefault(str(traj.category), GroupStats()).add(winner, composed)
        self.by_difficulty.setdefault(str(traj.difficulty), GroupStats()).add(winner, composed)
        if pair is not None:
            self.transitions[pair] = self.transitions.get(pair, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; no paths of the output and no times, so equal inputs give equal bytes."""
        d = asdict(self)
        d.pop("out")
        return d

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> "ComposeReport":
        """A compose_report.json that `write` wrote; a bad file is one RunError line."""
        def build(doc: dict[str, Any]) -> ComposeReport:
            groups = {k: {name: GroupStats(**g) for name, g in doc.get(k, {}).items()}
                      for k in ("by_category", "by_difficulty")}
            return cls(**{**doc, **groups, "total": GroupStats(**doc.get("total", {})), "out": str(Path(path).parent)})

        return read_result(path, build, "a compose report")


# ---- loading and costs --------------------------------------------------------------------------


def load_groups(runs: list[str]) -> dict[str, list[Trajectory]]:
    """Trajectories of all runs grouped by task id; the runs must share one env (name and version)."""
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    env: tuple[str, str] | None = None
    seen: set[str] = set()
    for run in runs:
        for traj in RunStore.open(run).load():
            ref = (traj.env.name, traj.env.version)
            if env is not None and ref != env:
                raise RunError(f"{run}: env {ref[0]} v{ref[1]} differs from {env[0]} v{env[1]}; "
                               "compose runs of one env only")
            env = ref
            if traj.id in seen:  # the same run given twice
                continue
            seen.add(traj.id)
            groups[traj.task_id].append(traj)
    if not groups:
        raise RunError(f"no trajectories in {', '.join(runs)}")
    return dict(sorted(groups.items()))


def text_tokens(traj: Trajectory) -> int:
    """Word pieces in everything the agent generated (see the module doc)."""
    n = 0
    for m in traj.messages:
        if m.role == "assistant":
            n += len(_WORD_PIECE.findall(assistant_text(m)))
    return n


def costs(cands: list[Trajectory]) -> dict[str, tuple[int, int]]:
    """(tokens, steps) per trajectory id, measured the same way for every candidate of one task."""
    reported = all(t.usage.completion_tokens > 0 for t in cands)
    return {t.id: (t.usage.completion_tokens if reported else text_tokens(t), t.usage.steps or _steps(t))
            for t in cands}


def _steps(traj: Trajectory) -> int:
    return sum(m.role == "assistant" for m in traj.messages)


def pick(successes: list[Trajectory], prefer: str | None, cost: dict[str, tuple[int, int]]) -> Trajectory:
    """The preferred teacher's trajectory if it succeeded, else the cheapest; ties break by spec, then id."""
    if prefer is not None:
        preferred = [t for t in successes if t.teacher.spec == prefer]
        if preferred:
            successes = preferred
    return min(successes, key=lambda t: (*cost[t.id], t.teacher.spec, t.id))


def uses_tools(traj: Trajectory) -> bool:
    return any(m.role == "tool" and (m.name or "") not in TOOL_EXEMPT for m in traj.messages)


def derived_id(strategy: str, sources: list[Trajectory], extra: str = "") -> str:
    key = "|".join([strategy, *(t.id for t in sources), extra])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# ---- dual composition ---------------------------------------------------------------------------


def transition_for(task_id: str, failed: Trajectory, success: Trajectory, cfg: ComposeConfig) -> str:
    if cfg.transition is not None:
        return cfg.transition.strip()
    if uses_tools(success) and not uses_tools(failed):
        variants = TO_TOOL
    elif uses_tools(failed) and not uses_tools(success):
        variants = TO_REASON
    else:
        variants = RETRY
    h = int(hashlib.sha256(f"{cfg.seed}:{task_id}".encode()).hexdigest(), 16)
    return variants[h % len(variants)]


def _body_start(messages: list[Message]) -> int:
    """Index of the first message after the system prompt and the task."""
    i = 0
    while i < len(messages) and messages[i].role in ("system", "user"):
        i += 1
    return i


def _turn_groups(messages: list[Message]) -> list[list[Message]]:
    """Each assistant turn with the observations that follow it."""
    groups: list[list[Message]] = []
    for m in messages:
        if m.role == "assistant" or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    return groups


def cut_before_answer(text: str, answer: str | None) -> str:
    """The lines of `text` before the first that shows `answer` (as a whole token)."""
    if not answer or not answer.strip():
        return text.rstrip()
    pat = re.compile(rf"(?<![\w.]){re.escape(answer.strip())}(?![\w])")
    kept = []
    for line in text.splitlines():
        if pat.search(line):
            break
        kept.append(line)
    return "\n".join(kept).rstrip()


def thought_of_final(msg: Message, answer: str | None) -> str:
    """What a final-answer turn thought before answering, cut before its answer appears."""
    if msg.tool_calls or (msg.reasoning is not None and not _FINAL_MARK.search(msg.content)):
        text = msg.reasoning or ""  # native: the content or the call is the answer itself
    else:
        m = _FINAL_MARK.search(msg.content)
        text = msg.content[: m.start()] if m else ""
    text = cut_before_answer(text, answer)
    return "" if not _THOUGHT_MARK.sub("", text).strip() else text


def failed_prefix(failed: Trajectory, budget: int) -> tuple[list[Message], str]:
    """(whole turns kept from the failed attempt, the thought of its final turn or "")."""
    body = failed.messages[_body_start(failed.messages):]
    groups = _turn_groups(body)
    final = None
    if groups and len(groups[-1]) == 1 and groups[-1][0].role == "assistant" \
            and failed.outcome.final_answer is not None:
        final = groups.pop()[0]  # the wrong final answer: no observation follows it
    kept = groups[:budget]
    tail = ""
    if final is not None and len(kept) < budget:
        tail = thought_of_final(final, failed.outcome.final_answer)
    return [m for g in kept for m in g], tail


def _switch_turn(first: Message, tail: str, transition: str) -> tuple[Message, int]:
    """The successful first turn with the failed thought and the transition in front; and the
    length of the context prefix in `assistant_text` of the result."""
    if first.reasoning is not None:  # native: the switch happens inside the reasoning
        lead = f"{tail}\n" if tail else ""
        msg = first.model_copy(update={"reasoning": f"{lead}{transition} {first.reasoning}".rstrip()})
        return msg, (len(THINK_OPEN) + len(lead)) if tail else 0
    content = first.content
    marker = _THOUGHT_MARK.match(content)
    rest = content[marker.end():] if marker else content
    if tail:  # the tail already opened a thought
        return first.model_copy(update={"content": f"{tail}\n{transition} {rest}"}), len(tail) + 1
    head = content[: marker.end()] if marker else ""
    sep = " " if marker else "\n"
    return first.model_copy(update={"content": f"{head}{transition}{sep}{rest}"}), 0


def compose_dual(failed: Trajectory, success: Trajectory, cfg: ComposeConfig) -> Trajectory:
    """One conversation: the failed prefix (context), the transition, the successful solution."""
    transition = transition_for(success.task_id, failed, success, cfg)
    prefix, tail = failed_prefix(failed, cfg.max_prefix_steps)
    start = _body_start(success.messages)
    head, rest = success.messages[:start], success.messages[start:]
    switch, context_len = _switch_turn(rest[0], tail, transition)
    messages = [*head, *prefix, switch, *rest[1:]]
    switch_at = len(head) + len(prefix)
    context = [Span(message=i, start=0, end=len(assistant_text(m)), kind="context")
               for i, m in enumerate(messages) if m.role == "assistant" and i < switch_at]
    spec = f"compose:dual({failed.teacher.spec}->{success.teacher.spec})"
    traj = Trajectory(
        id=derived_id("dual", [failed, success], transition),
        task_id=success.task_id, split=success.split, category=success.category, difficulty=success.difficulty,
        env=success.env,
        teacher=Teacher(spec=spec, backend="compose", model=success.teacher.model,
                        sampling={"transition": transition}),
        messages=messages, spans=context, outcome=success.outcome,
        usage=_usage(failed, success, messages),
        provenance=_provenance(success, [failed, success], "dual"),
        created_at=max(failed.created_at, success.created_at),
    )
    return traj.model_copy(update={"spans": _spans(traj, switch_at, context_len)})


def _spans(traj: Trajectory, switch_at: int, context_len: int) -> list[Span]:
    """Spans tiling every assistant text: the env's segmenter's, with the switch turn's prefix made context."""
    out = []
    for s in segment_as_env(traj):
        if s.message != switch_at or context_len == 0:
            out.append(s)
        elif s.end > context_len:
            out.append(s.model_copy(update={"start": max(s.start, context_len)}))
    if context_len:
        out.append(Span(message=switch_at, start=0, end=context_len, kind="context"))
    return sorted(out, key=lambda s: (s.message, s.start))


def _usage(failed: Trajectory, success: Trajectory, messages: list[Message]) -> Usage:
    a, b = failed.usage, success.usage
    return Usage(prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                 completion_tokens=a.completion_tokens + b.completion_tokens,
                 total_tokens=a.total_tokens + b.total_tokens, latency_s=a.latency_s + b.latency_s,
                 wall_s=a.wall_s + b.wall_s, steps=sum(m.role == "assistant" for m in messages),
                 invalid_actions=b.invalid_actions)


def _provenance(base: Trajectory, sources: list[Trajectory], strategy: str) -> Provenance:
    return base.provenance.model_copy(update={
        "package_version": __version__, "composed_from": [t.id for t in sources], "strategy": strategy})


def kept_copy(traj: Trajectory, strategy: str) -> Trajectory:
    """A source trajectory kept whole: same content, a derived id and the composition provenance."""
    return traj.model_copy(update={"id": derived_id(strategy, [traj]),
                                   "provenance": _provenance(traj, [traj], strategy)})


# ---- per task -----------------------------------------------------------------------------------


@dataclass
class TaskResult:
    kept: Trajectory | None  # None: dropped, no teacher succeeded
    winner: str | None = None  # the teacher whose solution is kept
    pair: str | None = None  # "failed->successful" teachers when composed


ComposeStrategy = Callable[[list[Trajectory], ComposeConfig], TaskResult]
compose_strategies: Registry[ComposeStrategy] = Registry("compose strategy", "trajdistill.compose_strategies")


def compose_task(cands: list[Trajectory], cfg: ComposeConfig) -> TaskResult:
    return compose_strategies.get(cfg.strategy)(cands, cfg)


def winner(cands: list[Trajectory], prefer: str | None) -> Trajectory | None:
    """The successful trajectory a task keeps (see `pick`), or None when no teacher succeeded."""
    successes = [t for t in cands if t.outcome.success]
    return pick(successes, prefer, costs(cands)) if successes else None


@compose_strategies.register("best")
def compose_best(cands: list[Trajectory], cfg: ComposeConfig) -> TaskResult:
    """One cheapest success per task (the --prefer teacher's when it succeeded)."""
    success = winner(cands, cfg.prefer)
    if success is None:
        return TaskResult(None)
    return TaskResult(kept_copy(success, cfg.strategy), success.teacher.spec)


@compose_strategies.register("dual")
def compose_dual_task(cands: list[Trajectory], cfg: ComposeConfig) -> TaskResult:
    """A failed teacher's prefix, a transition, then the successful teacher; else as `best`."""
    success = winner(cands, cfg.prefer)
    several = len({t.teacher.spec for t in cands if t.outcome.success}) > 1
    if success is None or several or not any(m.role == "assistant" for m in success.messages):
        return compose_best(cands, cfg)
    failures = [t for t in cands if not t.outcome.success and t.teacher.spec != success.teacher.spec]
    if not failures:
        return compose_best(cands, cfg)
    # a real wrong answer first, then the teacher order, so the choice is stable
    failed = min(failures, key=lambda t: (t.outcome.final_answer is None, t.teacher.spec, t.id))
    pair = f"{failed.teacher.spec}->{success.teacher.spec}"
    return TaskResult(compose_dual(failed, success, cfg), success.teacher.spec, pair)


def compose(runs: list[str | Path], strategy: str = "dual", out: str | Path = "", *,
            prefer: str | None = None, transition: str | None = None, seed: int = 0,
            max_prefix_steps: int = 4) -> ComposeReport:
    """Compose the runs into a new run dir `out` (with compose_report.json); see the module doc."""
    cfg = ComposeConfig(runs=[str(r) for r in runs], out=str(out), strategy=strategy, prefer=prefer,
                        transition=transition, seed=seed, max_prefix_steps=max_prefix_steps)
    return compose_config(cfg)


def compose_config(cfg: ComposeConfig) -> ComposeReport:
    if not cfg.out:
        raise ConfigError("give --out, the run directory to write")
    groups = load_groups(cfg.runs)
    check_output(cfg.out, cfg.runs, kind="dir")
    teachers = sorted({t.teacher.spec for ts in groups.values() for t in ts})
    if cfg.prefer is not None and cfg.prefer not in teachers:
        raise ConfigError(f"--prefer {cfg.prefer!r} is not a teacher of these runs; teachers: {', '.join(teachers)}")
    first = next(iter(groups.values()))[0]
    splits = sorted({str(t.split) for ts in groups.values() for t in ts})
    config = {"command": "compose", **asdict(cfg), "env": first.env.name, "split": ",".join(splits),
              "teachers": teachers, "package_version": __version__}
    report = ComposeReport(strategy=cfg.strategy, runs=cfg.runs, teachers=teachers, out=cfg.out)
    with RunStore.create(cfg.out, config) as store:
        for cands in groups.values():
            result = compose_task(cands, cfg)
            if result.kept is not None:
                store.append(result.kept)
            report.add(cands[0], result.winner, result.pair)
    report.write(Path(cfg.out) / REPORT_FILE)
    return report
