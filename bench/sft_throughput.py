"""SFT throughput: the span-aware trainer vs plain TRL SFTTrainer, same data, model and steps.

Both get the same pre-tokenized rows (a fresh `math` collection by the coder expert, curriculum
`none` so both shuffle with the same seed and see the same batches), the same SFTConfig (from
`sft_args`), a fresh student with LoRA r=16 on all linear layers, and run the same number of
optimizer steps. The plain trainer uses TRL's own collator and loss; the span-aware one adds the
span_kinds column, its collator and the span-weighted loss with per-kind logging. Runs alternate
(plain, span, plain, span, ...) so that load drift on a shared machine hits both alike.
tokens/s = non-padding tokens trained / train_runtime. Reports the median of the repeats and, since
other jobs' load on a shared machine only ever slows a run down, the best of the repeats too.

    python bench/sft_throughput.py [--model smollm2-135m|tiny] [--steps 4] [--repeats 3] [--tasks 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from trajdistill.agents import CollectConfig, build_tiny_llama, collect
from trajdistill.train import SpanCollator, TrainConfig, build_data, trainer_class
from trajdistill.train._trainer import _load_student, lora_config, sft_args


def one_run(cfg: TrainConfig, rows, span: bool) -> dict:
    from trl import SFTTrainer

    model, tokenizer, _ = _load_student(cfg)
    args = sft_args(cfg)
    args.disable_tqdm = True
    if span:
        trainer = trainer_class()(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                                  data_collator=SpanCollator(tokenizer.pad_token_id), peft_config=lora_config(cfg),
                                  span_weights=cfg.span_weights)
    else:
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows.remove_columns(["span_kinds"]),
                             processing_class=tokenizer, peft_config=lora_config(cfg))
    metrics = trainer.train().metrics
    tokens = trainer._total_train_tokens  # non-padding input tokens, counted the same way by both
    return {"tokens": tokens, "runtime_s": metrics["train_runtime"], "tokens_per_s": tokens / metrics["train_runtime"],
            "loss": trainer.state.log_history[-2].get("loss")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, or tiny for a 2-layer test model")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=2)
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=opts.tasks, out=str(work / "run"),
                          sandbox="none"))
    student = str(build_tiny_llama(work / "tiny")) if opts.model == "tiny" else opts.model
    cfg = TrainConfig(data=[str(work / "run")], student=f"hf:{student}", out=str(work / "out"), curriculum="none",
                      max_steps=opts.steps, batch_size=opts.batch_size, logging_steps=opts.steps)
    _, tokenizer, _ = _load_student(cfg)
    rows = build_data(cfg, tokenizer).dataset

    one_run(cfg, rows, span=True)  # warm-up: allocator, kernels, file cache
    runs: dict[str, list[dict]] = {"plain": [], "span": []}
    for _ in range(opts.repeats):
        for name in ("plain", "span"):
            runs[name].append(one_run(cfg, rows, span=name == "span"))
            print(name, json.dumps(runs[name][-1]), flush=True)

    med = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    best = {name: max(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}  # least disturbed by load
    print(json.dumps({"model": opts.model, "steps": opts.steps, "batch_size": opts.batch_size,
                      "rows": len(rows), "repeats": opts.repeats, "torch_threads": torch.get_num_threads(),
                      "platform": platform.platform(), "tokens_per_run": runs["span"][0]["tokens"],
                      "median_tokens_per_s": {k: round(v, 1) for k, v in med.items()},
                      "ratio": round(med["span"] / med["plain"], 3),
                      "best_tokens_per_s": {k: round(v, 1) for k, v in best.items()},
                      "ratio_best": round(best["span"] / best["plain"], 3)}))


if __name__ == "__main__":
    main()
