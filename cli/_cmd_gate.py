"""`trajdistill gate`: shadow-mode readiness of a student against its teacher; exit 0 promote, 1 hold."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from trajdistill.agents import GateConfig
from trajdistill.agents._policy import option_help

from ._cmd_eval import _agent_options
from ._config import ConfigOption, UsageError, config_option, rollout_options
from ._console import console, err_console


def register(app: typer.Typer) -> None:
    app.command("gate")(gate_command)


@rollout_options(GateConfig, env=None)
def gate_command(
    student: str = config_option(GateConfig, "student", default=""),
    teacher: str = config_option(GateConfig, "teacher", default=""),
    out: Optional[Path] = config_option(GateConfig, "out", default=None),
    agent_option: list[str] = typer.Option([], help="KEY=VALUE policy option for both agents; repeatable. "
                                           + option_help()),
    baseline: Optional[Path] = config_option(GateConfig, "baseline"),
    max_wrong_on_disagreement: float = config_option(GateConfig, "max_wrong_on_disagreement"),
    min_disagreement_rate: float = config_option(GateConfig, "min_disagreement_rate"),
    max_ece: float = config_option(GateConfig, "max_ece"),
    max_drift: float = config_option(GateConfig, "max_drift"),
    max_accuracy_drop: float = config_option(GateConfig, "max_accuracy_drop"),
    max_length_ratio: float = config_option(GateConfig, "max_length_ratio"),
    min_entropy_ratio: float = config_option(GateConfig, "min_entropy_ratio"),
    resume: bool = config_option(GateConfig, "resume"),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """Shadow mode: student and teacher on the same held-out tasks; agreement, calibration, behaviour, drift.

    Exit 0 when the student may be promoted, 1 when it is held (every reason on its own line)."""
    missing = [flag for flag, value in (("--env", rollout["env"]), ("--student", student), ("--teacher", teacher),
                                        ("--out", out)) if not value]
    if missing:
        raise UsageError(f"give {', '.join(missing)}")
    cfg = GateConfig(**rollout, student=student, teacher=teacher, out=str(out),
                     agent_options=_agent_options(agent_option), baseline=str(baseline) if baseline else None,
                     max_wrong_on_disagreement=max_wrong_on_disagreement,
                     min_disagreement_rate=min_disagreement_rate, max_ece=max_ece, max_drift=max_drift,
                     max_accuracy_drop=max_accuracy_drop, max_length_ratio=max_length_ratio,
                     min_entropy_ratio=min_entropy_ratio, resume=resume)
    raise typer.Exit(gate_cmd(console, cfg))


def gate_cmd(console: Console, cfg: GateConfig) -> int:
    from trajdistill.agents import gate
    from trajdistill.report import build_gate_report

    with console.status(f"gate: {cfg.student} against {cfg.teacher} on {cfg.tasks} {cfg.env} {cfg.split} tasks"):
        report = gate(cfg)
    html = build_gate_report(cfg.out, report)
    gate_table(console, report)
    for note in report.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
    for reason in report.reasons:
        err_console.print(f"[red]hold:[/] {reason}", highlight=False)
    verdict = "[green]promote[/]" if report.decision == "promote" else "[red]hold[/]"
    console.print(f"{verdict}: {Path(cfg.out) / 'gate.json'}, {html}")
    return 0 if report.decision == "promote" else 1


def gate_table(console: Console, r) -> None:
    a, c, b = r.agreement, r.calibration, r.behaviour
    table = Table(title=f"gate: {r.env} / {r.split}, {a.tasks} tasks", box=box.SIMPLE_HEAD)
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    t = r.thresholds
    wrong = a.student_wrong_on_disagreement
    rows = [("student success", f"{r.student_success:.1%}", ""),
            ("teacher success", f"{r.teacher_success:.1%}", ""),
            ("same final answer", f"{a.final_answer:.1%}", ""),
            ("same tool calls", f"{a.actions:.1%}", ""),
            (f"student wrong on the {a.disagreements} disagreements", "–" if wrong is None else f"{wrong:.1%}",
             f"<= {t['max_wrong_on_disagreement']:.0%}"),
            ("ECE", "–" if c.ece is None else f"{c.ece:.1%}", f"<= {t['max_ece']:.0%}"),
            ("length ratio (p50)", "–" if b.length_ratio is None else f"{b.length_ratio:.2f}",
             f"<= {t['max_length_ratio']:g}"),
            ("entropy ratio", "–" if b.entropy_ratio is None else f"{b.entropy_ratio:.2f}",
             f">= {t['min_entropy_ratio']:g}")]
    for name, value, limit in rows:
        table.add_row(name, value, limit)
    console.print(table)
