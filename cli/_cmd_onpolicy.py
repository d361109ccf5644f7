"""`trajdistill onpolicy`: on-policy distillation of a student agent (black-box DAgger relabelling)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trajdistill.train import OnPolicyConfig

from . import _interrupt
from ._config import ConfigOption, UsageError, config_option, rollout_options
from ._console import console
from ._progress import EpisodeRows, episode_columns

# The options take their help and defaults from OnPolicyConfig; the library's functions load when the command
# runs.


def register(app: typer.Typer) -> None:
    app.command("onpolicy", context_settings={"allow_extra_args": True,
                                              "ignore_unknown_options": True})(onpolicy_command)


def pairs(items: list[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` items as a mapping; anything else is a one-line usage error naming the flag."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


@rollout_options(OnPolicyConfig, "env", "tasks", "max_steps", "stop_on_repeat", "concurrency", "seed", "temperature",
                 "sandbox", "env_params", "loop")
def onpolicy_command(
    ctx: typer.Context,
    student: str = config_option(OnPolicyConfig, "student"),
    teacher: list[str] = config_option(OnPolicyConfig, "teachers"),
    out: Path = config_option(OnPolicyConfig, "out"),
    mode: str = config_option(OnPolicyConfig, "mode"),
    rounds: int = config_option(OnPolicyConfig, "rounds"),
    beta_schedule: str = config_option(OnPolicyConfig, "beta_schedule"),
    labels: str = config_option(OnPolicyConfig, "labels"),
    route: list[str] = config_option(OnPolicyConfig, "routes"),
    data: list[Path] = config_option(OnPolicyConfig, "data"),
    dev_tasks: int = config_option(OnPolicyConfig, "dev_tasks"),
    student_backend: str = config_option(OnPolicyConfig, "student_backend"),
    student_option: list[str] = config_option(OnPolicyConfig, "student_options"),
    teacher_option: list[str] = config_option(OnPolicyConfig, "teacher_options"),
    resume: bool = config_option(OnPolicyConfig, "resume"),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """On-policy distillation: the student acts in the env, the teacher labels the student's own states.

    Mode dagger (black-box, any teacher spec): each round the student, mixed with the teacher by beta,
    rolls out through the ReAct loop and the sandbox; at every turn the teacher is asked for its own
    next turn from the same prefix. Those turns, taken at the student's states, are the round's training
    trajectories (OUT/round-R/relabels, a run directory, teacher recorded per turn); they aggregate
    across rounds and the original student retrains on them with the span-aware loss, then a dev eval.
    A teacher that cannot act from a state is recorded as a relabel failure.

    Mode reverse-kl (white-box, one hf: teacher with the student's tokenizer): each round the student
    alone samples its episodes (--temperature) and then trains on them with the per-token reverse KL to the
    teacher on every token it sampled, prompt and tool tokens masked, span weights applied (GKD with
    lambda 1; --train-act-kl forward for mode-covering [ACT] spans). The next round samples the new student.

    Trainer settings take a --train- prefix on the names of `trajdistill train`, e.g.
    `--train-max-steps 50 --train-curriculum none`; only_success is off unless --train-only-success."""
    from trajdistill.train import onpolicy_async, parse_train_args

    cfg = OnPolicyConfig(
        **rollout, student=student, teachers=list(teacher), out=str(out), mode=mode, rounds=rounds,
        beta_schedule=beta_schedule, labels=labels, routes=pairs(route, "--route"), data=[str(d) for d in data],
        dev_tasks=dev_tasks,
        student_backend=student_backend, student_options=pairs(student_option, "--student-option"),
        teacher_options=pairs(teacher_option, "--teacher-option"), train_args=parse_train_args(list(ctx.args)),
        resume=resume)
    with Progress(*episode_columns("onpolicy"), console=console, transient=False) as bar:

        def on_round(s) -> None:
            dev = f"{s.dev_success_rate:.1%}" if s.dev_success_rate is not None else "-"
            if cfg.mode == "reverse-kl":
                kd = f"{s.train_kd:.4f}" if s.train_kd is not None else "-"
                bar.console.print(f"round {s.round}: {s.labelled} student turns distilled, mean KL {kd}, "
                                  f"dev success {dev}")
                return
            bar.console.print(f"round {s.round} (beta {s.beta:g}): {s.labelled} turns relabelled, "
                              f"{s.relabel_failures} relabel failures, dev success {dev}")

        result = _interrupt.run(onpolicy_async(cfg, EpisodeRows(bar), on_round))
    rounds_table(console, result, cfg.mode)
    console.print(f"rounds written to [bold]{out}[/] (rounds.json); final student: {result.final_student}")


def rounds_table(console: Console, result, mode: str = "dagger") -> None:
    table = Table(title=f"on-policy distillation ({mode})", box=box.SIMPLE_HEAD)
    cols = ("round", "beta", "episodes", "rollout success", "student turns", "relabelled", "relabel failures",
            "agreement", "aggregate", "dev success")
    if mode == "reverse-kl":
        cols = ("round", "episodes", "rollout success", "student turns", "mean KL", "dev success")
    for col in cols:
        table.add_column(col, justify="right")
    for r in result.rounds:
        cells = {"round": str(r.round), "beta": f"{r.beta:g}", "episodes": str(r.episodes),
                 "rollout success": f"{r.rollout_success_rate:.1%}", "student turns": str(r.student_turns),
                 "relabelled": str(r.labelled), "relabel failures": str(r.relabel_failures),
                 "agreement": _pct(r.agreement), "aggregate": str(r.aggregate), "dev success": _pct(r.dev_success_rate),
                 "mean KL": f"{r.train_kd:.4f}" if r.train_kd is not None else "-"}
        table.add_row(*(cells[c] for c in cols))
    console.print(table)


def _pct(x: float | None) -> str:
    return f"{x:.1%}" if x is not None else "-"
