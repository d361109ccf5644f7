"""Span-aware curriculum SFT of a student agent, on TRL's SFTTrainer and PEFT LoRA.

The loss of a batch (normalised per trained token):

    loss = sum_t w(t) * CE(t) / N,    w(t) = lambda_kind(t),  N = number of trained tokens

where t runs over the tokens whose label is not -100 (assistant text only: the encoder masks the
prompt, system and observation tokens), kind(t) is the span the token lies in (reason, act,
answer), and CE(t) = -log p(label_t | prefix). This is exactly
lambda_r*CE_sum(reason)/N + lambda_a*CE_sum(act)/N + lambda_ans*CE_sum(answer)/N. Under gradient
accumulation or several processes N is the Trainer's `num_items_in_batch` (the trained tokens of
the whole optimizer step), as in TRL's own loss. Dividing by N rather than by sum_t w(t) keeps two
properties: with lambda = 1, 1, 1 the loss is TRL's plain token-level SFT loss (to float rounding), and it
stays correct under gradient accumulation, where only N is known in advance. Raising a weight
therefore raises that span's gradient, not only its share. A trained token outside any span (the
encoder should not produce one) counts with weight 1.

With a white-box teacher (`teacher_model`), each trained token also gets
kd_weight * T^2 * KL(teacher_T || student_T) (forward) or KL(student_T || teacher_T) (reverse,
MiniLLM's mode-seeking form), at temperature T, weighted by the same span weights.

Each span kind's mean CE over the logging window is logged as loss_reason, loss_act and
loss_answer (console and trainer_state.json).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trajdistill import __version__
from trajdistill.agents import ALIASES, adapter_base, is_peft_adapter, resolve_model
from trajdistill.trajectories import OutputError, RunStore, check_output

from ._curriculum import Complexity, Plan, kind_counts, order, parse_curriculum, steps_of
from ._encode import encode

# torch, transformers, trl, peft, datasets and matplotlib are imported inside the functions that use them:
# they take seconds to import, and the CLI reads TrainConfig for every `train --help`.

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
    curriculum: str = field(default="none", metadata={"help": "none, complexity or staged:K (easy to hard)."})
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
    seed: int = field(default=0, metadata={"help": "Seed of LoRA init, shuffling and staged curricula."})
    logging_steps: int = field(default=1, metadata={"help": "Optimizer steps between logged losses."})
    complexity_alpha: float = field(default=1.0, metadata={"help": "Curriculum: weight of a reason token."})
    complexity_beta: float = field(default=1.0, metadata={"help": "Curriculum: weight of an act token."})
    complexity_gamma: float = field(default=25.0, metadata={"help": "Curriculum: weight of an agent step."})
    teacher_model: str | None = field(
        default=None, metadata={"help": "White-box teacher (local model path or alias, same tokenizer) for KD."})
    kl: str = field(default="forward", metadata={"help": "KD divergence: forward or reverse (MiniLLM) KL."})
    kd_temperature: float = field(default=2.0, metadata={"help": "KD softmax temperature T (loss scaled by T^2)."})
    kd_weight: float = field(default=0.5, metadata={"help": "Weight of the KD term next to the span CE."})
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
            raise ValueError(f"invalid train config: {'; '.join(problems)}")

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
                 "complexity_gamma", "kd_weight", "lora_dropout"):
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


# ---- data -------------------------------------------------------------------------------------

@dataclass
class TrainData:
    """The tokenized, curriculum-ordered training set and where it came from."""

    dataset: Any  # datasets.Dataset: input_ids, attention_mask, labels, span_kinds (+ position_ids if packed)
    plan: Plan
    stage_rows: list[int]  # dataset row where each curriculum stage begins
    provenance: list[dict[str, Any]]
    trained_tokens: dict[str, int]


def load_trajectories(cfg: TrainConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    """Trajectories of every run (successful only, unless told otherwise) and per-run provenance."""
    kept, provenance = [], []
    for run in cfg.data:
        trajs = RunStore.open(run).load()
        use = [t for t in trajs if t.outcome.success or not cfg.only_success]
        teachers: dict[str, int] = {}
        for t in use:
            teachers[t.teacher.spec] = teachers.get(t.teacher.spec, 0) + 1
        provenance.append({"run": str(Path(run).resolve()), "trajectories": len(trajs), "used": len(use),
                           "envs": sorted({t.env.name for t in use}), "teachers": teachers})
        kept += use
    if not kept:
        what = "successful trajectories" if cfg.only_success else "trajectories"
        raise ValueError(f"data: no {what} in {', '.join(cfg.data)}"
                         + (" (try --no-only-success)" if cfg.only_success else ""))
    return kept, provenance


def build_data(cfg: TrainConfig, tokenizer: Any) -> TrainData:
    """Encode, score, order (curriculum) and optionally pack the runs' trajectories."""
    from datasets import Dataset

    trajs, provenance = load_trajectories(cfg)
    rows, scores, tokens = [], [], dict.fromkeys(SPAN_NAMES, 0)
    weights = cfg.complexity()
    for traj in trajs:
        enc = encode(traj, tokenizer, max_length=cfg.max_length)
        if all(label == -100 for label in enc.labels):
            continue  # truncation left nothing to train on
        counts = kind_counts(enc.span_kinds, enc.labels)
        scores.append(weights.score(counts["reason"], counts["act"], steps_of(traj)))
        rows.append({"input_ids": list(enc.input_ids), "attention_mask": list(enc.attention_mask),
                     "labels": list(enc.labels), "span_kinds": list(enc.span_kinds)})
        tokens = {k: tokens[k] + counts[k] for k in tokens}
    if not rows:
        raise ValueError(f"max_length {cfg.max_length} leaves no trained tokens in any trajectory; raise max_length")
    plan = order(scores, cfg.curriculum, seed=cfg.seed)
    ordered = [rows[i] for i in plan.order]
    if cfg.packing:
        ordered, first_row = pack(ordered, cfg.max_length)
        stage_rows = [first_row[s] for s in plan.stage_starts]
    else:
        stage_rows = list(plan.stage_starts)
    return TrainData(Dataset.from_list(ordered), plan, stage_rows, provenance, tokens)


