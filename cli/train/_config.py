"""`TrainConfig`: the settings of one `trajdistill train` run, checked as a whole."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trajdistill.agents import ALIASES, resolve_model
from trajdistill.envs import ConfigError
from trajdistill.trajectories import OutputError, check_output

from ._curriculum import Complexity, parse_curriculum

SPAN_NAMES = ("reason", "act", "answer")  # span kind ids 1, 2, 3 (0: untrained)
KL_MODES = ("forward", "reverse")


@dataclass
class TrainConfig:
    """Settings of one `trajdistill train` run; `train_config.yaml` in the output holds them."""

    data: list[str] = field(default_factory=list, metadata={"help": "Run directories to train on."})
    student: str = field(default="hf:smollm2-135m",
                         metadata={"help": "Student policy spec hf:<path|alias> (a model dir or smollm2-135m)."})
    out: str = field(default="", metadata={"help": "Output directory for the adapter (or weights) and reports."})
    reason_weight: float = field(default=1.0, metadata={"help": "Loss weight of [REASON] span tokens."})
    act_weight: float = field(default=2.0, metadata={"help": "Loss weight of [ACT] span tokens."})
    answer_weight: float = field(default=2.0, metadata={"help": "Loss weight of final-answer span tokens."})
    curriculum: str = field(default="none", metadata={
        "help": "none, complexity or staged:K (easy to hard; staged:K replays every kind to the end, measured best)."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the (curriculum-ordered) data."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides epochs when > 0."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (all linear layers)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    full_finetune: bool = field(default=True, metadata={
        "help": "Train all weights (the default: a 135M student learns the programs only this way at CPU budgets); "
                "off: a LoRA adapter."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Peak learning rate (linear decay); default 1e-4 for full fine-tuning, 2e-4 for LoRA."})
    batch_size: int = field(default=4, metadata={"help": "Sequences per device per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per sequence; longer ones are truncated."})
    packing: bool = field(default=True, metadata={
        "help": "Pack several trajectories into each max_length row (in order; they never attend to each other)."})
    only_success: bool = field(default=True, metadata={"help": "Train only on verified successful trajectories."})
    mask_failed_calls: bool = field(default=False, metadata={
        "help": "Do not train a turn whose tool call failed (an error observation came back): the student learns "
                "the turn that recovers, not the slip."})
    seed: int = field(default=0, metadata={"help": "Seed of LoRA init, shuffling and staged curricula."})
    logging_steps: int = field(default=1, metadata={"help": "Optimizer steps between logged losses."})
    complexity_alpha: float = field(default=1.0, metadata={"help": "Curriculum: weight of a reason token."})
    complexity_beta: float = field(default=1.0, metadata={"help": "Curriculum: weight of an act token."})
    complexity_gamma: float = field(default=25.0, metadata={"help": "Curriculum: weight of an agent step."})
    teacher_model: str | None = field(
        default=None, metadata={"help": "White-box teacher (local model path or alias, same tokenizer) for KD."})
    teacher_logprobs: bool = field(default=False, metadata={
        "help": "KD from a served teacher's per-token log-probabilities stored beside each --data run "
                "(teacher_logprobs.jsonl, written by `onpolicy --mode reverse-kl` with a vllm-serve: or openai: "
                "teacher): the sampled-token estimate of the reverse KL on every trained token."})
    kl: str = field(default="forward", metadata={"help": "KD divergence: forward or reverse (MiniLLM) KL."})
    kd_temperature: float = field(default=2.0, metadata={"help": "KD softmax temperature T (loss scaled by T^2)."})
    kd_weight: float = field(default=0.5, metadata={"help": "Weight of the KD term next to the span CE."})
    act_kl: str = field(default="", metadata={
        "help": "KD divergence on [ACT] spans where it should differ from --kl, e.g. forward (mode-covering actions "
                "under mode-seeking reverse KL elsewhere); empty: --kl everywhere."})
    ce_weight: float = field(default=1.0, metadata={
        "help": "Weight of the span CE on the data's tokens. 0 with --teacher-model: the KD term alone (on-policy "
                "reverse KL on the student's own samples, GKD with lambda 1)."})
    kd_cutoff_prob: float = field(default=0.0, metadata={
        "help": "Train each sequence only up to the first trained token to which the teacher gives a probability "
                "below this (that token included): past it the text is a prefix the teacher would not have "
                "written, and its distribution there is no target (on-policy KD of a student that often goes "
                "wrong). 0: every token. Needs a teacher_model or teacher_logprobs."})
    kd_max_token_kl: float = field(default=0.0, metadata={
        "help": "Leave out of the loss every trained token whose KD value (its KL to the teacher, or the sampled-token "
                "estimate) exceeds this many nats: on a student's own wrong samples a few tokens far outside the "
                "teacher's distribution carry most of the KL. 0: none. Needs a teacher_model or teacher_logprobs."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: on when CUDA has it, or the CPU has bf16 dot products (avx512_bf16, AMX)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.full_finetune else 2e-4
        problems = _problems(self)
        if problems:
            raise ConfigError(f"invalid train config: {'; '.join(problems)}")

    @property
    def span_weights(self) -> tuple[float, float, float]:
        return (self.reason_weight, self.act_weight, self.answer_weight)

    @property
    def student_target(self) -> str:
        """The model path or alias after `hf:`."""
        return self.student[3:] if self.student.startswith("hf:") else self.student

    def complexity(self) -> Complexity:
        return Complexity(self.complexity_alpha, self.complexity_beta, self.complexity_gamma)


def _problems(cfg: TrainConfig) -> list[str]:
    out = []
    if not cfg.data:
        out.append("data: give at least one run directory (--data RUN)")
    out += [f"data: {d} is not a run directory (no run.yaml)" for d in cfg.data if not (Path(d) / "run.yaml").is_file()]
    if not cfg.out:
        out.append("out: give an output directory (--out DIR)")
    else:
        try:
            check_output(cfg.out, cfg.data, kind="dir")
        except OutputError as e:
            out.append(str(e))
    out += student_problems(cfg.student)
    for name in ("reason_weight", "act_weight", "answer_weight", "complexity_alpha", "complexity_beta",
                 "complexity_gamma", "kd_weight", "lora_dropout", "ce_weight"):
        if getattr(cfg, name) < 0:
            out.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if max(cfg.reason_weight, cfg.act_weight, cfg.answer_weight) <= 0:
        out.append("reason_weight, act_weight, answer_weight: at least one must be > 0")
    for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "logging_steps", "learning_rate",
                 "kd_temperature"):
        if getattr(cfg, name) <= 0:
            out.append(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.max_length < 16:
        out.append(f"max_length must be >= 16, got {cfg.max_length}")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        out.append(f"epochs must be > 0 (or set max_steps), got {cfg.epochs}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        out.append(f"max_steps must be > 0, or -1 to train by epochs, got {cfg.max_steps}")
    try:
        parse_curriculum(cfg.curriculum)
    except ValueError as e:
        out.append(str(e))
    if cfg.kl not in KL_MODES:
        out.append(f"kl must be forward or reverse, got {cfg.kl!r}")
    if cfg.act_kl not in ("", *KL_MODES):
        out.append(f"act_kl must be forward, reverse or empty (as --kl), got {cfg.act_kl!r}")
    if cfg.ce_weight == 0 and not ((cfg.teacher_model or cfg.teacher_logprobs) and cfg.kd_weight > 0):
        out.append("ce_weight 0 trains on the KD term alone: give a teacher_model (or teacher_logprobs) and a "
                   "kd_weight > 0")
    if not 0 <= cfg.kd_cutoff_prob < 1:
        out.append(f"kd_cutoff_prob must be in [0, 1), got {cfg.kd_cutoff_prob}")
    if cfg.kd_max_token_kl < 0:
        out.append(f"kd_max_token_kl must be >= 0, got {cfg.kd_max_token_kl}")
    for name in ("kd_cutoff_prob", "kd_max_token_kl"):
        if getattr(cfg, name) and not (cfg.teacher_model or cfg.teacher_logprobs):
            out.append(f"{name} reads the teacher's view of each token: give a teacher_model (or "
                       "teacher_logprobs)")
    return out + _served_teacher_problems(cfg)


def _served_teacher_problems(cfg: TrainConfig) -> list[str]:
    """Stored log-probabilities of the sampled tokens estimate the reverse KL at T=1 only."""
    if not cfg.teacher_logprobs:
        return []
    out = []
    if cfg.teacher_model:
        out.append("teacher_logprobs and teacher_model: give one teacher")
    if cfg.kl != "reverse" or cfg.act_kl not in ("", "reverse"):
        out.append("teacher_logprobs hold the teacher's log-probability of each sampled token only, which "
                   "estimates the reverse KL: set kl reverse and no forward act_kl (that needs a local teacher_model)")
    if cfg.kd_temperature != 1:
        out.append(f"teacher_logprobs are at temperature 1: set kd_temperature 1, got {cfg.kd_temperature}")
    return out


def student_problems(student: str) -> list[str]:
    backend, sep, target = student.partition(":")
    if sep and backend != "hf" and len(backend) > 1:  # `C:\...` style paths are not specs
        return [f"student must be an hf:<path|alias> spec (only local transformers models train), got {student!r}"]
    target = target if sep and backend == "hf" else student
    if not target:
        return ["student: give hf:<path|alias>, e.g. hf:smollm2-135m"]
    if target in ALIASES:
        return []
    try:
        resolve_model(target)
    except FileNotFoundError as e:
        return [f"student: {e}"]
    return []
