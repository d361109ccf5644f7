"""Shadow-mode readiness gate: is a student ready to replace its teacher?

Student and teacher run on the same held-out tasks (the real `evaluate`). The report measures:
  agreement    final answers and action sequences; of the tasks where the final answers differ, the share
               the student got wrong (promotion threshold 35%: the production rule is 30-40%)
  calibration  ECE of the student's confidence in its final answer (the probability of the answer's tokens,
               from a local model's forward pass; `hf:` students), target < 5%, with a reliability diagram
  behaviour    the length of what each wrote and the student's per-turn token entropy against the teacher's
               (where the teacher is a local model too): runaway verbosity and mode collapse
  drift        against an earlier gate.json (`baseline`): PSI and KS on lengths, entropy and confidence
               (flagged above 0.1), and accuracy on the tasks both runs share (flagged below -5 points)
`gate` writes OUT/gate.json and the plots; its `decision` is promote or hold, with every hold reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from trajdistill.envs import ConfigError
from trajdistill.trajectories import RunError, RunStore, Trajectory, actions

from ._eval import EvalConfig, evaluate, wilson_ci
from ._policy import split_spec
from ._rollout import RolloutConfig, config_field, rollout_default
from ._scoring import EpisodeScores, score_episodes

GATE_FILE = "gate.json"
LOCAL_BACKENDS = ("hf",)  # backends whose model this process can score token by token


@dataclass(kw_only=True)
class GateConfig(RolloutConfig):
    """Settings of one shadow-mode gate run."""

    student: str = field(metadata={"help": "The candidate's policy spec, e.g. hf:runs/student."})
    teacher: str = field(metadata={"help": "The champion's policy spec (the teacher, or the current student)."})
    split: str = rollout_default("split", "test")
    out: str = config_field("", "Directory for gate.json, the plots and the two agents' runs.")
    agent_options: dict[str, Any] = config_field({}, "Policy options; each agent takes its backend's keys.")
    baseline: str | None = config_field(None, "An earlier gate.json to measure drift against.")
    max_wrong_on_disagreement: float = config_field(
        0.35, "Hold when the student is wrong on more than this share of the tasks where the answers differ.")
    min_disagreement_rate: float = config_field(
        0.05, "Apply the disagreement rule only when the final answers differ on at least this share of the tasks "
              "(against a verified teacher every disagreement is the student's mistake, so a few would hold it).")
    max_ece: float = config_field(0.05, "Hold when the student's expected calibration error is above this.")
    max_drift: float = config_field(0.1, "Hold when a PSI or KS statistic against the baseline is above this.")
    max_accuracy_drop: float = config_field(0.05, "Hold when accuracy on the baseline's tasks drops by more.")
    max_length_ratio: float = config_field(
        2.0, "Hold when the student's median output length is more than this times the teacher's.")
    min_entropy_ratio: float = config_field(
        0.25, "Hold when the student's mean token entropy is below this times the teacher's (mode collapse).")
    resume: bool = config_field(False, "Keep the finished episodes of an interrupted --out.")

    def own_problems(self) -> list[str]:
        problems = []
        if not self.out:
            problems.append("give --out DIR for gate.json and the runs")
        if self.student == self.teacher:
            problems.append("--student and --teacher must differ")
        if self.baseline and not Path(self.baseline).is_file():
            problems.append(f"--baseline {self.baseline} is not a file")
        for name in ("max_wrong_on_disagreement", "min_disagreement_rate", "max_ece", "max_accuracy_drop"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        return problems


class Agreement(BaseModel):
    tasks: int
    final_answer: float  # share of tasks where the two final answers are the same
    actions: float  # share of tasks where the two sequences of tool calls are the same
    disagreements: int
    student_wrong_on_disagreement: float | None  # None when there was no disagreement


class Calibration(BaseModel):
    measured: bool
    why_not: str | None = None
    ece: float | None = None
    episodes: int = 0  # episodes with a final answer (the ones calibration covers)
    bins: list[dict[str, float]] = Field(default_factory=list)  # lo, hi, n, confidence, accuracy


class Behaviour(BaseModel):
    student_length: dict[str, float]  # characters the agent wrote per episode: p10, p50, p90, mean
    teacher_length: dict[str, float]
    length_ratio: float | None  # student p50 / teacher p50
    student_entropy: float | None  # mean per-turn token entropy (nats)
    teacher_entropy: float | None
    entropy_ratio: float | None


class Drift(BaseModel):
    baseline: str
    psi: dict[str, float]
    ks: dict[str, float]
    accuracy_now: float | None  # on the tasks both reports share
    accuracy_then: float | None
    shared_tasks: int


class Episode(BaseModel):
    task_id: str
    success: bool
    teacher_success: bool
    length: int
    entropy: float | None = None
    confidence: float | None = None


class GateReport(BaseModel):
    student: str
    teacher: str
    env: str
    split: str
    decision: str  # promote or hold
    reasons: list[str]  # why it holds; empty on promote
    notes: list[str]  # what was not measured, and why
    student_success: float
    teacher_success: float
    student_ci95: tuple[float, float]
    agreement: Agreement
    calibration: Calibration
    behaviour: Behaviour
    drift: Drift | None = None
    thresholds: dict[str, float]
    episodes: list[Episode]  # per task, so that a later gate can measure drift against this one
    plots: list[str] = Field(default_factory=list)


# ---- statistics -------------------------------------------------------------------------------------

def expected_calibration_error(confidence: list[float], correct: list[bool], n_bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins: sum over bins of (bin share) x |accuracy - mean confidence|."""
    bins = []
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == n_bins - 1 and c == 1.0)]
        if not idx:
            continue
        conf = sum(confidence[i] for i in idx) / len(idx)
        acc = sum(correct[i] for i in idx) / len(idx)
        ece += len(idx) / len(confidence) * abs(acc - conf)
        bins.append({"lo": lo, "hi": hi, "n": len(idx), "confidence": conf, "accuracy": acc})
    return ece, bins


