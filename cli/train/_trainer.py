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
MiniLLM's mode-seeking form), at temperature T, weighted by the same span weights; `act_kl` picks
another direction for [ACT] tokens. The CE term is scaled by `ce_weight`: with 0 and the student's
own samples as data, the loss is per-token reverse KL on the student's tokens (on-policy
distillation, GKD with lambda 1). Both logits are computed only at the trained positions.
`kd_cutoff_prob` drops a sequence's tokens after its first one the teacher finds unlikely, and
`kd_max_token_kl` the tokens whose KD value exceeds it; N stays the trained-token count.
A served teacher (`teacher_logprobs`) gives log p_teacher of each sampled token only, stored with the
data; its KD term is the sampled-token estimate of the reverse KL (see `_sampled_kd`), and loss_kd logs
the mean of log p_student - log p_teacher.

Each span kind's mean CE over the logging window is logged as loss_reason, loss_act and
loss_answer (console and trainer_state.json). Under several processes (`accelerate launch`) each
kind's CE sum and token count are all-reduced before the division, so it is the mean over every
trained token of that kind, not a mean of per-process means (docs/training-at-scale.md).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajdistill.agents import adapter_base, bf16_is_fast, is_peft_adapter, resolve_model
from trajdistill.envs import ConfigError

from ._config import SPAN_NAMES, TrainConfig
from ._data import SpanCollator, TrainData, build_data, paced

# torch, transformers, trl and peft are imported inside the functions that use them: they take seconds to
# import, and the CLI reads TrainConfig for every `train --help`.


@functools.cache
def trainer_class() -> type:
    """SpanSFTTrainer; defined on first use because importing TRL takes seconds."""
    from trl import SFTTrainer

    return _define_trainer(SFTTrainer)


