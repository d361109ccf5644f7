"""Self-distillation: the student samples, the verifier filters, the student retrains on a replay buffer.

Each round r (1-based) of `self_distill` writes under OUT/round-<r>/:

    samples-<k>/   K collection runs of the current student on the same train tasks, at temperature T,
                   each with a seed of its own (the hf backend batches each run's episodes; the model
                   is loaded once per process and shared by the K runs)
    confirm/       the --confirm policy's run on the disputed tasks (K samples, several final answers)
    buffer/        the replay buffer as a run directory: the previous round's buffer (round 1: the
                   --compose-run trajectories) plus this round's kept samples, deduplicated by
                   (task, normalised assistant text)
    model/         the trainer's output (`train._sft.train` on buffer/)
    dev/           the eval of the new student on dev tasks

A sample is kept when the verifier says it succeeded; on a disputed task with a confirm policy it must
also give the confirm policy's final answer. Every round retrains the ORIGINAL student on the whole
buffer (as STaR does, so errors do not compound through fine-tuning on fine-tuned weights); the next
round samples from the new adapter. OUT/rounds.json holds the per-round stats, rewritten after each round.

`resume` continues an interrupted OUT with the same settings (only --rounds may grow): finished rounds
(those in rounds.json) are kept as they are; in the cut-off round the sample and confirm runs go on
where they stopped (no episode is lost or run twice), and the buffer, model and dev eval, which are
derived from them, are rebuilt.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from trajdistill.agents import (CollectConfig, Collector, EvalConfig, Progress, RolloutConfig, collect_async,
                               config_field, evaluate_async, resolved_config, rollout_default)
from trajdistill.trajectories import RunError, RunStore, Trajectory, assistant_text

from ._config import TrainConfig
from ._rounds import RoundsDir, recipe_problems, typed_train_arg
from ._sft import train

CONFIG_FILE = "self_distill.yaml"

Listener = Callable[[str, Progress], None]  # (stage description, collector progress)


@dataclass(kw_only=True)
class SelfDistillConfig(RolloutConfig):
    """Settings of one self-distillation; OUT/self_distill.yaml holds them."""

    student: str = field(metadata={"help": "Student policy spec, e.g. hf:smollm2-135m."})
    out: str = field(metadata={"help": "Directory for the rounds (samples, buffers, adapters, rounds.json)."})
    samples: int = config_field(4, "Trajectories the student samples per train task (K).")
    rounds: int = config_field(1, "Sample, filter, retrain: how many times.")
    temperature: float = rollout_default("temperature", 0.7)
    compose_runs: list[str] = config_field([], "Composed run merged into the replay buffer; repeatable.")
    confirm: str | None = config_field(None, "Policy spec that re-checks tasks whose samples disagree.")
    dev_tasks: int = config_field(50, "Dev tasks to score each round's student on (0: skip).")
    max_steps: int = rollout_default("max_steps", 10)
    student_options: dict[str, Any] = config_field({}, "Policy options of the student, e.g. max_new_tokens, "
                                                       "batch_size.")
    train_args: dict[str, Any] = config_field({}, "TrainConfig fields, e.g. max_steps.")
    resume: bool = config_field(False, "Continue an interrupted --out with the same settings (--rounds may "
                                       "grow): finished rounds are kept, sampling goes on where it stopped.")

    def own_problems(self) -> list[str]:
        problems = [f"--{name} must be at least 1, got {getattr(self, name)}"
                    for name in ("samples", "rounds") if getattr(self, name) < 1]
        return problems + recipe_problems(self, "self-distill", self.compose_runs, "--compose-run")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_args = {k: typed_train_arg(k, v) for k, v in self.train_args.items()}


@dataclass
class RoundStats:
    round: int
    student: str  # the policy that sampled this round
    sampled: int  # trajectories sampled (tasks x K, less errored episodes)
    successes: int
    sample_success_rate: float
    disputed: int  # tasks whose samples gave more than one final answer
    confirmed: int  # disputed tasks the confirm policy answered
    kept: int  # samples that passed the verifier (and the confirm policy)
    buffer_size: int
    buffer_added: int  # kept samples new to the buffer after deduplication
    trained: bool
    model: str | None  # the next round's student (an adapter dir), None when nothing was trained
    dev_success_rate: float | None
    train_steps: int = 0
    train_loss: float | None = None


@dataclass
class Gathered:
    """One round's data before training."""

    samples: list[Trajectory]
    disputed: set[str]
    answers: dict[str, str | None] | None  # the confirm policy's answer per disputed task
    kept: list[Trajectory]
    buffer: list[Trajectory]
    added: int


@dataclass
class SelfDistillResult:
    rounds: list[RoundStats]
    final_student: str