def psi(expected: list[float], actual: list[float], n_bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of `actual` against `expected`, over `expected`'s quantile bins."""
    edges = sorted(set(_quantiles(expected, n_bins)))
    e, a = _shares(expected, edges), _shares(actual, edges)
    return sum((ai - ei) * math.log((ai + eps) / (ei + eps)) for ei, ai in zip(e, a))


def ks_statistic(x: list[float], y: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    points = sorted(set(x) | set(y))
    return max((abs(_cdf(x, p) - _cdf(y, p)) for p in points), default=0.0)


def _quantiles(values: list[float], n: int) -> list[float]:
    s = sorted(values)
    return [s[min(len(s) - 1, int(len(s) * q / n))] for q in range(1, n)]


def _shares(values: list[float], edges: list[float]) -> list[float]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[sum(v >= e for e in edges)] += 1
    return [c / len(values) for c in counts]


def _cdf(values: list[float], point: float) -> float:
    return sum(v <= point for v in values) / len(values)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    pick = lambda q: float(s[min(len(s) - 1, int(q * len(s)))])  # noqa: E731
    return {"p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "mean": sum(s) / len(s)}


# ---- the gate ---------------------------------------------------------------------------------------

def gate(cfg: GateConfig) -> GateReport:
    """Run student and teacher on the same tasks, measure, decide; write OUT/gate.json and the plots."""
    out = Path(cfg.out)
    baseline = _read_baseline(cfg.baseline) if cfg.baseline else None
    results = evaluate(EvalConfig(**cfg.rollout(), agents=[cfg.student, cfg.teacher], out=str(out / "eval"),
                                  agent_options=dict(cfg.agent_options), resume=cfg.resume))
    dead = [a.spec for a in results.agents if a.all_errored]
    if dead:
        raise RunError(f"every episode of {', '.join(dead)} errored, so the gate measured nothing; first: "
                       f"{next(a.first_error for a in results.agents if a.all_errored)}")
    student, teacher = (_by_task(out / "eval" / a.run) for a in results.agents)
    tasks = sorted(set(student) & set(teacher))
    s_scores = _scores(cfg.student, [student[t] for t in tasks], cfg.agent_options)
    t_scores = _scores(cfg.teacher, [teacher[t] for t in tasks], cfg.agent_options)
    episodes = [Episode(task_id=t, success=student[t].outcome.success, teacher_success=teacher[t].outcome.success,
                        length=_written(student[t]), entropy=_mean(s.entropy) if s else None,
                        confidence=s.confidence if s else None)
                for t, s in zip(tasks, s_scores or [None] * len(tasks))]
    report = _report(cfg, tasks, student, teacher, episodes, s_scores, t_scores, baseline)
    report.plots = _plots(report, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / GATE_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    return report


def _report(cfg: GateConfig, tasks: list[str], student: dict[str, Trajectory], teacher: dict[str, Trajectory],
            episodes: list[Episode], s_scores: list[EpisodeScores] | None, t_scores: list[EpisodeScores] | None,
            baseline: GateReport | None) -> GateReport:
    n_ok = sum(e.success for e in episodes)
    agreement = _agreement(tasks, student, teacher)
    calibration = _calibration(cfg.student, episodes, s_scores is not None)
    behaviour = _behaviour(episodes, [_written(teacher[t]) for t in tasks], t_scores)
    drift = _drift(cfg.baseline, baseline, episodes) if baseline else None
    reasons, notes = _decide(cfg, agreement, calibration, behaviour, drift)
    return GateReport(
        student=cfg.student, teacher=cfg.teacher, env=cfg.env, split=cfg.split,
        decision="hold" if reasons else "promote", reasons=reasons, notes=notes,
        student_success=n_ok / len(tasks) if tasks else 0.0,
        teacher_success=sum(teacher[t].outcome.success for t in tasks) / len(tasks) if tasks else 0.0,
        student_ci95=wilson_ci(n_ok, len(tasks)), agreement=agreement, calibration=calibration,
        behaviour=behaviour, drift=drift, episodes=episodes,
        thresholds={k: getattr(cfg, k) for k in ("max_wrong_on_disagreement", "min_disagreement_rate", "max_ece",
                                                 "max_drift",
                                                 "max_accuracy_drop", "max_length_ratio", "min_entropy_ratio")})


def _agreement(tasks: list[str], student: dict[str, Trajectory], teacher: dict[str, Trajectory]) -> Agreement:
    same_answer = {t: _answer(student[t]) == _answer(teacher[t]) for t in tasks}
    differ = [t for t in tasks if not same_answer[t]]
    wrong = sum(not student[t].outcome.success for t in differ)
    n = max(1, len(tasks))
    return Agreement(tasks=len(tasks), final_answer=sum(same_answer.values()) / n,
                     actions=sum(actions(student[t]) == actions(teacher[t]) for t in tasks) / n,
                     disagreements=len(differ), student_wrong_on_disagreement=wrong / len(differ) if differ else None)


def _calibration(spec: str, episodes: list[Episode], scored: bool) -> Calibration:
    if not scored:
        return Calibration(measured=False, why_not=f"{split_spec(spec)[0]}: students give no token probabilities "
                                                   f"here (only {', '.join(LOCAL_BACKENDS)}: students are scored)")
    answered = [e for e in episodes if e.confidence is not None]
    if not answered:
        return Calibration(measured=False, why_not="the student gave no final answer in any episode")
    ece, bins = expected_calibration_error([e.confidence for e in answered], [e.success for e in answered])
    return Calibration(measured=True, ece=ece, episodes=len(answered), bins=bins)


def _behaviour(episodes: list[Episode], teacher_lengths: list[int], t_scores: list[EpisodeScores] | None
               ) -> Behaviour:
    s_len, t_len = _summary([e.length for e in episodes]), _summary(teacher_lengths)
    s_ent = _mean([e.entropy for e in episodes if e.entropy is not None])
    t_ent = _mean([_mean(s.entropy) for s in t_scores if s.entropy]) if t_scores else None
    return Behaviour(student_length=s_len, teacher_length=t_len,
                     length_ratio=s_len["p50"] / t_len["p50"] if s_len and t_len and t_len["p50"] else None,
                     student_entropy=s_ent, teacher_entropy=t_ent,
                     entropy_ratio=s_ent / t_ent if s_ent is not None and t_ent else None)


def _drift(path: str, then: GateReport, now: list[Episode]) -> Drift:
    psis, kss = {}, {}
    for name in ("length", "entropy", "confidence"):
        a = [float(getattr(e, name)) for e in then.episodes if getattr(e, name) is not None]
        b = [float(getattr(e, name)) for e in now if getattr(e, name) is not None]
        if a and b:
            psis[name], kss[name] = psi(a, b), ks_statistic(a, b)
    before = {e.task_id: e.success for e in then.episodes}
    shared = [e for e in now if e.task_id in before]
    return Drift(baseline=path, psi=psis, ks=kss, shared_tasks=len(shared),
                 accuracy_now=sum(e.success for e in shared) / len(shared) if shared else None,
                 accuracy_then=sum(before[e.task_id] for e in shared) / len(shared) if shared else None)


def _decide(cfg: GateConfig, ag: Agreement, cal: Calibration, beh: Behaviour, drift: Drift | None
            ) -> tuple[list[str], list[str]]:
    reasons, notes = [], []
    w = ag.student_wrong_on_disagreement
    if w is not None and ag.disagreements < cfg.min_disagreement_rate * ag.tasks:
        notes.append(f"disagreement rule not applied: the answers differ on {ag.disagreements} of {ag.tasks} tasks, "
                     f"below {cfg.min_disagreement_rate:.0%}")
    elif w is not None and w > cfg.max_wrong_on_disagreement:
        reasons.append(f"the student is wrong on {w:.0%} of the {ag.disagreements} tasks where the final answers "
                       f"differ (threshold {cfg.max_wrong_on_disagreement:.0%})")
    if cal.measured and cal.ece is not None and cal.ece > cfg.max_ece:
        reasons.append(f"calibration: ECE {cal.ece:.1%} over {cal.episodes} answered episodes (target below "
                       f"{cfg.max_ece:.0%})")
    elif not cal.measured:
        notes.append(f"calibration not measured: {cal.why_not}")
    if beh.length_ratio is not None and beh.length_ratio > cfg.max_length_ratio:
        reasons.append(f"verbosity: the student's median output is {beh.length_ratio:.1f}x the teacher's "
                       f"(threshold {cfg.max_length_ratio:g}x)")
    if beh.entropy_ratio is not None and beh.entropy_ratio < cfg.min_entropy_ratio:
        reasons.append(f"mode collapse: the student's token entropy is {beh.entropy_ratio:.2f}x the teacher's "
                       f"(threshold {cfg.min_entropy_ratio:g}x)")
    elif beh.entropy_ratio is None:
        notes.append("entropy not compared: the teacher is not a local model this process can score")
    if drift is not None:
        reasons += _drift_reasons(cfg, drift)
    return reasons, notes


def _drift_reasons(cfg: GateConfig, d: Drift) -> list[str]:
    out = [f"drift: PSI of {name} is {v:.3f} against the baseline (threshold {cfg.max_drift:g})"
           for name, v in d.psi.items() if v > cfg.max_drift]
    out += [f"drift: KS statistic of {name} is {v:.3f} against the baseline (threshold {cfg.max_drift:g})"
            for name, v in d.ks.items() if v > cfg.max_drift]
    if d.accuracy_now is not None and d.accuracy_then is not None and \
            d.accuracy_then - d.accuracy_now > cfg.max_accuracy_drop:
        out.append(f"accuracy on the {d.shared_tasks} baseline tasks fell from {d.accuracy_then:.1%} to "
                   f"{d.accuracy_now:.1%} (more than {cfg.max_accuracy_drop:.0%})")
    return out


# ---- helpers ----------------------------------------------------------------------------------------

def _read_baseline(path: str) -> GateReport:
    try:
        return GateReport.model_validate_json(Path(path).read_text())
    except ValueError as err:
        raise ConfigError(f"--baseline {path} is not a gate.json: {str(err).splitlines()[0]}") from None


def _by_task(run: Path) -> dict[str, Trajectory]:
    return {t.task_id: t for t in RunStore.open(run).load()}


def _scores(spec: str, trajs: list[Trajectory], options: dict[str, Any]) -> list[EpisodeScores] | None:
    backend, target = split_spec(spec)
    if backend not in LOCAL_BACKENDS:
        return None
    return score_episodes(target, trajs, dtype=str(options.get("dtype", "auto")),
                          device=options.get("device"))


def _answer(traj: Trajectory) -> str | None:
    a = traj.outcome.final_answer
    return None if a is None else " ".join(str(a).lower().split())


def _written(traj: Trajectory) -> int:
    return sum(len(m.content or "") for m in traj.messages if m.role == "assistant")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _plots(report: GateReport, out: Path) -> list[str]:
    """The reliability diagram and the length histograms, as PNGs in `out` (names relative to it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names = []
    if report.calibration.measured:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        b = report.calibration.bins
        ax.bar([x["lo"] for x in b], [x["accuracy"] for x in b], width=0.1, align="edge", alpha=0.7,
               label="accuracy", edgecolor="black")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], "o", color="C3", label="bin mean")
        ax.set(xlabel="confidence in the final answer", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
               title=f"reliability (ECE {report.calibration.ece:.1%})")
        ax.legend(fontsize=8)
        names.append(_save(fig, out / "reliability.png"))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.hist([e.length for e in report.episodes], bins=20, alpha=0.6, label="student")
    ax.axvline(report.behaviour.teacher_length.get("p50", 0), color="C1", label="teacher median")
    ax.set(xlabel="characters written per episode", ylabel="episodes", title="output length")
    ax.legend(fontsize=8)
    names.append(_save(fig, out / "lengths.png"))
    return names


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def read_gate(path: str | Path) -> GateReport:
    """A gate.json written by `gate`."""
    return GateReport.model_validate(json.loads(Path(path).read_text()))