def __getattr__(name: str) -> Any:  # `from ._trainer import SpanSFTTrainer` builds the class lazily
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
                     kd_weight: float = 0.0, act_kl: str = "", ce_weight: float = 1.0,
                     teacher_logprobs: bool = False, kd_cutoff_prob: float = 0.0, kd_max_token_kl: float = 0.0,
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.span_weights = torch.tensor([1.0, *span_weights])
            self.sequential = sequential
            self.stage_steps = sorted(stage_steps or [1])
            self.n_stages = n_stages
            self.kl, self.kd_temperature, self.kd_weight = kl, kd_temperature, kd_weight
            self.act_kl, self.ce_weight = act_kl or kl, ce_weight
            self.kd_cutoff_prob, self.kd_max_token_kl = kd_cutoff_prob, kd_max_token_kl
            self.teacher = None
            if teacher is not None:
                self.teacher = self.accelerator.prepare_model(teacher.eval(), evaluation_mode=True)
            self.uses_kd = teacher is not None or teacher_logprobs  # a local teacher model, or stored log-probs
            self._span_window: dict[str, list] = {}  # mode -> [sums(4), counts(4), kd_sum, micro-steps]

        def _get_train_sampler(self, train_dataset=None):
            if self.sequential:  # keep the curriculum order; under several processes accelerate shards its batches
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            kinds = inputs.pop("span_kinds")[:, 1:]
            lengths = inputs.pop("lengths", None)
            t_logprobs = inputs.pop("teacher_logprobs", None)
            inputs["use_cache"] = False
            outputs, ce, mask, logits = self._forward_trained(model, inputs)
            kd, kd_value, t_lp = self._kd_terms(inputs, logits, kinds, mask, ce, t_logprobs)
            kept = self._kept(mode, inputs, mask, t_lp, kd_value)
            weights = self.span_weights.to(ce.device, ce.dtype)[kinds] * kept
            per_token = self.ce_weight * ce if kd is None else self.ce_weight * ce + self.kd_weight * kd
            num = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = (per_token * weights).sum() / torch.as_tensor(num, device=ce.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # DDP averages grads, as TRL
            self._record_spans(mode, ce.detach(), kd_value, kinds, mask)
            self._record_trl_metrics(mode, inputs, outputs, mask, lengths)
            if return_outputs:
                with torch.no_grad():
                    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return (loss, outputs) if return_outputs else loss

        def _forward_trained(self, model, inputs):
            """Logits only where the next token is trained (about a third of a ReAct trajectory's tokens):
            the vocabulary projection is the costliest matmul of a small model, so the rest is never computed."""
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logits = model(**self._fwd(inputs), logits_to_keep=F.pad(mask, (0, 1))).logits.float()  # (trained, vocab)
            targets = labels[mask]
            logp = logits.log_softmax(-1)  # once: the CE and the logged entropy both read it
            ce = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
            ce[mask] = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                entropy = -(logp.exp() * logp).sum(-1)
            outputs = _KDOutputs(log_probs=-ce, label_mask=mask, entropy=entropy,
                                 is_top1=logits.argmax(-1) == targets)
            return outputs, ce, mask, logits

        @staticmethod
        def _fwd(inputs):
            return {k: v for k, v in inputs.items() if k != "labels"}  # position t predicts label t + 1

        def _kd_terms(self, inputs, logits, kinds, mask, ce, t_logprobs):
            """Per position, the KD term of the loss, the KD value logged and the teacher's log-probability of the
            data's token (a local teacher's only with kd_cutoff_prob); (None, None, None) with no teacher."""
            if t_logprobs is not None:
                t_lp = t_logprobs[:, 1:].to(ce.dtype)
                return *self._sampled_kd(ce, t_lp, mask), t_lp
            if self.teacher is not None:
                kd, t_lp = self._kd(inputs, logits, kinds, mask)
                return kd, kd, t_lp
            return None, None, None

        def _kept(self, mode, inputs, mask, t_lp, kd_value):
            """The trained positions, less those past the first token the teacher finds unlikely (kd_cutoff_prob)
            and those whose KD value exceeds kd_max_token_kl; logs the share kept as kd_kept."""
            if kd_value is None or not (self.kd_cutoff_prob or self.kd_max_token_kl):
                return mask
            keep = mask
            if self.kd_cutoff_prob:
                pos = inputs.get("position_ids")
                starts = pos[:, 1:] == 0 if pos is not None else torch.zeros_like(mask)
                keep = teacher_support(t_lp, mask, starts, math.log(self.kd_cutoff_prob))
            if self.kd_max_token_kl:
                keep = keep & (kd_value.detach() <= self.kd_max_token_kl)
            kept = self.accelerator.reduce(torch.stack([keep.sum(), mask.sum()]).float(), "sum")
            self._metrics[mode]["kd_kept"].append((kept[0] / kept[1].clamp(min=1)).item())
            return keep

        @staticmethod
        def _sampled_kd(ce, t_logprobs, mask):
            """A served teacher gives only log p_teacher of each sampled token. Per token, k = log p_student -
            log p_teacher estimates the reverse KL; the loss term k.detach() * log p_student has the gradient
            k * grad log p_student, whose mean over the student's own samples is the gradient of
            KL(student || teacher) (Tinker's on-policy distillation: a policy gradient with reward -k)."""
            logp = -ce
            k = ((logp - t_logprobs) * mask).detach()
            return k * logp, k

        def _kd(self, inputs, logits, kinds, mask):
            """Per-token T^2-scaled KL to the teacher at the trained positions (zero elsewhere); [ACT] tokens
            use act_kl where it differs from kl."""
            with torch.no_grad():
                t_logits = self.teacher(**self._fwd(inputs), logits_to_keep=F.pad(mask, (0, 1))).logits.float()
            flat = kd_divergence(logits, t_logits, self.kl, self.kd_temperature)
            if self.act_kl != self.kl:
                act = kinds[mask] == SPAN_NAMES.index("act") + 1
                flat = torch.where(act, kd_divergence(logits, t_logits, self.act_kl, self.kd_temperature), flat)
            kd = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
            kd[mask] = flat
            if not self.kd_cutoff_prob:
                return kd, None  # the teacher's token log-probabilities cost a log-softmax over the vocabulary
            t_lp = torch.zeros_like(kd)
            targets = inputs["labels"][:, 1:][mask]
            t_lp[mask] = t_logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            return kd, t_lp

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

        def _record_trl_metrics(self, mode, inputs, outputs, mask, lengths=None):
            """The metrics TRL's own compute_loss logs (entropy, token accuracy, tokens seen: padding excluded)."""
            num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
            if outputs.entropy is not None:
                entropy = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
                self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
            correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
            if mode == "train":
                if lengths is not None:
                    local = lengths.sum()
                elif "attention_mask" in inputs:
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
            if self.uses_kd and counts[1:].sum() > 0:
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


def teacher_support(t_logprobs: Any, mask: Any, starts: Any, log_cutoff: float) -> Any:
    """`mask` less the trained positions that follow, in the same sequence, the first trained token whose teacher
    log-probability is below `log_cutoff` (that token stays: it is where the student left the teacher's support).
    Later tokens continue a prefix the teacher would not have written, where its distribution is no target.
    `starts` marks positions that begin a new packed sequence (position_ids 0); a row is one sequence otherwise."""
    import torch

    low = ((t_logprobs < log_cutoff) & mask).long()
    seen = low.cumsum(1)
    before = torch.where(starts, seen - low, torch.zeros_like(seen)).cummax(1).values  # lows of earlier sequences
    return mask & (seen - before - low == 0)


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


def default_bf16() -> bool:
    return bf16_is_fast()


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
        raise ConfigError(f"teacher_model {cfg.teacher_model} has vocab size {teacher.config.vocab_size}, the student "
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
        # every trainable weight gets a gradient each step, so DDP need not search the graph for unused ones
        ddp_find_unused_parameters=False,
        use_cpu=not _cuda())  # bf16 autocast on CPU is refused unless the Trainer is told it runs there


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def rows_per_step(args: Any) -> int:
    """Dataset rows in one optimizer step, over all processes (the global batch)."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def stage_steps(stage_rows: list[int], n_rows: int, args: Any, max_steps: int = -1) -> list[int]:
    """The first optimizer step (1-based, as `global_step` after it) that trains on each curriculum
    stage, for every epoch. The sampler is sequential and accelerate deals its batches to the processes
    in turn (process p gets batches p, p + N, ...), so step k trains rows [(k-1)*R, k*R) for R rows per
    step, whatever the number of processes N, and row r is in step r // R + 1."""
    world = max(1, args.world_size)
    per_step = rows_per_step(args)
    batches = math.ceil(n_rows / (args.per_device_train_batch_size * world))
    per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    total = max_steps if max_steps > 0 else math.ceil(per_epoch * args.num_train_epochs)
    steps = []
    for epoch in range(math.ceil(total / per_epoch)):
        steps += [epoch * per_epoch + r // per_step + 1 for r in stage_rows]
    return [s for s in steps if s <= total] or [1]


def build_trainer(cfg: TrainConfig) -> tuple[Any, TrainData, Path]:
    """The span-aware trainer, ready to `.train()`, with its data and the student's resolved path."""
    model, tokenizer, path = _load_student(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = sft_args(cfg)
    data = paced(build_data(cfg, tokenizer), cfg.max_steps * rows_per_step(args))
    teacher = _load_teacher(cfg, model)
    plan_steps = stage_steps(data.stage_rows, len(data.dataset), args, cfg.max_steps)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=data.dataset, processing_class=tokenizer,
        data_collator=SpanCollator(tokenizer.pad_token_id),
        peft_config=None if cfg.full_finetune or _is_peft_model(model) else lora_config(cfg),
        span_weights=cfg.span_weights, sequential=data.plan.sequential, stage_steps=plan_steps,
        n_stages=len(data.stage_rows),
        teacher=teacher, kl=cfg.kl, kd_temperature=cfg.kd_temperature, kd_weight=cfg.kd_weight,
        act_kl=cfg.act_kl, ce_weight=cfg.ce_weight, teacher_logprobs=cfg.teacher_logprobs,
        kd_cutoff_prob=cfg.kd_cutoff_prob, kd_max_token_kl=cfg.kd_max_token_kl)
    _warn_unsharded(trainer)
    return trainer, data, path


def _warn_unsharded(trainer: Any) -> None:
    """accelerate runs an FSDP config as plain DDP on a machine without an accelerator: say so once."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        if trainer.is_world_process_zero():
            warnings.warn("the accelerate config asks for FSDP, but accelerate shards only on accelerators: "
                          "on this machine every process holds the whole model (plain DDP)")