def pack(rows: list[dict[str, list[int]]], max_length: int) -> tuple[list[dict[str, list[int]]], list[int]]:
    """Concatenate rows, in order, into rows of at most max_length tokens.

    Greedy and order-preserving (so a curriculum survives packing). `position_ids` restart at 0 for
    each trajectory; with no attention_mask (the collator sends none for packed rows) and no cache
    (training), transformers reads the restarts as packed sequences and builds a block-diagonal
    causal mask, so trajectories never attend to each other (eager, sdpa, flex and flash
    attention alike; a test checks it for sdpa against separate forwards). The first label of each
    trajectory is masked: it would be predicted from the previous one. Returns the packed rows and,
    for each input row, the packed row it went into.
    """
    packed: list[dict[str, list[int]]] = []
    where: list[int] = []
    cur: dict[str, list[int]] | None = None
    for row in rows:
        n = len(row["input_ids"])
        if cur is None or len(cur["input_ids"]) + n > max_length:
            cur = {"input_ids": [], "labels": [], "span_kinds": [], "position_ids": []}
            packed.append(cur)
        cur["input_ids"] += row["input_ids"]
        cur["labels"] += [-100] + row["labels"][1:]
        cur["span_kinds"] += [0] + row["span_kinds"][1:]
        cur["position_ids"] += list(range(n))
        where.append(len(packed) - 1)
    return packed, where


