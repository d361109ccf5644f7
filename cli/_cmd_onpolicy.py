"""`trajdistill onpolicy`: on-policy distillation of a student agent (black-box DAgger relabelling)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ._config import ConfigOption, UsageError, env_params
from ._console import console
from ._progress import EpisodeRow, episode_columns

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


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


def onpolicy_command(
    ctx: typer.Context,
    student: str = typer.Option(..., help="Student policy spec, e.g. hf:smollm2-135m (or a trained model dir)."),
    teacher: list[str] = typer.Option(..., help="Teacher policy spec (expert:NAME, openai:MODEL@URL, hf:PATH); "
                                      "repeat for several, routed per task by --route (default: the first)."),
    env: str = typer.Option(..., help="Env name, e.g. math or twx:coin."),
    out: Path = typer.Option(..., help="Directory for the rounds (rollouts, relabels, models, rounds.json)."),
    mode: str = typer.Option("dagger", help="dagger: black-box relabelling; any policy spec can teach. "
                             "reverse-kl (white-box, per-token reverse KL on the student's samples) is not "
                             "implemented yet and is refused."),
    rounds: int = typer.Option(2, help="Roll out, relabel, retrain: how many times."),
    tasks: int = typer.Option(100, help="Train tasks rolled out each round (the same ones every round)."),
    beta_schedule: str = typer.Option("exp:1:0.5", help="Probability that the teacher's turn is executed instead "
                                      "of the student's, per round: exp:B0:DECAY (B0*DECAY^(r-1)), "
                                      "linear:B0:STEP, a list B1,B2,... (the last repeats) or one number."),
    route: list[str] = typer.Option([], help="CATEGORY=TEACHER: tasks of this category are labelled by that "
                                    "--teacher; repeatable."),
    data: list[Path] = typer.Option([], help="Run directory trained on every round next to the relabels "
                                    "(e.g. the teacher's SFT data); repeatable."),
    dev_tasks: int = typer.Option(50, help="Dev tasks to score each round's student on (0: skip)."),
    max_steps: int = typer.Option(10, help="Policy turns per episode."),
    concurrency: int = typer.Option(8, help="Episodes in flight at once (the hf backend batches them)."),
    temperature: float = typer.Option(0.7, help="Sampling temperature of the student in rollouts."),
    seed: int = typer.Option(0, help="Base seed of the student's sampling and of the beta draws."),
    sandbox: str = typer.Option("auto", help="Sandbox backend: auto, docker, nsjail, none."),
    env_param: list[str] = typer.Option([], help="KEY=VALUE env parameter; repeatable."),
    student_option: list[str] = typer.Option([], help="KEY=VALUE option of the student's backend, e.g. "
                                             "max_new_tokens=256; repeatable."),
    teacher_option: list[str] = typer.Option([], help="KEY=VALUE option of the teachers' backends; repeatable."),
    resume: bool = typer.Option(False, help="Continue an interrupted --out with the same settings (--rounds may "
                                "grow): finished rounds are kept, rollouts go on where they stopped."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """On-policy distillation: the student acts in the env, the teacher labels the student's own states.

    Mode dagger (black-box, any teacher spec): each round the student, mixed with the teacher by beta,
    rolls out through the ReAct loop and the sandbox; at every turn the teacher is asked for its own
    next turn from the same prefix. Those turns, taken at the student's states, are the round's training
    trajectories (OUT/round-R/relabels, a run directory, teacher recorded per turn); they aggregate
    across rounds and the original student retrains on them with the span-aware loss, then a dev eval.
    A teacher that cannot act from a state is recorded as a relabel failure. Mode reverse-kl (white-box)
    is not implemented yet.

    Trainer settings take a --train- prefix on the names of `trajdistill train`, e.g.
    `--train-max-steps 50 --train-curriculum none`; only_success is off unless --train-only-success."""
    from trajdistill.train import OnPolicyConfig, onpolicy, parse_train_args

    cfg = OnPolicyConfig(
        student=student, teachers=list(teacher), env=env, out=str(out), mode=mode, rounds=rounds, tasks=tasks,
        beta_schedule=beta_schedule, routes=pairs(route, "--route"), data=[str(d) for d in data],
        dev_tasks=dev_tasks, max_steps=max_steps, concurrency=concurrency, temperature=temperature, seed=seed,
        sandbox=sandbox, env_params=env_params(env_param), student_options=pairs(student_option, "--student-option"),
        teacher_options=pairs(teacher_option, "--teacher-option"), train_args=parse_train_args(list(ctx.args)),
        resume=resume)
    with Progress(*episode_columns("onpolicy"), console=console, transient=False) as bar:
        rows: dict[str, EpisodeRow] = {}

        def listener(label: str, p) -> None:
            if label not in rows:
                rows[label] = EpisodeRow(bar, label)
            rows[label](p)

        def on_round(s) -> None:
            dev = f"{s.dev_success_rate:.1%}" if s.dev_success_rate is not None else "-"
            bar.console.print(f"round {s.round} (beta {s.beta:g}): {s.labelled} turns relabelled, "
                              f"{s.relabel_failures} relabel failures, dev success {dev}")

        result = onpolicy(cfg, listener, on_round)
    rounds_table(console, result)
    console.print(f"rounds written to [bold]{out}[/] (rounds.json); final student: {result.final_student}")


def rounds_table(console: Console, result) -> None:
    table = Table(title="on-policy distillation (dagger)", box=box.SIMPLE_HEAD)
    for col in ("round", "beta", "episodes", "rollout success", "student turns", "relabelled", "relabel failures",
                "agreement", "aggregate", "dev success"):
        table.add_column(col, justify="right")
    for r in result.rounds:
        dev = f"{r.dev_success_rate:.1%}" if r.dev_success_rate is not None else "-"
        agree = f"{r.agreement:.1%}" if r.agreement is not None else "-"
        table.add_row(str(r.round), f"{r.beta:g}", str(r.episodes), f"{r.rollout_success_rate:.1%}",
                      str(r.student_turns), str(r.labelled), str(r.relabel_failures), agree, str(r.aggregate), dev)
    console.print(table)
