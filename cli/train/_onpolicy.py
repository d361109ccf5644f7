"""On-policy distillation with black-box teachers (DAgger): the student acts, the teacher labels its states.

Each round r (1-based) of `onpolicy` writes under OUT/round-<r>/:

    rollouts/  the round's episodes on the same `tasks` train tasks, through the ReAct loop and the sandbox.
               At every turn the routed teacher is asked for its own next turn from the same prefix; with
               probability β_r that turn is executed, else the student's (the student is not asked at a turn
               the teacher takes). Each trajectory records per assistant turn who acted, which teacher
               labelled it and the teacher's turn, in `teacher.sampling["dagger"]`. A teacher that cannot act
               from a state (CannotActError) leaves that turn unlabelled, with its reason, and the student's
               turn runs.
    relabels/  the training data, a run directory: for each label that differs from the student's turn, the
               rollout up to that turn plus the teacher's turn; labels that repeat the student's turn word for
               word are trained in place, inside the next such trajectory (or a last one). Other assistant
               turns are context spans, never trained. Its `teacher` is the teacher that labelled the turns;
               `teacher.sampling["messages"]` the turns it trains. Each relabel failure is a line of its
               errors.jsonl (kind "relabel").
    model/     `train` of the ORIGINAL student on the aggregate (DAgger): the --data runs plus the relabels
               of rounds 1..r, with the span-aware loss; only_success is off unless the trainer settings
               turn it on, since a label is the teacher's turn whatever the rollout's outcome
    dev/       the eval of the new student on dev tasks

With `mode="reverse-kl"` (white-box teachers with the student's tokenizer: one `hf:` teacher, whose whole
distribution the trainer computes; or a vLLM server as `vllm-serve:`/`openai:`, or several teachers routed per
task by --route, which score the student's sampled tokens before training (vLLM's prompt log-probabilities, or
a local forward pass), stored as rollouts/teacher_logprobs.jsonl with the routed teacher per trajectory and
trained with the sampled-token estimator) a round is on-policy
distillation in the GKD / Tinker form instead: the student alone rolls out (temperature `temperature`, no β,
no relabels), and the round's student trains on its own rollouts with the per-token reverse KL to the
teacher on every token it sampled (`train`'s KD term with ce_weight 0: prompt, system and tool tokens are
masked, the span weights apply, --train-act-kl forward makes [ACT] spans mode-covering). With --data (one
hf: teacher) the round trains on those runs next to its samples under the same KD loss, GKD's mixture with
lambda < 1 (the share of sampled tokens). The teacher model never generates. Before training, the reverse KL
of every sampled token to the teacher is written beside the rollouts (rollouts/token_kl.jsonl, overlaid by
`trajdistill view`); rounds.json records its mean per turn position (`kl_by_turn`, plotted across rounds in
OUT/divergence.png) and the trainer's last logged KL (`train_kd`).

The next round rolls out the new model. OUT/rounds.json holds the per-round stats, rewritten after each
round, among them the agreement (the share of the student's turns where it took the teacher's action) per
turn position, which OUT/agreement.png plots across rounds; β_r comes from the β schedule (`beta_at`).

`resume` continues an interrupted OUT with the same settings (only --rounds may grow): finished rounds are
kept as they are; in the cut-off round the rollouts go on where they stopped (an episode is on disk as one
line, its labels inside it, so none is lost or run twice), and the relabels, model and dev eval, derived
from them, are rebuilt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


from trajdistill import __version__
from trajdistill.agents import (EvalConfig, Policy, Progress, ReActLoop, RolloutConfig, config_field, evaluate_async,
                               gather_or_cancel, make_policy, play_episode, rollout_default, to_trajectory)
from trajdistill.envs import CannotActError, ConfigError, Env, Outcome, PolicyRequest, Task, Turn, make_env
from trajdistill.envs._react_text import ParsedAction, ParsedFinal, parse_react
from trajdistill.envs.sandbox import Limits, SandboxProvider, get_provider
from trajdistill.trajectories import (Message, RunError, RunStore, Span, Teacher, Trajectory, Usage, assistant_text,
                                      segment_as_env)

from ._config import TrainConfig, student_problems
from ._data import write_teacher_logprobs
from ._divergence import kl_by_turn, served_token_logprobs, token_kl, write_token_kl
from ._rounds import RoundsDir, recipe_problems, typed_train_arg
from ._sft import train

CONFIG_FILE = "onpolicy.yaml"
MODES = ("dagger", "reverse-kl")
LABELS = ("all", "disagreements")  # which teacher labels a DAgger round trains
STUDENT_BACKENDS = ("hf", "vllm-serve")  # how the student generates; it trains with hf either way
SERVED_TEACHERS = ("vllm-serve:", "openai:")  # white-box through vLLM's prompt log-probabilities
WHITE_BOX = ("hf:", *SERVED_TEACHERS)
RELABEL_KIND = "relabel"
AGREEMENT_PLOT = "agreement.png"
DIVERGENCE_PLOT = "divergence.png"

Listener = Callable[[str, Progress], None]  # (stage description, episode progress)


# ---- the β schedule ------------------------------------------------------------------------------


def beta_at(schedule: str, round_no: int) -> float:
    """β of round `round_no` (1-based): the probability that the teacher's turn is executed at a turn.

        exp:B0:D       B0 * D**(r-1)  (the default, exp:1:0.5, is DAgger's β_1 = 1, then halving)
        linear:B0:S    max(0, B0 - S*(r-1))
        B1,B2,...      one value per round; the last repeats
        B              the same every round
    """
    kind, _, rest = schedule.partition(":")
    try:
        if kind in ("exp", "linear"):
            b0, step = (float(x) for x in rest.split(":"))
            value = b0 * step ** (round_no - 1) if kind == "exp" else max(0.0, b0 - step * (round_no - 1))
        else:
            values = [float(x) for x in schedule.split(",")]
            value = values[min(round_no, len(values)) - 1]
    except ValueError:
        raise ConfigError(f"--beta-schedule {schedule!r} is not exp:B0:DECAY, linear:B0:STEP, B1,B2,... or B") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--beta-schedule {schedule!r} gives beta {value:g} in round {round_no}; beta is a "
                          "probability, from 0 to 1")
    return value


# ---- settings -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class OnPolicyConfig(RolloutConfig):
    """Settings of one on-policy distillation; OUT/onpolicy.yaml holds them."""

    student: str = field(metadata={"help": "Student policy spec, e.g. hf:smollm2-135m (or a trained model dir)."})
    teachers: list[str] = field(metadata={
        "help": "Teacher policy spec (expert:NAME, openai:MODEL@URL, hf:PATH); repeat for several, routed per task "
                "by --route (default: the first)."})
    out: str = field(metadata={"help": "Directory for the rounds (rollouts, relabels, models, rounds.json)."})
    mode: str = config_field("dagger", "dagger: black-box relabelling, any policy spec can teach. reverse-kl: "
                                       "white-box, per-token reverse KL to the teacher on the student's own "
                                       "sampled tokens: one hf:PATH (full distributions), or vllm-serve:PATH / "
                                       "openai:MODEL@URL of a vLLM server, or several teachers routed by --route "
                                       "(the sampled tokens' log-probabilities); teachers need the student's "
                                       "tokenizer.")
    rounds: int = config_field(2, "Roll out, relabel, retrain: how many times.")
    beta_schedule: str = config_field("exp:1:0.5", "Probability that the teacher's turn is executed instead of the "
                                      "student's, per round: exp:B0:DECAY (B0*DECAY^(r-1)), linear:B0:STEP, a list "
                                      "B1,B2,... (the last repeats) or one number.")
    labels: str = config_field("all", "Which teacher labels a dagger round trains. all: every labelled turn (classic "
                                      "DAgger). disagreements: only where the student acted and the teacher's "
                                      "action differs (tool and arguments, or final answer), as HG-DAgger trains on "
                                      "corrections: no training token goes to what the student already does.")
    routes: dict[str, str] = config_field({}, "CATEGORY=TEACHER: tasks of this category are labelled by that "
                                              "--teacher (others by the first); repeatable.")
    data: list[str] = config_field([], "Run directory trained on every round next to the relabels (e.g. the "
                                       "teacher's SFT data); repeatable. In reverse-kl mode (one hf: teacher) it "
                                       "joins the student's samples under the same KD loss: GKD with lambda < 1.")
    dev_tasks: int = config_field(50, "Dev tasks to score each round's student on (0: skip).")
    max_steps: int = rollout_default("max_steps", 10)
    temperature: float = rollout_default("temperature", 0.7)  # the student's; teachers act greedily by default
    student_backend: str = config_field("hf", "How the student generates its rollouts and dev episodes: hf (in "
                                              "process) or vllm-serve (each round's model served by `vllm serve` "
                                              "from the vLLM venv, as the eval backend; faster on CPU and GPU). It "
                                              "trains with hf either way.")
    student_options: dict[str, Any] = config_field({}, "KEY=VALUE option of the student's backend, e.g. "
                                                       "max_new_tokens=256; repeatable.")
    teacher_options: dict[str, Any] = config_field({}, "KEY=VALUE option of the teachers' backends; repeatable.")
    train_args: dict[str, Any] = config_field({}, "TrainConfig fields, e.g. max_steps.")
    resume: bool = config_field(False, "Continue an interrupted --out with the same settings (--rounds may grow): "
                                       "finished rounds are kept, rollouts go on where they stopped.")

    def own_problems(self) -> list[str]:
        problems = []
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.labels not in LABELS:
            problems.append(f"--labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        if self.student_backend not in STUDENT_BACKENDS:
            problems.append(f"--student-backend must be one of {', '.join(STUDENT_BACKENDS)}, "
                            f"got {self.student_backend!r}")
        elif self.student_backend != "hf" and ":" in self.student.removeprefix("hf:"):
            problems.append(f"--student-backend {self.student_backend} serves a model dir or alias; the student "
                            f"{self.student!r} is another backend's spec")
        elif self.mode == "reverse-kl":
            problems += self.white_box_problems()
        if not self.teachers:
            problems.append("give at least one --teacher SPEC")
        if len(set(self.teachers)) != len(self.teachers):
            problems.append("each --teacher may be given once")
        problems += [f"--route {cat}={spec}: {spec!r} is not one of the --teacher specs"
                     for cat, spec in self.routes.items() if spec not in self.teachers]
        if self.rounds < 1:
            problems.append(f"--rounds must be at least 1, got {self.rounds}")
        try:
            for r in range(1, self.rounds + 1):
                beta_at(self.beta_schedule, r)
        except ConfigError as e:
            problems.append(str(e))
        return problems + recipe_problems(self, "onpolicy", self.data, "--data")

    def white_box_problems(self) -> list[str]:
        """reverse-kl takes white-box teachers (several are routed per task); --data needs one hf: teacher."""
        problems = []
        black = [t for t in self.teachers if not t.startswith(WHITE_BOX)]
        if black or not self.teachers:
            problems.append(f"--mode reverse-kl takes white-box teachers, hf:<path|alias> or a vLLM server "
                            f"(vllm-serve:<path|alias>, openai:MODEL@URL), got {', '.join(black) or 'none'}; "
                            "black-box teachers use --mode dagger")
        else:
            if self.stored_logprobs and self.train_args.get("act_kl") == "forward":
                problems.append("--train-act-kl forward needs the teacher's whole distribution: give one hf: teacher")
            for t in self.teachers:
                if t.startswith("hf:"):
                    problems += [p.replace("student", "--teacher", 1) for p in student_problems(t)]
        if self.data and self.stored_logprobs:
            problems.append("--data in --mode reverse-kl is scored by the teacher's whole distribution: give one "
                            "hf: teacher (a served teacher's log-probabilities cover the student's samples only)")
        return problems

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_args = {k: typed_train_arg(k, v) for k, v in self.train_args.items()}

    @property
    def stored_logprobs(self) -> bool:
        """reverse-kl scores the sampled tokens once, before training, into teacher_logprobs.jsonl: with a served
        teacher, or several routed per task. One hf: teacher is loaded by the trainer, for its whole distribution."""
        return self.mode == "reverse-kl" and (len(self.teachers) > 1 or self.teachers[0].startswith(SERVED_TEACHERS))

    def kd_train_args(self) -> dict[str, Any]:
        """The trainer settings of a reverse-kl round: KD alone, on every sampled token (--train-* override)."""
        teacher = {"teacher_logprobs": True} if self.stored_logprobs else {"teacher_model": self.teachers[0][3:]}
        return {**teacher, "kl": "reverse", "ce_weight": 0.0, "kd_weight": 1.0, "kd_temperature": 1.0,
                "only_success": False, **self.train_args}

    def rollout_spec(self, student: str) -> str:
        """The spec the student generates through: its own, or the same model served by --student-backend."""
        if self.student_backend == "hf":
            return student
        return f"{self.student_backend}:{student.removeprefix('hf:')}"

    def teacher_for(self, task: Task) -> str:
        """The teacher routed to `task`: by its category, else the first teacher."""
        return self.routes.get(task.category or "", self.teachers[0])


@dataclass
class OnPolicyRound:
    round: int
    student: str  # the policy that rolled out this round
    beta: float
    episodes: int  # rollouts on disk (tasks less errored episodes)
    errored: int  # episodes that ended in a library error (errors.jsonl of rollouts/); a rerun retries them
    successes: int
    rollout_success_rate: float
    turns: int  # assistant turns in the rollouts
    student_turns: int  # turns the student's action was executed
    teacher_turns: int  # turns the teacher's action was executed
    labelled: int  # turns relabelled by a teacher (the round's trajectories train them all)
    relabel_failures: int  # turns a teacher could not act from (recorded, never dropped)
    agreement: float | None  # of the labelled student turns, the share where the student did what the teacher would
    aggregate: int  # labelled turns of rounds 1..r: what this round trained on (with the --data runs)
    trained: bool
    model: str | None  # the next round's student, None when nothing was trained
    dev_success_rate: float | None
    train_steps: int = 0
    train_loss: float | None = None
    train_kd: float | None = None  # the last logged mean per-token KL to a white-box teacher
    # reverse-kl: mean token KL of the rollouts to the teacher at the k-th assistant turn (before training)
    kl_by_turn: list[float | None] = field(default_factory=list)
    teachers: dict[str, int] = field(default_factory=dict)  # labelled turns per teacher
    # agreement at the k-th assistant turn of an episode (k = 1, 2, ...), None where the student never acted there
    agreement_by_turn: list[float | None] = field(default_factory=list)


@dataclass
class OnPolicyResult:
    rounds: list[OnPolicyRound]
    final_student: str


# ---- the acting policy --------------------------------------------------------------------------


@dataclass
class TurnRecord:
    """One assistant turn of a rollout: who acted, and the teacher's own turn from the same prefix."""

    message: int  # index of the assistant message in the rollout
    acted: str  # "student" or "teacher"
    teacher: str  # the routed teacher's spec
    label: dict[str, Any] | None  # the teacher's turn as an assistant message; None: it could not act
    error: str | None = None  # why it could not


def turn_message(turn: Turn) -> dict[str, Any]:
    """A policy's turn as an assistant message in OpenAI chat format (as the loop records it)."""
    msg: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.reasoning:
        msg["reasoning"] = turn.reasoning
    if turn.tool_calls:
        msg["tool_calls"] = [{"id": c.id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                              "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                             for c in turn.tool_calls]
    return msg


class MixedPolicy:
    """The round's acting policy: at each turn the routed teacher labels the state; with probability β its
    turn is executed, else the student's. The draw is seeded by (seed, round, task, turn), so a rerun
    episode makes the same choices."""

    def __init__(self, student: Policy, teachers: dict[str, Policy], route: Callable[[Task], str], beta: float,
                 seed: str):
        self.student, self.teachers, self.route, self.beta, self.seed = student, teachers, route, beta, seed
        self.spec, self.backend, self.model = student.spec, student.backend, student.model
        self.action_format = student.action_format
        self.uses_hints = any(getattr(t, "uses_hints", False) for t in teachers.values())
        self.records: dict[str, list[TurnRecord]] = {}  # task id -> the turns of its episode in flight

    async def __call__(self, request: PolicyRequest) -> Turn:
        spec = self.route(request.task)
        at = len(request.messages)
        label, error = None, None
        try:
            label = await self.teachers[spec](request)
        except CannotActError as e:
            error = str(e)
        if label is not None and self.draw(request.task.id, at) < self.beta:
            turn, acted = label, "teacher"
        else:  # the student never sees the privileged hints that the env's experts read
            turn, acted = await self.student(dataclasses.replace(request, hints={})), "student"
        self.records.setdefault(request.task.id, []).append(
            TurnRecord(at, acted, spec, turn_message(label) if label else None, error))
        return turn

    def draw(self, task_id: str, at: int) -> float:
        return random.Random(f"{self.seed}:{task_id}:{at}").random()

    def sampling(self) -> dict[str, Any]:
        return self.student.sampling()

    async def close(self) -> None:
        """The policies are the distiller's; it closes them."""


# ---- relabelling --------------------------------------------------------------------------------


def records_of(traj: Trajectory) -> list[TurnRecord]:
    """The per-turn records a rollout holds (none for a trajectory that is not a rollout)."""
    dagger = traj.teacher.sampling.get("dagger")
    turns = dagger.get("turns", []) if isinstance(dagger, dict) else []
    return [TurnRecord(**r) for r in turns]  # type: ignore[arg-type]


def relabel(rollout: Trajectory, teachers: dict[str, Teacher], round_no: int,
            labels: str = "all") -> list[Trajectory]:
    """The training trajectories of a rollout's labels. A label that differs from the turn the rollout took ends
    a trajectory of its own: the rollout up to that turn, then the teacher's turn. A label that repeats the
    turn word for word is trained in place, in the rollout's own messages, inside the next trajectory (or a last
    one). Each label is trained once, after the same prefix as one trajectory per label would give it, in fewer
    tokens (a student that agrees with most labels would otherwise pay a whole prefix for each).
    `labels="disagreements"` keeps only the corrections: labels at the student's turns whose action differs."""
    out, in_place = [], []
    for rec in records_of(rollout):
        if rec.label is None:
            continue
        label = Message.model_validate(rec.label)
        if labels == "disagreements" and not is_correction(rollout.messages[rec.message], rec, label):
            continue
        if same_turn(rollout.messages[rec.message], label):
            in_place.append(rec)
            continue
        out.append(_labelled(rollout, [*in_place, rec], label, teachers, round_no))
        in_place = []
    if in_place:
        out.append(_labelled(rollout, in_place, rollout.messages[in_place[-1].message], teachers, round_no))
    return out


def _labelled(rollout: Trajectory, recs: list[TurnRecord], last: Message, teachers: dict[str, Teacher],
              round_no: int) -> Trajectory:
    """The rollout up to the last of `recs`, then `last`: the turns of `recs` are trained, the others context."""
    rec = recs[-1]
    messages = [*rollout.messages[:rec.message], last]
    trained = [r.message for r in recs]
    teacher = teachers[rec.teacher].model_copy(update={"sampling": {
        **teachers[rec.teacher].sampling, "sample": f"{round_no}.{rec.message}", "round": round_no,
        "message": rec.message, "messages": trained, "acted": rec.acted, "rollout": rollout.id,
        "student": rollout.teacher.spec}})
    o = rollout.outcome
    draft = Trajectory(
        task_id=rollout.task_id, split=rollout.split, category=rollout.category, difficulty=rollout.difficulty,
        env=rollout.env, teacher=teacher, messages=messages, spans=[],
        outcome=Outcome(success=o.success, reward=o.reward, final_answer=o.final_answer,
                        detail=f"the teacher's turns at messages {trained} of rollout {rollout.id}, whose "
                               f"outcome was: {o.detail or ('success' if o.success else 'failure')}"),
        usage=Usage(steps=sum(m.role == "assistant" for m in messages)),
        provenance=rollout.provenance.model_copy(update={"composed_from": [rollout.id], "strategy": "dagger"}),
        created_at=time.time())
    context = [Span(message=i, start=0, end=len(assistant_text(m)), kind="context")
               for i, m in enumerate(messages) if m.role == "assistant" and i not in trained]
    # the env's segmenter splits the labelled turns; the rest stays context
    spans = sorted(context + [sp for sp in segment_as_env(draft) if sp.message in trained],
                   key=lambda sp: (sp.message, sp.start))
    return draft.model_copy(update={"spans": spans})


def is_correction(turn: Message, rec: TurnRecord, label: Message) -> bool:
    """Whether a label corrects the student: the student took the turn and the teacher would act otherwise."""
    return rec.acted == "student" and not same_action(turn, label)


def labels_in(traj: Trajectory) -> int:
    """How many teacher labels a relabelled trajectory trains."""
    return len(traj.teacher.sampling.get("messages", [None]))


def same_turn(turn: Message, label: Message) -> bool:
    """Whether a label is, word for word, the turn the rollout took (text and tool calls)."""
    def calls(m: Message) -> list[tuple[str, str]]:
        return [(c.function.name, c.function.arguments) for c in m.tool_calls or []]

    return assistant_text(turn) == assistant_text(label) and calls(turn) == calls(label)


def same_action(student: Message, label: Message) -> bool:
    """Whether two assistant turns take the same action (tool and arguments, or final answer)."""
    def action(m: Message) -> Any:
        if m.tool_calls:
            return [(c.function.name, c.function.arguments) for c in m.tool_calls]
        parsed = parse_react(m.content)
        if isinstance(parsed, ParsedAction):
            return ("act", parsed.tool, json.dumps(parsed.arguments, sort_keys=True))
        if isinstance(parsed, ParsedFinal):
            return ("final", " ".join(parsed.answer.split()).lower())
        return None

    a = action(student)
    return a is not None and a == action(label)


def agreement_by_turn(rollouts: list[Trajectory]) -> list[list[bool]]:
    """Per assistant-turn position (1st, 2nd, ...): for each labelled turn the student took there, whether it
    took the teacher's action. The black-box view of the per-turn teacher-student divergence."""
    out: list[list[bool]] = []
    for t in rollouts:
        for k, r in enumerate(records_of(t)):
            if r.acted == "student" and r.label is not None:
                out.extend([] for _ in range(k + 1 - len(out)))
                out[k].append(same_action(t.messages[r.message], Message.model_validate(r.label)))
    return out


def plot_agreement(stats: list[OnPolicyRound], path: Path) -> None:
    """Per round, the share of the student's turns that took the teacher's action, by turn position."""
    plot_by_turn([(s, s.agreement_by_turn) for s in stats], "student took the teacher's action",
                 "teacher-student agreement at the student's states", path, (-0.05, 1.05))


def plot_divergence(stats: list[OnPolicyRound], path: Path) -> None:
    """Per round, the mean token KL(student || teacher) of the student's samples, by turn position."""
    plot_by_turn([(s, s.kl_by_turn) for s in stats], "mean token KL(student || teacher)",
                 "teacher-student divergence on the student's samples", path)


def plot_by_turn(series: list[tuple[OnPolicyRound, list[float | None]]], ylabel: str, title: str, path: Path,
                 ylim: tuple[float, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for s, values in series:
        points = [(k + 1, v) for k, v in enumerate(values) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"round {s.round} (beta {s.beta:g})")
    ax.set_xlabel("assistant turn of the episode")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    if any(values for _, values in series):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the rounds ---------------------------------------------------------------------------------


class OnPolicyDistiller(RoundsDir):
    config_file, kind, round_class = CONFIG_FILE, "onpolicy", OnPolicyRound

    def __init__(self, cfg: OnPolicyConfig, listener: Listener | None = None):
        super().__init__(cfg, listener)
        self.env: Env | None = None
        self.teachers: dict[str, Policy] = {}
        self.scorers: dict[str, Any] = {}  # reverse-kl, stored log-probs: per teacher, what scores the student's tokens
        self.provider: SandboxProvider | None = None
        self.tasks: list[Task] = []

    # -- setup and teardown --

    async def open(self) -> None:
        c = self.cfg
        self.env = make_env(c.env, **c.env_params)
        self.env.check_split(c.split)
        self.tasks = self.env.tasks(c.split, n=c.tasks)
        categories = {t.category for t in self.tasks}
        unrouted = sorted(cat for cat in c.routes if cat not in categories)
        if unrouted:
            raise ConfigError(f"--route: no task of the {len(self.tasks)} {c.split} tasks has category "
                              f"{', '.join(map(repr, unrouted))}; their categories: "
                              f"{', '.join(sorted(str(x) for x in categories))}")
        if c.mode == "dagger":  # a white-box teacher never acts: the trainer loads it next to the student
            self.teachers = {spec: make_policy(spec, env=self.env, **{"temperature": 0.0, "seed": c.seed,
                                                                      **c.teacher_options})
                             for spec in c.teachers}
        elif c.stored_logprobs:
            self.scorers = {spec: make_policy(spec, env=self.env, **c.teacher_options) for spec in c.teachers}
            unable = [spec for spec, p in self.scorers.items() if not hasattr(p, "prompt_logprobs")]
            if unable:
                raise ConfigError(f"teacher {', '.join(unable)} cannot score tokens (no prompt log-probabilities)")
        if self.env.needs_sandbox:
            self.provider = get_provider(c.sandbox, Limits())

    async def close(self) -> None:
        for p in [*self.teachers.values(), *self.scorers.values()]:
            await p.close()
        if self.provider is not None:
            await self.provider.close()
        if self.env is not None:
            await self.env.close()

    def _teacher_refs(self) -> dict[str, Teacher]:
        return {s: Teacher(spec=s, backend=p.backend, model=p.model, sampling=p.sampling())
                for s, p in self.teachers.items()}

    # -- one round --

    def student_policy(self, spec: str, round_no: int) -> Policy:
        c = self.cfg
        policy = make_policy(spec, env=self.env, **{"temperature": c.temperature, "seed": c.seed + 1000 * round_no,
                                                     **c.student_options})
        different = sorted({t.spec for t in self.teachers.values() if t.action_format != policy.action_format})
        if different:
            raise ConfigError(f"the student {spec} speaks the {policy.action_format} action format and teacher(s) "
                              f"{', '.join(different)} another; a teacher labels the student's own prompt, so "
                              "they must share one")
        return policy

    async def rollouts(self, round_no: int, student: str, beta: float) -> tuple[list[Trajectory], list[dict[str, Any]]]:
        """The round's rollouts (and the errors of its episodes that errored), going on where a cut-off attempt
        stopped."""
        c = self.cfg
        student_spec = c.rollout_spec(student)
        out = self.root / f"round-{round_no}" / "rollouts"
        config = {"command": "onpolicy rollouts", "env": c.env, "env_params": dict(c.env_params), "split": c.split,
                  "round": round_no, "student": student_spec, "teachers": list(c.teachers), "routes": dict(c.routes),
                  "beta": beta, "seed": c.seed, "max_steps": c.max_steps, "temperature": c.temperature,
                  "student_options": dict(c.student_options), "teacher_options": dict(c.teacher_options),
                  "package_version": __version__}
        policy = self.student_policy(student_spec, round_no)
        acting: Policy | MixedPolicy = policy
        if c.mode == "dagger":
            acting = MixedPolicy(policy, self.teachers, c.teacher_for, beta, f"{c.seed}:{round_no}")
        loop = ReActLoop(self.env, acting, max_steps=c.max_steps, engine=c.loop,  # type: ignore[arg-type]
                         stop_on_repeat=c.stop_on_repeat)
        store = RunStore.create(out, config, resume=True)
        try:
            finished = store.finished_keys()
            todo = [t for t in self.tasks if (t.id, student_spec) not in finished]
            await self._run_episodes(loop, acting, todo, store, round_no, beta)
        finally:
            await policy.close()
            store.write_stats()
            store.close()
        run = RunStore.open(out)
        return run.load(), run.unfinished_errors()

    async def _run_episodes(self, loop: ReActLoop, acting: Any, todo: list[Task], store: RunStore,
                            round_no: int, beta: float) -> None:
        progress = Progress(total=len(todo))
        listen = self._listen(f"round {round_no} rollouts (beta {beta:g})")
        limit = asyncio.Semaphore(self.cfg.concurrency)

        async def one(task: Task) -> None:
            async with limit:
                progress.count(await self._episode(loop, acting, task, store, round_no, beta))
            if listen:
                listen(progress)

        await gather_or_cancel([asyncio.create_task(one(t)) for t in todo])

    async def _episode(self, loop: ReActLoop, acting: Any, task: Task, store: RunStore, round_no: int,
                       beta: float) -> Trajectory | None:
        try:
            result = await play_episode(loop, task, self.provider, store, acting.spec)
        finally:
            records = acting.records.pop(task.id, []) if isinstance(acting, MixedPolicy) else None
        if result is None:
            return None
        traj = to_trajectory(result, task, loop.env, acting, self.provider.name if self.provider else None,
                             self.cfg.seed + 1000 * round_no, self.cfg.skills)
        if records is not None:
            traj.teacher.sampling["dagger"] = {"round": round_no, "beta": beta,
                                               "turns": [asdict(r) for r in records]}
        store.append(traj)  # one fsynced line, labels inside: from here on the episode is finished
        return traj

    def write_relabels(self, round_no: int, student: str,
                       rollouts: list[Trajectory]) -> tuple[int, int, dict[str, int]]:
        """Write round-<r>/relabels; (labelled turns, relabel failures, labelled turns per teacher)."""
        path = self.root / f"round-{round_no}" / "relabels"
        refs = self._teacher_refs()
        labelled, failures, per_teacher = 0, 0, dict.fromkeys(self.cfg.teachers, 0)
        config = {"command": "onpolicy relabels", "env": self.cfg.env, "split": self.cfg.split, "round": round_no,
                  "student": student, "teachers": list(self.cfg.teachers), "routes": dict(self.cfg.routes)}
        with RunStore.create(path, config) as store:
            for rollout in rollouts:
                for traj in relabel(rollout, refs, round_no, self.cfg.labels):
                    store.append(traj)
                    labelled += labels_in(traj)
                    per_teacher[traj.teacher.spec] += labels_in(traj)
                for rec in records_of(rollout):
                    if rec.label is None:
                        failures += 1
                        store.record_error(rollout.task_id, rec.teacher, f"message {rec.message} of rollout "
                                           f"{rollout.id}: {rec.error}", RELABEL_KIND)
        return labelled, failures, per_teacher

    def train(self, round_no: int, student: str) -> Any:
        if self.cfg.mode == "reverse-kl":  # on-policy: the round's own student, on its own samples
            rollouts = self.root / f"round-{round_no}" / "rollouts"
            if not RunStore.open(rollouts).load():
                return None
            return train(TrainConfig(data=[*self.cfg.data, str(rollouts)], student=student,
                                     out=str(self.root / f"round-{round_no}" / "model"), **self.cfg.kd_train_args()))
        runs = [*self.cfg.data, *(str(self.root / f"round-{k}" / "relabels") for k in range(1, round_no + 1))]
        args = {"only_success": False, **self.cfg.train_args}
        usable = [t for r in runs for t in RunStore.open(r).load() if t.outcome.success or not args["only_success"]]
        if not usable:
            return None
        tc = TrainConfig(data=runs, student=self.cfg.student, out=str(self.root / f"round-{round_no}" / "model"),
                         **args)
        return train(tc)

    async def dev_success(self, round_no: int, student: str) -> float | None:
        c = self.cfg
        if c.dev_tasks == 0:
            return None
        ec = EvalConfig(env=c.env, agents=[c.rollout_spec(student)], split="dev", tasks=c.dev_tasks,
                        out=str(self.root / f"round-{round_no}" / "dev"), concurrency=c.concurrency,
                        max_steps=c.max_steps, seed=c.seed, temperature=0.0, sandbox=c.sandbox,
                        env_params=dict(c.env_params),
                        agent_options={k: v for k, v in c.student_options.items() if k != "temperature"})
        results = await evaluate_async(ec, self.listener)
        return results.agents[0].success_rate

    async def gather(self, round_no: int, student: str) -> tuple[list[Trajectory], int]:
        """Roll out round `round_no` and write its relabels (the part of a round that needs no training)."""
        beta = self.beta(round_no)
        rollouts, errors = await self.rollouts(round_no, student, beta)
        if errors:  # a round trained without them would stand in rounds.json as done, and a rerun keep it
            raise RunError(f"round {round_no}: {len(errors)} of {len(self.tasks)} rollouts errored (last: "
                           f"{errors[-1]['reason']}); nothing was trained, and the {len(rollouts)} finished ones "
                           "are kept: run again to retry the rest")
        for derived in ("relabels", "model", "dev"):  # left by a cut-off attempt of this round: rebuilt
            shutil.rmtree(self.root / f"round-{round_no}" / derived, ignore_errors=True)
        return rollouts, len(errors)

    async def divergence(self, round_no: int, student: str, rollouts: list[Trajectory]) -> list[float | None]:
        """Write the rollouts' token KL to their teacher (rollouts/token_kl.jsonl) and, with stored log-probs, the
        routed teacher's log-probability of each sampled token (rollouts/teacher_logprobs.jsonl); the KL per turn."""
        out = self.root / f"round-{round_no}" / "rollouts"
        if self.scorers:
            stored, records = [], []
            for spec, group in self.routed(rollouts).items():
                s, r = await served_token_logprobs(group, student.removeprefix("hf:"), self.scorers[spec])
                stored += [{**x, "teacher": spec} for x in s]
                records += r
            write_teacher_logprobs(out, stored)
        else:
            records = token_kl(rollouts, student.removeprefix("hf:"), self.cfg.teachers[0].removeprefix("hf:"))
        write_token_kl(out, records)
        return kl_by_turn(records)

    def routed(self, rollouts: list[Trajectory]) -> dict[str, list[Trajectory]]:
        """The rollouts per teacher they are routed to, by their task's category."""
        tasks = {t.id: t for t in self.tasks}
        groups: dict[str, list[Trajectory]] = {}
        for traj in rollouts:
            groups.setdefault(self.cfg.teacher_for(tasks[traj.task_id]), []).append(traj)
        return groups

    def beta(self, round_no: int) -> float:
        """β of a round; in reverse-kl mode the student acts at every turn."""
        return beta_at(self.cfg.beta_schedule, round_no) if self.cfg.mode == "dagger" else 0.0

    async def round(self, round_no: int, student: str, aggregate: int) -> OnPolicyRound:
        rollouts, errored = await self.gather(round_no, student)
        divergence: list[float | None] = []
        if self.cfg.mode == "dagger":
            labelled, failures, per_teacher = self.write_relabels(round_no, student, rollouts)
            acted = [r.acted for t in rollouts for r in records_of(t)]
        else:  # every turn the student sampled is scored by the one teacher
            acted = ["student" for t in rollouts for m in t.messages if m.role == "assistant"]
            labelled, failures = len(acted), 0
            per_teacher = dict.fromkeys(self.cfg.teachers, 0) | {
                spec: sum(m.role == "assistant" for t in group for m in t.messages)
                for spec, group in self.routed(rollouts).items()}
            divergence = await self.divergence(round_no, student, rollouts)
        result = self.train(round_no, student)
        model = f"hf:{Path(result.out).resolve()}" if result is not None else None
        dev = await self.dev_success(round_no, model or student)
        by_turn = agreement_by_turn(rollouts)
        judged = [ok for turn in by_turn for ok in turn]
        successes = sum(t.outcome.success for t in rollouts)
        return OnPolicyRound(
            round=round_no, student=student, beta=self.beta(round_no), episodes=len(rollouts), errored=errored,
            successes=successes, rollout_success_rate=successes / len(rollouts) if rollouts else 0.0,
            turns=len(acted), student_turns=acted.count("student"), teacher_turns=acted.count("teacher"),
            labelled=labelled,
            relabel_failures=failures, agreement=sum(judged) / len(judged) if judged else None,
            aggregate=aggregate + labelled, trained=result is not None, model=model, dev_success_rate=dev,
            train_steps=result.steps if result else 0, train_loss=result.losses.get("loss") if result else None,
            train_kd=result.losses.get("loss_kd") if result else None, kl_by_turn=divergence,
            teachers=per_teacher, agreement_by_turn=[sum(t) / len(t) if t else None for t in by_turn])

    async def run(self, on_round: Callable[[OnPolicyRound], None] | None = None) -> OnPolicyResult:
        self._start()
        stats, student = self._finished_rounds()
        try:
            await self.open()
            for r in range(len(stats) + 1, self.cfg.rounds + 1):
                s = await self.round(r, student, stats[-1].aggregate if stats else 0)
                stats.append(s)
                student = s.model or student
                self._write_rounds(stats, student)
                if self.cfg.mode == "dagger":
                    plot_agreement(stats, self.root / AGREEMENT_PLOT)
                else:
                    plot_divergence(stats, self.root / DIVERGENCE_PLOT)
                if on_round:
                    on_round(s)
        finally:
            await self.close()
        return OnPolicyResult(stats, student)

    def _rounds_header(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode}


async def onpolicy_async(cfg: OnPolicyConfig, listener: Listener | None = None,
                         on_round: Callable[[OnPolicyRound], None] | None = None) -> OnPolicyResult:
    """Library entry point: run `cfg.rounds` rounds of on-policy distillation (see the module doc)."""
    return await OnPolicyDistiller(cfg, listener).run(on_round)


def onpolicy(cfg: OnPolicyConfig, listener: Listener | None = None,
             on_round: Callable[[OnPolicyRound], None] | None = None) -> OnPolicyResult:
    """Sync wrapper of `onpolicy_async`."""
    return asyncio.run(onpolicy_async(cfg, listener, on_round))