# ---- sampling and filtering ---------------------------------------------------------------------


def norm_answer(answer: str | None) -> str | None:
    if answer is None:
        return None
    return re.sub(r"\s+", " ", answer).strip().rstrip(".").lower() or None


def norm_text(traj: Trajectory) -> str:
    """Every assistant turn's text, whitespace-collapsed: the dedupe key of the buffer (with the task)."""
    return "\n".join(re.sub(r"\s+", " ", assistant_text(m)).strip() for m in traj.messages if m.role == "assistant")


def disputed_tasks(samples: list[Trajectory]) -> set[str]:
    """Tasks whose samples gave more than one distinct final answer."""
    answers: dict[str, set[str]] = {}
    for t in samples:
        a = norm_answer(t.outcome.final_answer)
        if a is not None:
            answers.setdefault(t.task_id, set()).add(a)
    return {task for task, seen in answers.items() if len(seen) > 1}


def keep_samples(samples: list[Trajectory], disputed: set[str],
                 confirmed: dict[str, str | None] | None) -> list[Trajectory]:
    """Verified successes; on a disputed task with a confirm policy, only those agreeing with it."""
    kept = []
    for t in samples:
        if not t.outcome.success:
            continue
        if confirmed is not None and t.task_id in disputed:
            if confirmed.get(t.task_id) is None or norm_answer(t.outcome.final_answer) != confirmed[t.task_id]:
                continue
        kept.append(t)
    return kept


def merge_buffer(buffer: list[Trajectory], new: list[Trajectory]) -> tuple[list[Trajectory], int]:
    """The buffer plus the new trajectories that are not already in it; and how many were added."""
    seen = {(t.task_id, norm_text(t)) for t in buffer}
    out = list(buffer)
    for t in new:
        key = (t.task_id, norm_text(t))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out, len(out) - len(buffer)


def as_buffer_entry(traj: Trajectory, round_no: int, sample: int) -> Trajectory:
    """A kept sample, labelled so that several samples of one (task, student) pair fit in one run."""
    teacher = traj.teacher.model_copy(update={"sampling": {**traj.teacher.sampling, "sample": f"{round_no}.{sample}"}})
    return traj.model_copy(update={"teacher": teacher})


def load_runs(runs: list[str]) -> list[Trajectory]:
    return [t for r in runs for t in RunStore.open(r).load()]


def write_run(path: Path, trajs: list[Trajectory], config: dict[str, Any]) -> None:
    with RunStore.create(path, config) as store:
        for t in trajs:
            store.append(t)


class _TaskCollector(Collector):
    """A collector limited to some of the split's first `tasks` tasks."""

    def __init__(self, cfg: CollectConfig, task_ids: set[str]):
        super().__init__(cfg)
        self.task_ids = task_ids

    def pairs(self, finished):
        return [(t, s) for t, s in super().pairs(finished) if t.id in self.task_ids]


# ---- one round ----------------------------------------------------------------------------------


