"""`trajdistill eval`: agents on held-out tasks, live progress per agent, then a comparison table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trajdistill.agents._policy import option_help
from trajdistill.trajectories._taxonomy import as_row

from ._config import AllowUnsignedOption, ConfigOption, SkillsTopKOption, TrustOption, UsageError, env_params
from ._console import console, err_console
from ._progress import EpisodeRow, episode_columns

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast.


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    env: Optional[str] = typer.Option(None, help="Env name, e.g. math, twx:coin, mcp."),
    agent: list[str] = typer.Option([], help="Policy spec to evaluate; repeat to compare several agents."),
    split: str = typer.Option("test", help="train, dev or test."),
    tasks: int = typer.Option(100, help="Number of tasks from the split; every agent gets the same ones."),
    out: Optional[Path] = typer.Option(None, help="Directory for results.json, success.png and runs/."),
    concurrency: int = typer.Option(8, help="Episodes in flight at once."),
    max_steps: int = typer.Option(20, help="Policy turns per episode before it is cut off."),
    seed: int = typer.Option(0, help="Sampling seed passed to model policies."),
    temperature: float = typer.Option(0.0, help="Sampling temperature for model policies."),
    sandbox: str = typer.Option("auto", help="Sandbox backend: auto, docker, nsjail, none."),
    env_param: list[str] = typer.Option([], help="KEY=VALUE env parameter; repeatable."),
    skills: list[str] = typer.Option([], help="Skill box every agent mounts; repeatable."),
    preload_skills: bool = typer.Option(False, "--preload-skills", help="Put whole SKILL.md texts in the system "
                                        "prompt, not just the skill names (for agents that will not call read_skill)."),
    skills_top_k: int = SkillsTopKOption,
    agent_option: list[str] = typer.Option([], help="KEY=VALUE policy option, e.g. max_new_tokens=64; each agent "
                                           "takes the keys its backend knows; repeatable. " + option_help()),
    resume: bool = typer.Option(False, help="Continue an interrupted --out with the same settings: finished "
                                "episodes are kept, the rest run."),
    trust: list[str] = TrustOption,
    allow_unsigned: bool = AllowUnsignedOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Evaluate agents on the same held-out tasks: success with 95% CI, steps, invalid actions, tokens."""
    from trajdistill.agents import EvalConfig

    if not env:
        raise UsageError("give --env ENV, e.g. --env math")
    cfg = EvalConfig(env=env, agents=list(agent), split=split, tasks=tasks, out=str(out) if out else None,
                     concurrency=concurrency, max_steps=max_steps, seed=seed, temperature=temperature,
                     sandbox=sandbox, env_params=env_params(env_param), skills=list(skills),
                     preload_skills=preload_skills, skills_top_k=skills_top_k, agent_options=_agent_options(agent_option),
                     resume=resume, trust=list(trust), allow_unsigned=allow_unsigned)
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
        rows: dict[str, EpisodeRow] = {}

        def listener(spec: str, p) -> None:
            if spec not in rows:
                rows[spec] = EpisodeRow(bar, spec)
            rows[spec](p)

        try:
            results = asyncio.run(evaluate_async(cfg, listener, mount=mount_skills))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: no results.json was written")
            return 130
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
