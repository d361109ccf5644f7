"""`trajdistill eval`: agents on held-out tasks, live progress per agent, then a comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trajdistill.agents import EvalConfig
from trajdistill.agents._policy import option_help
from trajdistill.trajectories._taxonomy import as_row

from . import _interrupt
from ._config import ConfigOption, UsageError, config_option, rollout_options
from ._console import console, err_console
from ._progress import EpisodeRows, episode_columns

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


@rollout_options(EvalConfig, env=None)
def eval_command(
    agent: list[str] = config_option(EvalConfig, "agents", default=[]),
    out: Optional[Path] = config_option(EvalConfig, "out"),
    agent_option: list[str] = typer.Option([], help="KEY=VALUE policy option, e.g. max_new_tokens=64; each agent "
                                           "takes the keys its backend knows; repeatable. " + option_help()),
    resume: bool = config_option(EvalConfig, "resume"),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """Evaluate agents on the same held-out tasks: success with 95% CI, steps, invalid actions, tokens."""
    if not rollout["env"]:
        raise UsageError("give --env ENV, e.g. --env math")
    cfg = EvalConfig(**rollout, agents=list(agent), out=str(out) if out else None,
                     agent_options=_agent_options(agent_option), resume=resume)
    raise typer.Exit(eval_cmd(console, cfg))


def _agent_options(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--agent-option must be KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key.replace("-", "_")] = value  # not a YAML scalar: keep the text
    return out


def eval_cmd(console: Console, cfg) -> int:
    from trajdistill.agents import evaluate_async
    from trajdistill.skills import mount_skills

    with Progress(*episode_columns("eval"), console=console, transient=False) as bar:
        try:
            results = _interrupt.run(evaluate_async(cfg, EpisodeRows(bar), mount=mount_skills))
        except KeyboardInterrupt:
            console.print(f"[yellow]{_interrupt.word()}[/]: no results.json was written")
            return _interrupt.exit_code()
    results_table(console, results)
    if results.out is not None:
        console.print(f"results written to [bold]{results.out}[/] (results.json, success.png, runs/)")
    return _all_errored(results)


def _all_errored(results) -> int:
    """1 when every episode of some agent errored: its success rate measures the endpoint, not the agent."""
    dead = [a for a in results.agents if a.all_errored]
    for a in dead:
        err_console.print(f"[red]error:[/] every episode of {a.spec} errored ({a.errors} of {a.n}), so it was "
                          f"not evaluated; first: {a.first_error}", highlight=False)
    return 1 if dead else 0


def results_table(console: Console, results) -> None:
    table = Table(title=f"eval: {results.env} / {results.split}, {results.tasks} tasks",
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column("agent", overflow="fold", min_width=min(32, max(len(a.spec) for a in results.agents)))
    for col in ("success", "errored", "failed", "95% CI", "n", "steps", "invalid", "tokens/ep", "wall"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("why episodes failed", overflow="fold")
    for a in results.agents:
        lo, hi = a.ci95
        table.add_row(a.spec, f"{a.success_rate:.1%}", f"[red]{a.errors}[/]" if a.errors else "0", str(a.failed),
                      f"{lo:.0%}-{hi:.0%}", str(a.n), f"{a.mean_steps:.2f}", f"{a.invalid_action_rate:.1%}",
                      f"{a.tokens_per_episode:.0f}", f"{a.wall_s:.1f}s", as_row(a.failures))
    console.print(table)