class SelfDistiller(RoundsDir):
    config_file, kind, round_class = CONFIG_FILE, "self-distill", RoundStats

    async def sample(self, round_no: int, student: str) -> list[Trajectory]:
        out = []
        for k in range(self.cfg.samples):
            seed = self.cfg.seed + 1000 * round_no + k  # a seed of its own per sample, stable across reruns
            cc = self._collect_config(student, self.root / f"round-{round_no}" / f"samples-{k}", seed,
                                      self.cfg.temperature, self.cfg.student_options)
            store, _ = await collect_async(cc, self._listen(f"round {round_no} sample {k + 1}/{self.cfg.samples}"))
            errored = RunStore.open(cc.out).unfinished_errors()
            if errored:  # a buffer without them would be trained on and stand as the round's
                raise RunError(f"round {round_no} sample {k + 1}: {len(errored)} episodes errored (last: "
                               f"{errored[-1]['reason']}); nothing was trained, and the finished ones are kept: "
                               "run again to retry the rest")
            out += [as_buffer_entry(t, round_no, k) for t in store.load()]
        return out

    async def confirm(self, round_no: int, task_ids: set[str]) -> dict[str, str | None]:
        """The confirm policy's normalised final answer per disputed task (None: it gave none)."""
        spec = str(self.cfg.confirm)
        cc = self._collect_config(spec, self.root / f"round-{round_no}" / "confirm", self.cfg.seed, 0.0)
        collector = _TaskCollector(cc, task_ids)
        store = RunStore.create(cc.out, resolved_config(cc), resume=True)
        try:
            await collector.run(store, self._listen(f"round {round_no} confirm"))
        finally:
            store.write_stats()
            store.close()
        answers: dict[str, str | None] = dict.fromkeys(task_ids)
        for t in store.load():
            answers[t.task_id] = norm_answer(t.outcome.final_answer)
        return answers

    def _collect_config(self, spec: str, out: Path, seed: int, temperature: float,
                        options: dict[str, Any] | None = None) -> CollectConfig:
        rollout = {**self.cfg.rollout(), "seed": seed, "temperature": temperature}
        # resume=True: a new directory starts empty; one cut off by a crash goes on where it stopped.
        return CollectConfig(**rollout, teachers=[spec], out=str(out), teacher_options=options or {}, resume=True)

    def train(self, round_no: int, buffer_dir: Path) -> Any:
        tc = TrainConfig(data=[str(buffer_dir)], student=self.cfg.student,
                         out=str(self.root / f"round-{round_no}" / "model"), **self.cfg.train_args)
        return train(tc)

    async def dev_success(self, round_no: int, student: str) -> float | None:
        if self.cfg.dev_tasks == 0:
            return None
        c = self.cfg
        ec = EvalConfig(**{**c.rollout(), "split": "dev", "tasks": c.dev_tasks, "temperature": 0.0}, agents=[student],
                        out=str(self.root / f"round-{round_no}" / "dev"),
                        agent_options={k: v for k, v in c.student_options.items() if k != "temperature"})
        results = await evaluate_async(ec, self.listener)
        return results.agents[0].success_rate

    async def gather(self, round_no: int, student: str, buffer: list[Trajectory]) -> Gathered:
        """Sample, filter (verifier, then the confirm policy on disputed tasks) and merge into the buffer."""
        samples = await self.sample(round_no, student)
        disputed = disputed_tasks(samples)
        answers = await self.confirm(round_no, disputed) if self.cfg.confirm and disputed else None
        kept = keep_samples(samples, disputed, answers)
        merged, added = merge_buffer(buffer, kept)
        return Gathered(samples, disputed, answers, kept, merged, added)

    async def round(self, round_no: int, student: str, buffer: list[Trajectory]) -> tuple[RoundStats, list[Trajectory]]:
        g = await self.gather(round_no, student, buffer)
        buffer_dir = self.root / f"round-{round_no}" / "buffer"
        for derived in ("buffer", "model", "dev"):  # left by a cut-off attempt of this round: rebuilt
            shutil.rmtree(self.root / f"round-{round_no}" / derived, ignore_errors=True)
        write_run(buffer_dir, g.buffer, {"command": "self-distill buffer", "env": self.cfg.env, "round": round_no,
                                         "compose_runs": self.cfg.compose_runs, "student": student})
        result = self.train(round_no, buffer_dir) if any(t.outcome.success for t in g.buffer) else None
        model = f"hf:{Path(result.out).resolve()}" if result is not None else None
        dev = await self.dev_success(round_no, model or student)
        successes = sum(t.outcome.success for t in g.samples)
        stats = RoundStats(
            round=round_no, student=student, sampled=len(g.samples), successes=successes,
            sample_success_rate=successes / len(g.samples) if g.samples else 0.0, disputed=len(g.disputed),
            confirmed=sum(a is not None for a in (g.answers or {}).values()), kept=len(g.kept),
            buffer_size=len(g.buffer), buffer_added=g.added, trained=result is not None, model=model,
            dev_success_rate=dev, train_steps=result.steps if result else 0,
            train_loss=result.losses.get("loss") if result else None)
        return stats, g.buffer

    async def run(self, on_round: Callable[[RoundStats], None] | None = None) -> SelfDistillResult:
        self._start()
        stats, student = self._finished_rounds()
        if stats:
            buffer = RunStore.open(self.root / f"round-{len(stats)}" / "buffer").load()
        else:
            buffer, _ = merge_buffer([], load_runs(self.cfg.compose_runs))
        for r in range(len(stats) + 1, self.cfg.rounds + 1):
            s, buffer = await self.round(r, student, buffer)
            stats.append(s)
            student = s.model or student
            self._write_rounds(stats, student)
            if on_round:
                on_round(s)
        return SelfDistillResult(stats, student)

async def self_distill_async(cfg: SelfDistillConfig, listener: Listener | None = None,
                             on_round: Callable[[RoundStats], None] | None = None) -> SelfDistillResult:
    """Library entry point: run `cfg.rounds` rounds of self-distillation (see the module doc)."""
    return await SelfDistiller(cfg, listener).run(on_round)


def self_distill(cfg: SelfDistillConfig, listener: Listener | None = None,
                 on_round: Callable[[RoundStats], None] | None = None) -> SelfDistillResult:
    """Sync wrapper of `self_distill_async`."""
    return asyncio.run(self_distill_async(cfg, listener, on_round))
