"""Training throughput of the embedded student on CPU: today's setting against the new defaults, one run.

Every variant trains SmolLM2-135M on the same pre-tokenized `math` coder trajectories for the same
number of optimizer steps, from a fresh model, and the variants alternate (a, b, c, ..., a, b, c, ...)
so that load drift on a shared machine hits them alike. tokens/s = non-padding tokens of the timed
steps / their wall time; the first step of each run (allocator, kernels) is not timed.

  baseline   the old `train` defaults: LoRA r=16, fp32, one trajectory per row, TRL's SFTTrainer loss
             (its fused LM head computes every position's logits, in fp32)
  lora-fp32  the span-aware trainer: logits only where a token is trained; LoRA, fp32, unpacked
  full-fp32  + full fine-tuning + packing
  lora-bf16  LoRA, packing, bf16 autocast
  full-bf16  the new defaults: full fine-tuning, packing, bf16 autocast

With `--threads 1,2,4` every variant also runs at each torch intra-op thread count (the keys become
`variant@Nt`), to pick the thread setting.

    python bench/train_throughput.py [--steps 4] [--repeats 2] [--variants baseline,full-bf16] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from trajdistill.agents import CollectConfig, collect
from trajdistill.train import SpanCollator, TrainConfig, build_data, trainer_class
from trajdistill.train._trainer import _load_student, lora_config, sft_args

VARIANTS = {
    "baseline": dict(full_finetune=False, bf16=False, packing=False, plain=True),
    "lora-fp32": dict(full_finetune=False, bf16=False, packing=False),
    "full-fp32": dict(full_finetune=True, bf16=False, packing=True),
    "lora-bf16": dict(full_finetune=False, bf16=True, packing=True),
    "full-bf16": dict(full_finetune=True, bf16=True, packing=True),
}


class StepClock(TrainerCallback):
    """Wall time and trained-input tokens of every optimizer step after the first."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._start = 0.0
        self._seen = 0

    def on_step_begin(self, args, state, control, **kw):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        seen = self.trainer._total_train_tokens  # non-padding input tokens, counted alike by both trainers
        if state.global_step > 1:
            self.times.append(time.perf_counter() - self._start)
            self.tokens.append(seen - self._seen)
        self._seen = seen


def one_run(work: Path, run: Path, name: str, steps: int, batch: int) -> dict:
    from trl import SFTTrainer

    spec = dict(VARIANTS[name])
    plain = spec.pop("plain", False)
    cfg = TrainConfig(data=[str(run)], student="hf:smollm2-135m", out=str(work / name), max_steps=steps,
                      batch_size=batch, logging_steps=steps, curriculum="none", **spec)
    model, tokenizer, _ = _load_student(cfg)
    rows = build_data(cfg, tokenizer).dataset
    args = sft_args(cfg)
    args.disable_tqdm = True
    peft = None if cfg.full_finetune else lora_config(cfg)
    if plain:
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows.remove_columns(["span_kinds"]),
                             processing_class=tokenizer, peft_config=peft)
    else:
        trainer = trainer_class()(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                                  data_collator=SpanCollator(tokenizer.pad_token_id), peft_config=peft,
                                  span_weights=cfg.span_weights)
    clock = StepClock(trainer)
    trainer.add_callback(clock)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"variant": name, "tokens_per_s": sum(clock.tokens) / sum(clock.times),
            "s_per_step": statistics.median(clock.times), "tokens_per_step": statistics.median(clock.tokens),
            "loss": losses[-1] if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--threads", default="0",
                    help="comma-separated torch thread counts (0: torch's default, one per core)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    opts = ap.parse_args()
    threads = [int(t) for t in opts.threads.split(",")]
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    run = work / "run"
    collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=opts.tasks, out=str(run), sandbox="none"))
    default_threads = torch.get_num_threads()
    arms = [(name, t) for name in opts.variants.split(",") for t in threads]
    key = {arm: arm[0] if len(threads) == 1 else f"{arm[0]}@{arm[1] or default_threads}t" for arm in arms}
    runs: dict[str, list[dict]] = {key[arm]: [] for arm in arms}
    for _ in range(opts.repeats):
        for name, t in arms:
            torch.set_num_threads(t or default_threads)
            row = one_run(work, run, name, opts.steps, opts.batch_size) | {"threads": torch.get_num_threads()}
            runs[key[name, t]].append(row)
            print(json.dumps(row), flush=True)
    summary = {name: {"median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                      "best_tokens_per_s": max(r["tokens_per_s"] for r in rs),
                      "median_s_per_step": statistics.median(r["s_per_step"] for r in rs),
                      "tokens_per_step": rs[0]["tokens_per_step"]} for name, rs in runs.items()}
    print(json.dumps({"summary": summary, "steps": opts.steps, "repeats": opts.repeats, "batch_size": opts.batch_size,
                      "threads": threads, "platform": platform.platform(),
                      "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
