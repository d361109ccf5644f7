"""Span-aware curriculum SFT of a student agent: train, save the model and write its reports.

The loss is described in `_trainer.py`; the settings in `_config.py`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from trajdistill import __version__
from trajdistill.agents import ALIASES

from ._config import TrainConfig
from ._data import TrainData
from ._losses import final_losses, plot_losses
from ._trainer import build_trainer, rows_per_step


@dataclass
class TrainResult:
    out: Path
    steps: int
    examples: int
    rows: int
    losses: dict[str, float]  # final logged loss, loss_reason, loss_act, loss_answer
    stage_steps: list[int]
    train_runtime: float
    main_process: bool = True  # False on the other processes of a distributed run, which write nothing


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
                       train_runtime=float(output.metrics.get("train_runtime", 0.0)),
                       main_process=trainer.is_world_process_zero())


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


def _write_reports(cfg: TrainConfig, trainer: Any, data: TrainData, student_path: Path, out: Path,
                   losses: dict[str, float]) -> None:
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    curriculum = {"mode": cfg.curriculum, "examples": len(data.plan.scores), "rows": len(data.dataset),
                  "stage_sizes": data.plan.stage_sizes(), "stage_rows": data.stage_rows,
                  "stage_steps": trainer.stage_steps, "processes": trainer.args.world_size,
                  "rows_per_step": rows_per_step(trainer.args), "paced_from_rows": data.paced_from}
    (out / "curriculum.json").write_text(json.dumps(curriculum, indent=2))
    plot_losses(trainer.state.log_history, trainer.stage_steps, out / "loss.png")
    card = model_card(cfg, data, student_path, losses, trainer.state.global_step, trainer.stage_steps,
                      trainer.args.world_size, rows_per_step(trainer.args))
    (out / "README.md").write_text(card)


def model_card(cfg: TrainConfig, data: TrainData, student_path: Path, losses: dict[str, float], steps: int,
               stage_steps: list[int], processes: int, per_step: int) -> str:
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
              f"({len(data.dataset)} rows{', packed' if cfg.packing else ''}"
              + (f", evenly spaced over the {data.paced_from} ordered ones to fit {cfg.max_steps} "
                 f"step{'s' if cfg.max_steps != 1 else ''}" if data.paced_from else "") + "). Tokens in the data: "
              + ", ".join(f"{k} {v}" for k, v in data.trained_tokens.items()) + "."
              + (f" {data.cut} trajectories were longer than max_length {cfg.max_length}; their turns past it "
                 "were not trained." if data.cut else ""), "",
              "## Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {f.name} | {getattr(cfg, f.name)} |" for f in dataclasses.fields(cfg) if f.name != "data"]
    lines += [f"| processes | {processes} |", f"| rows per optimizer step | {per_step} |"]
    lines += ["", f"Curriculum `{cfg.curriculum}`: stages of {data.plan.stage_sizes()} examples, starting at "
              f"optimizer steps {', '.join(map(str, stage_steps))}.", "", "## Final losses", "",
              f"After {steps} optimizer steps (last logging window):", "", "| loss | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in losses.items()]
    lines += ["", "![loss curves](loss.png)", ""]
    return "\n".join(lines)