@dataclass
class SpanCollator:
    """Pads input_ids, labels, span_kinds and attention_mask (or position_ids, for packed rows) on the right."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples])

        batch = {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", -100),
                 "span_kinds": padded("span_kinds", 0)}
        if "position_ids" in examples[0]:
            # the padding becomes its own short "sequence", so it never joins a real trajectory's mask
            batch["position_ids"] = torch.tensor([list(e["position_ids"]) + list(range(width - len(e["input_ids"])))
                                                  for e in examples])
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples])
        return batch


# ---- the trainer ------------------------------------------------------------------------------

@functools.cache
def trainer_class() -> type:
    """SpanSFTTrainer; defined on first use because importing TRL takes seconds."""
    from trl import SFTTrainer

    return _define_trainer(SFTTrainer)


def __getattr__(name: str) -> Any:  # `from ._sft import SpanSFTTrainer` builds the class lazily
    if name == "SpanSFTTrainer":
        return trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_trainer(base: type) -> type:  # noqa: C901 - one class body
    import torch
    import torch.nn.functional as F
    from torch.utils.data import SequentialSampler

    class _SpanSFTTrainer(base):
        """TRL SFTTrainer whose loss weights each trained token by its span kind (see module doc)."""

        def __init__(self, *args: Any, span_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                     sequential: bool = False, stage_steps: list[int] | None = None, n_stages: int = 1,
                     teacher: Any = None, kl: str = "forward", kd_temperature: float = 1.0,
                     kd_weight: float = 0.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.span_weights = torch.tensor([1.0, *span_weights])
            self.sequential = sequential
            self.stage_steps = sorted(stage_steps or [1])
            self.n_stages = n_stages
            self.kl, self.kd_temperature, self.kd_weight = kl, kd_temperature, kd_weight
            self.teacher = None
            if teacher is not None:
                self.teacher = self.accelerator.prepare_model(teacher.eval(), evaluation_mode=True)
            self._span_window: dict[str, list] = {}  # mode -> [sums(4), counts(4), kd_sum, micro-steps]

        def _get_train_sampler(self, train_dataset=None):
            if self.sequential:  # keep the curriculum order
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            kinds = inputs.pop("span_kinds")[:, 1:]
            inputs["use_cache"] = False
            if self.teacher is not None:
                outputs, ce, mask, kd = self._forward_kd(model, inputs)
            else:
                outputs, ce, mask = self._forward_trained(model, inputs)
                kd = None
            weights = self.span_weights.to(ce.device, ce.dtype)[kinds] * mask
            per_token = ce if kd is None else ce + self.kd_weight * kd
            num = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = (per_token * weights).sum() / torch.as_tensor(num, device=ce.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # DDP averages grads, as TRL
            self._record_spans(mode, ce.detach(), kd, kinds, mask)
            self._record_trl_metrics(mode, inputs, outputs, mask)
            if return_outputs:
                with torch.no_grad():
                    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return (loss, outputs) if return_outputs else loss

        def _forward_trained(self, model, inputs):
            """Logits only where the next token is trained (about a third of a ReAct trajectory's tokens):
            the vocabulary projection is the costliest matmul of a small model, so the rest is never computed."""
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            keep = F.pad(mask, (0, 1))  # position t predicts label t + 1
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**fwd, logits_to_keep=keep).logits.float()  # (trained tokens, vocab)
            targets = labels[mask]
            logp = logits.log_softmax(-1)  # once: the CE and the logged entropy both read it
            ce = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
            ce[mask] = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                entropy = -(logp.exp() * logp).sum(-1)
            outputs = _KDOutputs(log_probs=-ce, label_mask=mask, entropy=entropy,
                                 is_top1=logits.argmax(-1) == targets)
            return outputs, ce, mask

        def _forward_kd(self, model, inputs):
            """Full logits of student and teacher: per-token CE and T^2-scaled KL."""
            labels = inputs["labels"][:, 1:]
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**fwd).logits[:, :-1].float()
            with torch.no_grad():
                t_logits = self.teacher(**fwd).logits[:, :-1].float()
            mask = labels != -100
            ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
            kd = kd_divergence(logits, t_logits, self.kl, self.kd_temperature) * mask
            log_probs = -ce
            outputs = _KDOutputs(log_probs=log_probs, label_mask=mask,
                                 entropy=None, is_top1=(logits.argmax(-1) == labels) & mask)
            return outputs, ce, mask, kd

        def _record_spans(self, mode, ce, kd, kinds, mask):
            sums, counts, kd_sum, steps = self._span_window.get(mode) or [
                torch.zeros(4, device=ce.device), torch.zeros(4, device=ce.device),
                torch.zeros((), device=ce.device), 0]
            idx = kinds[mask].long()
            sums = sums.index_add(0, idx, ce[mask].float())
            counts = counts.index_add(0, idx, torch.ones_like(idx, dtype=counts.dtype))
            if kd is not None:
                kd_sum = kd_sum + kd.detach()[mask].float().sum()
            self._span_window[mode] = [sums, counts, kd_sum, steps + 1]

        def _record_trl_metrics(self, mode, inputs, outputs, mask):
            """The metrics TRL's own compute_loss logs (entropy, token accuracy, tokens seen)."""
            num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
            if outputs.entropy is not None:
                entropy = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
                self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
            correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
            if mode == "train":
                if "attention_mask" in inputs:
                    local = inputs["attention_mask"].sum()
                else:
                    local = torch.tensor(inputs["position_ids"].numel(), device=inputs["position_ids"].device)
                self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        def span_logs(self, mode: str) -> dict[str, float]:
            """Mean CE per span kind over the window since the last log (all processes); resets the window."""
            window = self._span_window.pop(mode, None)
            if window is None:
                return {}
            sums, counts, kd_sum = (self.accelerator.reduce(t, "sum") for t in window[:3])
            prefix = "eval_" if mode == "eval" else ""
            logs = {f"{prefix}loss_{name}": round((sums[i + 1] / counts[i + 1]).item(), 6)
                    for i, name in enumerate(SPAN_NAMES) if counts[i + 1] > 0}
            if self.teacher is not None and counts[1:].sum() > 0:
                logs[f"{prefix}loss_kd"] = round((kd_sum / counts.sum()).item(), 6)
            return logs

        def stage_at(self, step: int) -> int:
            """The curriculum stage (1-based) that optimizer step `step` ends in; stages repeat each epoch."""
            started = sum(1 for s in self.stage_steps if s <= step)
            return (max(1, started) - 1) % self.n_stages + 1

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "train" if self.model.training else "eval"
            spans = self.span_logs(mode)
            if spans and mode == "train" and self.n_stages > 1:
                spans["curriculum_stage"] = self.stage_at(self.state.global_step)
            logs.update(spans)
            super().log(logs, start_time)

    _SpanSFTTrainer.__name__ = _SpanSFTTrainer.__qualname__ = "SpanSFTTrainer"
    return _SpanSFTTrainer


@dataclass
class _KDOutputs:
    log_probs: Any
    label_mask: Any
    entropy: Any
    is_top1: Any


def kd_divergence(student_logits: Any, teacher_logits: Any, kl: str, temperature: float) -> Any:
    """Per-token KL at temperature T, times T^2 (Hinton et al. 2015); forward = KL(teacher || student),
    reverse = KL(student || teacher). TRL's GKD generalized JSD with beta 0 / 1 is exactly these."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental announces itself on import
        from trl.experimental.gkd import GKDTrainer

    beta = 0.0 if kl == "forward" else 1.0
    per_vocab = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta,
                                                temperature=temperature, reduction="none")
    return per_vocab.sum(-1) * temperature**2


# ---- setup -------------------------------------------------------------------------------------

def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return _cuda() and torch.cuda.is_bf16_supported()


def _cpu_bf16() -> bool:
    """The CPU has bf16 dot-product instructions, so autocast to bf16 runs about twice as fast as fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def default_bf16() -> bool:
    return _cuda_bf16() if _cuda() else _cpu_bf16()


def _load_student(cfg: TrainConfig) -> tuple[Any, Any, Path]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(cfg.student_target)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if is_peft_adapter(path):
        return _load_adapter_student(path, cfg), tokenizer, path
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, tokenizer, path


def _load_adapter_student(path: Path, cfg: TrainConfig) -> Any:
    """A trained adapter as the student (self-distillation rounds, further training): LoRA training goes on
    in that adapter, so the output is again one adapter over the original base; full fine-tuning merges it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(adapter_base(path)), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=not cfg.full_finetune)
    return model.merge_and_unload() if cfg.full_finetune else model


def _is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _load_teacher(cfg: TrainConfig, student: Any) -> Any:
    if not cfg.teacher_model:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(cfg.teacher_model)
    teacher = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher_model {cfg.teacher_model} has vocab size {teacher.config.vocab_size}, the student "
                         f"{student.config.vocab_size}: white-box KD needs the same tokenizer")
    teacher.requires_grad_(False)
    return teacher


def sft_args(cfg: TrainConfig) -> Any:
    """The SFTConfig: TRL's own dataset preparation is skipped (rows arrive tokenized with span kinds)."""
    from trl import SFTConfig

    bf16 = default_bf16() if cfg.bf16 is None else cfg.bf16
    return SFTConfig(
        output_dir=cfg.out, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        bf16=bf16, fp16=False, activation_checkpointing=cfg.gradient_checkpointing, max_length=cfg.max_length,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, packing=False,
        save_strategy="no", report_to="none", dataloader_pin_memory=_cuda(), dataloader_num_workers=0,
        use_cpu=not _cuda())  # bf16 autocast on CPU is refused unless the Trainer is told it runs there


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def stage_steps(stage_rows: list[int], n_rows: int, args: Any, max_steps: int = -1) -> list[int]:
    """The first optimizer step (1-based, as `global_step` after it) that trains on each curriculum
    stage, for every epoch; the sampler is sequential, so row r is in step r // rows_per_step + 1."""
    world = max(1, args.world_size)
    rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    batches = math.ceil(n_rows / (args.per_device_train_batch_size * world))
    per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    total = max_steps if max_steps > 0 else math.ceil(per_epoch * args.num_train_epochs)
    steps = []
    for epoch in range(math.ceil(total / per_epoch)):
        steps += [epoch * per_epoch + r // rows_per_step + 1 for r in stage_rows]
    return [s for s in steps if s <= total] or [1]


def build_trainer(cfg: TrainConfig) -> tuple[Any, TrainData, Path]:
    """The span-aware trainer, ready to `.train()`, with its data and the student's resolved path."""
    model, tokenizer, path = _load_student(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = sft_args(cfg)
    data = build_data(cfg, tokenizer)
    teacher = _load_teacher(cfg, model)
    plan_steps = stage_steps(data.stage_rows, len(data.dataset), args, cfg.max_steps)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=data.dataset, processing_class=tokenizer,
        data_collator=SpanCollator(tokenizer.pad_token_id),
        peft_config=None if cfg.full_finetune or _is_peft_model(model) else lora_config(cfg),
        span_weights=cfg.span_weights, sequential=data.plan.sequential, stage_steps=plan_steps,
        n_stages=len(data.stage_rows),
        teacher=teacher, kl=cfg.kl, kd_temperature=cfg.kd_temperature, kd_weight=cfg.kd_weight)
    return trainer, data, path


# ---- train and report --------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path
    steps: int
    examples: int
    rows: int
    losses: dict[str, float]  # final logged loss, loss_reason, loss_act, loss_answer
    stage_steps: list[int]
    train_runtime: float


def train(cfg: TrainConfig) -> TrainResult:
    """Train the student on the runs in `cfg.data` and write everything to `cfg.out`."""
    trainer, data, student_path = build_trainer(cfg)
    output = trainer.train()
    out = Path(cfg.out)
    _save_model(trainer, cfg, student_path, out)
    trainer.save_state()  # trainer_state.json, with loss_reason/loss_act/loss_answer in log_history
    losses = final_losses(trainer.state.log_history)
    if trainer.is_world_process_zero():
        _write_reports(cfg, trainer, data, student_path, out, losses)
    return TrainResult(out=out, steps=trainer.state.global_step, examples=len(data.plan.scores),
                       rows=len(data.dataset), losses=losses, stage_steps=trainer.stage_steps,
                       train_runtime=float(output.metrics.get("train_runtime", 0.0)))


def _save_model(trainer: Any, cfg: TrainConfig, student_path: Path, out: Path) -> None:
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        _name_base_portably(out, cfg)


def _name_base_portably(out: Path, cfg: TrainConfig) -> None:
    """An adapter of the embedded model names the alias, not this machine's cache path."""
    path = out / "adapter_config.json"
    if path.is_file() and cfg.student_target in ALIASES:
        adapter = json.loads(path.read_text())
        adapter["base_model_name_or_path"] = cfg.student_target
        path.write_text(json.dumps(adapter, indent=2, sort_keys=True))


def final_losses(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of loss and of each span loss."""
    out: dict[str, float] = {}
    for entry in history:
        for key in ("loss", *(f"loss_{n}" for n in SPAN_NAMES), "loss_kd"):
            if key in entry:
                out[key] = float(entry[key])
    return out


def _write_reports(cfg: TrainConfig, trainer: Any, data: TrainData, student_path: Path, out: Path,
                   losses: dict[str, float]) -> None:
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    curriculum = {"mode": cfg.curriculum, "examples": len(data.plan.scores), "rows": len(data.dataset),
                  "stage_sizes": data.plan.stage_sizes(), "stage_rows": data.stage_rows,
                  "stage_steps": trainer.stage_steps}
    (out / "curriculum.json").write_text(json.dumps(curriculum, indent=2))
    plot_losses(trainer.state.log_history, trainer.stage_steps, out / "loss.png")
    card = model_card(cfg, data, student_path, losses, trainer.state.global_step, trainer.stage_steps)
    (out / "README.md").write_text(card)


def plot_losses(history: list[dict[str, Any]], stage_steps: list[int], path: Path) -> None:
    """Per-span loss curves with the curriculum stage boundaries as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "k-"), ("loss_reason", "C0-"), ("loss_act", "C1-"), ("loss_answer", "C2-"),
                       ("loss_kd", "C3--")):
        points = [(e["step"], e[key]) for e in history if key in e and "step" in e]
        if points:
            ax.plot(*zip(*points), style, marker="." if len(points) < 30 else None, label=key)
    for i, step in enumerate(s for s in stage_steps if s > 1):  # a stage begins inside step s
        ax.axvline(step - 0.5, color="grey", linestyle=":", label="curriculum stage" if i == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token CE")
    ax.set_title("span-aware SFT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(cfg: TrainConfig, data: TrainData, student_path: Path, losses: dict[str, float], steps: int,
               stage_steps: list[int]) -> str:
    kind = "full fine-tune" if cfg.full_finetune else f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} (all-linear)"
    lines = [f"# {Path(cfg.out).name}", "",
             f"A student agent trained by trajdistill {__version__} with span-aware curriculum SFT "
             f"(Structured Agent Distillation, arXiv 2505.13820).", "",
             f"- base model: `{cfg.student}` ({student_path})", f"- method: {kind}",
             f"- load it as a policy: `hf:{Path(cfg.out).resolve()}`", "", "## Data", "",
             "| run | trajectories | used | envs | teachers |", "|---|---|---|---|---|"]
    for p in data.provenance:
        teachers = ", ".join(f"{k} ({v})" for k, v in p["teachers"].items())
        lines.append(f"| {p['run']} | {p['trajectories']} | {p['used']} | {', '.join(p['envs'])} | {teachers} |")
    lines += ["", f"Only successful trajectories: {cfg.only_success}. Examples trained: {len(data.plan.scores)} "
              f"({len(data.dataset)} rows{', packed' if cfg.packing else ''}). Trained tokens: "
              + ", ".join(f"{k} {v}" for k, v in data.trained_tokens.items()) + ".", "",
              "## Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {f.name} | {getattr(cfg, f.name)} |" for f in dataclasses.fields(cfg) if f.name != "data"]
    lines += ["", f"Curriculum `{cfg.curriculum}`: stages of {data.plan.stage_sizes()} examples, starting at "
              f"optimizer steps {', '.join(map(str, stage_steps))}.", "", "## Final losses", "",
              f"After {steps} optimizer steps (last logging window):", "", "| loss | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in losses.items()]
    lines += ["", "![loss curves](loss.png)", ""]
    return "\n".join(lines)

