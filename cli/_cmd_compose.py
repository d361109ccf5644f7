"""`trajdistill compose` (DualDistill composition) and `trajdistill self-distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trajdistill.train import SelfDistillConfig
from trajdistill.trajectories import ComposeConfig, compose_strategies

from . import _interrupt
from ._config import ConfigOption, config_argument, config_option, rollout_options
from ._console import console, err_console
from ._progress import EpisodeRows, episode_columns

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def register(app: typer.Typer) -> None:
    app.command("compose")(compose_command)
    app.command("self-distill", context_settings={"allow_extra_args": True,
                                                  "ignore_unknown_options": True})(self_distill_command)


# ---- compose ------------------------------------------------------------------------------------


def compose_command(
    runs: list[Path] = config_argument(ComposeConfig, "runs"),
    strategy: str = config_option(ComposeConfig, "strategy", default=..., registry=compose_strategies),
    out: Path = config_option(ComposeConfig, "out"),
    prefer: Optional[str] = config_option(ComposeConfig, "prefer"),
    transition: Optional[str] = config_option(ComposeConfig, "transition"),
    seed: int = config_option(ComposeConfig, "seed"),
    max_prefix_steps: int = config_option(ComposeConfig, "max_prefix_steps"),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Compose several teachers' trajectories into one training run (DualDistill)."""
    from trajdistill.trajectories import compose

    report = compose([str(r) for r in runs], strategy, str(out), prefer=prefer,
                     transition=transition, seed=seed, max_prefix_steps=max_prefix_steps)
    report_table(console, report)
    if len(report.teachers) == 1:
        # a valid run (the teacher's successes), so a warning: an error would block plain success filtering
        err_console.print(f"[yellow]warning:[/] only one teacher ({report.teachers[0]}) in these runs, so no task "
                          "had a second teacher to compare or switch to: its successes were kept as they are and "
                          "nothing was composed; give runs of two or more teachers over the same tasks",
                          highlight=False)
    console.print(f"run written to [bold]{out}[/] ({report.total.kept} trajectories, "
                  f"{report.total.composed} composed, {report.total.dropped} tasks dropped)")


def report_table(console: Console, report) -> None:
    """Per category and per difficulty: tasks, wins per teacher, composed transitions, dropped."""
    table = Table(title=f"compose ({report.strategy}): {report.total.tasks} tasks", box=box.SIMPLE_HEAD)
    table.add_column("group")
    for col in ("tasks", *report.teachers, "composed", "dropped"):
        table.add_column(col if col not in report.teachers else f"won {col}", justify="right")

    def row(name: str, g) -> None:
        table.add_row(name, str(g.tasks), *(str(g.won.get(t, 0)) for t in report.teachers),
                      str(g.composed), str(g.dropped))

    for key in sorted(report.by_category):
        row(key, report.by_category[key])
    table.add_section()
    for key in sorted(report.by_difficulty):
        row(f"level {key}", report.by_difficulty[key])
    table.add_section()
    row("total", report.total)
    console.print(table)
    for pair, n in sorted(report.transitions.items()):
        console.print(f"  transitions {pair}: {n}")


# ---- self-distill --------------------------------------------------------------------------------


@rollout_options(SelfDistillConfig, "env", "tasks", "max_steps", "stop_on_repeat", "concurrency", "seed", "temperature",
                 "sandbox", "env_params", "executor", "ray_address", "ray_workers", "loop")
def self_distill_command(
    ctx: typer.Context,
    student: str = config_option(SelfDistillConfig, "student"),
    samples: int = config_option(SelfDistillConfig, "samples"),
    out: Path = config_option(SelfDistillConfig, "out"),
    rounds: int = config_option(SelfDistillConfig, "rounds"),
    compose_run: list[Path] = config_option(SelfDistillConfig, "compose_runs"),
    confirm: Optional[str] = config_option(SelfDistillConfig, "confirm"),
    dev_tasks: int = config_option(SelfDistillConfig, "dev_tasks"),
    resume: bool = config_option(SelfDistillConfig, "resume"),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """Self-distillation: the student samples, the verifier keeps successes, the student retrains.

    Trainer settings take a --train- prefix on the names of `trajdistill train`, e.g.
    `--train-max-steps 50 --train-lora-r 8 --train-curriculum none`."""
    from trajdistill.train import parse_train_args, self_distill_async

    cfg = SelfDistillConfig(
        **rollout, student=student, samples=samples, out=str(out), rounds=rounds,
        compose_runs=[str(p) for p in compose_run], confirm=confirm, dev_tasks=dev_tasks,
        train_args=parse_train_args(list(ctx.args)), resume=resume)
    with Progress(*episode_columns("self-distill"), console=console, transient=False) as bar:

        def on_round(s) -> None:
            dev = f"{s.dev_success_rate:.1%}" if s.dev_success_rate is not None else "-"
            bar.console.print(f"round {s.round}: kept {s.kept}/{s.sampled} samples, buffer {s.buffer_size}, "
                              f"dev success {dev}")

        result = _interrupt.run(self_distill_async(cfg, EpisodeRows(bar), on_round))
    rounds_table(console, result)
    console.print(f"rounds written to [bold]{out}[/] (rounds.json); final student: {result.final_student}")


def rounds_table(console: Console, result) -> None:
    table = Table(title="self-distillation", box=box.SIMPLE_HEAD)
    for col in ("round", "sampled", "train success", "disputed", "kept", "buffer", "dev success"):
        table.add_column(col, justify="right")
    for r in result.rounds:
        dev = f"{r.dev_success_rate:.1%}" if r.dev_success_rate is not None else "-"
        table.add_row(str(r.round), str(r.sampled), f"{r.sample_success_rate:.1%}", str(r.disputed),
                      str(r.kept), str(r.buffer_size), dev)
    console.print(table)
