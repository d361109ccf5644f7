"""`trajdistill train`: span-aware curriculum SFT of a student on collected runs.

Every option is named after its `TrainConfig` field, so `--config` YAML files (including the
`train_config.yaml` a run writes) use the same keys. Progress comes from the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ._config import ConfigOption
from ._console import console

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def _field(name: str):
    from trajdistill.train import TrainConfig

    return TrainConfig.__dataclass_fields__[name]


def _default(name: str):
    return _field(name).default


def _help(name: str) -> str:
    return _field(name).metadata["help"]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        data: list[Path] = typer.Option(..., help="Run directory to train on; repeat for several."),
        student: str = typer.Option(_default("student"), help=_help("student")),
        out: Path = typer.Option(..., help=_help("out")),
        reason_weight: float = typer.Option(_default("reason_weight"), help=_help("reason_weight")),
        act_weight: float = typer.Option(_default("act_weight"), help=_help("act_weight")),
        answer_weight: float = typer.Option(_default("answer_weight"), help=_help("answer_weight")),
        curriculum: str = typer.Option(_default("curriculum"), help=_help("curriculum")),
        epochs: float = typer.Option(_default("epochs"), help=_help("epochs")),
        max_steps: int = typer.Option(_default("max_steps"), help=_help("max_steps")),
        lora_r: int = typer.Option(_default("lora_r"), help=_help("lora_r")),
        lora_alpha: int = typer.Option(_default("lora_alpha"), help=_help("lora_alpha")),
        lora_dropout: float = typer.Option(_default("lora_dropout"), help=_help("lora_dropout")),
        full_finetune: bool = typer.Option(_default("full_finetune"), "--full/--lora", help=_help("full_finetune")),
        learning_rate: Optional[float] = typer.Option(None, help=_help("learning_rate")),
        batch_size: int = typer.Option(_default("batch_size"), help=_help("batch_size")),
        grad_accum: int = typer.Option(_default("grad_accum"), help=_help("grad_accum")),
        max_length: int = typer.Option(_default("max_length"), help=_help("max_length")),
        packing: bool = typer.Option(_default("packing"), "--packing/--no-packing", help=_help("packing")),
        only_success: bool = typer.Option(True, "--only-success/--no-only-success", help=_help("only_success")),
        mask_failed_calls: bool = typer.Option(False, "--mask-failed-calls", help=_help("mask_failed_calls")),
        seed: int = typer.Option(_default("seed"), help=_help("seed")),
        logging_steps: int = typer.Option(_default("logging_steps"), help=_help("logging_steps")),
        complexity_alpha: float = typer.Option(_default("complexity_alpha"), help=_help("complexity_alpha")),
        complexity_beta: float = typer.Option(_default("complexity_beta"), help=_help("complexity_beta")),
        complexity_gamma: float = typer.Option(_default("complexity_gamma"), help=_help("complexity_gamma")),
        teacher_model: Optional[str] = typer.Option(None, help=_help("teacher_model")),
        kl: str = typer.Option(_default("kl"), help=_help("kl")),
        kd_temperature: float = typer.Option(_default("kd_temperature"), help=_help("kd_temperature")),
        kd_weight: float = typer.Option(_default("kd_weight"), help=_help("kd_weight")),
        act_kl: str = typer.Option(_default("act_kl"), help=_help("act_kl")),
        ce_weight: float = typer.Option(_default("ce_weight"), help=_help("ce_weight")),
        teacher_logprobs: bool = typer.Option(False, "--teacher-logprobs", help=_help("teacher_logprobs")),
        bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help=_help("bf16")),
        gradient_checkpointing: bool = typer.Option(False, help=_help("gradient_checkpointing")),
        config: Optional[Path] = ConfigOption,
    ) -> None:
        """Span-aware SFT of a student on trajectories (full fine-tuning in bf16 where the hardware has it, packed)."""
        from trajdistill.train import TrainConfig

        settings = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
        cfg = TrainConfig(**{**settings, "data": [str(d) for d in data], "out": str(out)})
        train_cmd(console, cfg)


def train_cmd(console: Console, cfg) -> None:
    from trajdistill.train import train

    result = train(cfg)
    if not result.main_process:
        return  # under accelerate launch every process trains; one reports
    table = Table(title=f"trained {result.steps} steps on {result.examples} trajectories")
    table.add_column("loss")
    table.add_column("final", justify="right")
    for key, value in result.losses.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"student written to [bold]{result.out}[/]; use it as [bold]hf:{result.out}[/]")
