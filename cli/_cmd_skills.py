"""`trajdistill skills ...`: mine and inspect skill boxes (serve and validate add to `skills_app`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from trajdistill.agents import RolloutConfig
from trajdistill.skills import MineConfig, miners

from . import _interrupt
from ._config import AllowUnsignedOption, ConfigOption, TrustOption, config_argument, config_option, rollout_options
from ._console import console

# Each command imports its library modules when it runs, so that `trajdistill --help` stays fast (importing
# `trajdistill.skills` is light: serving, mounting and validating load the MCP SDK on first use).

skills_app = typer.Typer(help="Mine, inspect, validate and serve skill boxes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(skills_app, name="skills")


@skills_app.command("mine")
def mine_cmd(
    runs: list[Path] = config_argument(MineConfig, "runs"),
    out: Path = config_option(MineConfig, "out"),
    analyst: Optional[str] = config_option(MineConfig, "analyst"),
    mode: str = config_option(MineConfig, "mode", registry=miners),
    workers: int = config_option(MineConfig, "workers"),
    sandbox: str = config_option(MineConfig, "sandbox"),
    min_support: Optional[int] = config_option(MineConfig, "min_support"),
    name: Optional[str] = config_option(MineConfig, "name"),
    force: bool = config_option(MineConfig, "force", "--force"),
    key: Optional[Path] = config_option(MineConfig, "key"),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Mine a skill box (SKILL.md docs and sandboxed tools) from trajectories, self-check it, and sign it."""
    from trajdistill.skills import BoxError, mine_async

    cfg = MineConfig(runs=[str(r) for r in runs], out=str(out), analyst=analyst, mode=mode, workers=workers,
                     sandbox=sandbox, name=name, force=force, min_support=min_support,
                     key=str(key) if key else None)
    with Progress(TextColumn("[bold]mine[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("loading runs", total=None)

        def listener(stage: str, done: int, total: int) -> None:
            bar.update(job, description=stage, completed=done, total=total)

        result = _interrupt.run(mine_async(cfg, listener=listener))
    console.print(f"box written to [bold]{out}[/]: {result.summary()}", highlight=False)
    if not result.check.ok:
        bad = [f"{n} ({r.first_failure})" for n, r in result.check.tools.items() if r.failed]
        raise BoxError(f"the mined box failed its own validation: {'; '.join(bad)}")


@skills_app.command("inspect")
def inspect_cmd(box: Path = typer.Argument(..., help="Skill box directory."),
                trust: list[str] = TrustOption,
                allow_unsigned: bool = AllowUnsignedOption,
                check: bool = typer.Option(False, "--check", help="Run the tool tests now, in the sandbox, and "
                                                                  "show that result instead of the recorded one."),
                sandbox: str = typer.Option("auto", help="Sandbox backend for --check: auto, docker, nsjail, none."),
                config: Optional[Path] = ConfigOption) -> None:
    """Print a box's skills, tool signatures, provenance and validation results (files and signature verified)."""
    from trajdistill.skills import SkillBox
    from trajdistill.skills._trust import Trust

    loaded = SkillBox.load(box, trust=Trust.of(trust, allow_unsigned))
    fresh = None
    if check:
        from trajdistill.skills import check_box_async

        fresh = _interrupt.run(check_box_async(loaded, sandbox=sandbox, record=False))
    show_box(console, loaded, fresh.doc() if fresh is not None else None)


@skills_app.command("sign")
def sign_cmd(box: Path = typer.Argument(..., help="Skill box directory."),
             key: Optional[Path] = typer.Option(None, help="PEM file of the Ed25519 key to sign with; default: "
                                                           "this machine's key."),
             sandbox: str = typer.Option("auto", help="Sandbox backend for the self-check: auto, docker, nsjail, "
                                                      "none."),
             config: Optional[Path] = ConfigOption) -> None:
    """Run the box's self-check afresh, then sign its manifest (file hashes and that result)."""
    from trajdistill.skills import SkillBox, check_box_async
    from trajdistill.skills._trust import load_private_key, local_key

    signer = load_private_key(key) if key else local_key()
    loaded = SkillBox.load(box)  # the files must match their hashes; the old signature does not matter
    result = _interrupt.run(check_box_async(loaded, sandbox=sandbox))
    kid = loaded.sign(signer)
    console.print(f"signed {box} by {kid}; self-check {'passed' if result.ok else 'FAILED'}; "
                  f"manifest digest {loaded.digest}", highlight=False, soft_wrap=True)


@skills_app.command("trust")
def trust_cmd(value: str = typer.Argument(..., help="ed25519:KEY, a PEM key file, or a box's sha256:DIGEST."),
              config: Optional[Path] = ConfigOption) -> None:
    """Trust a signing key (or pin one box's manifest digest) everywhere, in the user config's trust file."""
    from trajdistill.skills._trust import TRUST_FILE, add_trusted, config_dir

    entry = add_trusted(value)
    console.print(f"trusted {entry} (in {config_dir() / TRUST_FILE})", highlight=False, soft_wrap=True)


@skills_app.command("rename-tools")
def rename_tools_cmd(run: Path = typer.Argument(..., help="Run directory with boxed trajectories."),
                     out: Path = typer.Option(..., help="The new run directory to write."),
                     share: float = typer.Option(0.5, help="Share of the boxed trajectories that get new tool names."),
                     seed: int = typer.Option(0, help="Seed of which trajectories, and which names."),
                     params: bool = typer.Option(False, "--params", help="Rename the tools' parameters too (the "
                                                 "signature in the list and every Action Input)."),
                     config: Optional[Path] = ConfigOption) -> None:
    """Copy a boxed run, giving a share of its trajectories fresh names for their box tools (in the tool list,
    every Action, Thought and observation), so that a student trained on it reads the tool list it is given."""
    from trajdistill.skills import rename_tools

    r = rename_tools(run, out, share=share, seed=seed, params=params)
    console.print(f"run written to [bold]{out}[/]: {r.renamed} of {r.trajectories} trajectories renamed "
                  f"({r.boxed} listed box tools)", highlight=False)


def show_box(console: Console, box: Any, fresh: dict[str, Any] | None = None) -> None:
    console.print(f"[bold]{box.name}[/] {box.version}  env [bold]{box.env}[/]  "
                  f"created {box.manifest.get('created_at', '?')}  ({len(box.manifest['files'])} files, verified)",
                  highlight=False)
    if box.trust is not None:
        console.print(f"trust: {box.trust.how}; manifest digest {box.digest}", highlight=False, soft_wrap=True)
    skills = Table(title="skills", title_justify="left", show_lines=False)
    for col in ("skill", "description", "trajectories"):
        skills.add_column(col, overflow="fold")
    for s in box.skills:
        skills.add_row(s.name, s.description, str(_count(box.sources_of("skills", s.name))))
    console.print(skills if box.skills else "no skills")
    console.print("[bold]tools[/]" if box.tools else "no tools")
    for t in box.tools:  # one line each, never folded: signatures are what people search for
        console.print(f"  {t.signature}", highlight=False, soft_wrap=True)
        console.print(f"      {t.spec.description.splitlines()[0]} ({len(box.tests.get(t.name, []))} tests, "
                      f"{_count(box.sources_of('tools', t.name))} trajectories)", highlight=False)
    _provenance(console, box)
    _validation(console, box.validation, fresh, vouched=box.trust is None or box.trust.vouched)


def _count(sources: dict[str, list[str]]) -> int:
    return sum(len(v) for v in sources.values())


def _provenance(console: Console, box: Any) -> None:
    console.print("[bold]provenance[/]")
    for s in box.manifest.get("sources", []):
        console.print(f"  run {s.get('run')}: {s.get('trajectories')} trajectories, {s.get('successful')} "
                      f"successful, teachers {', '.join(s.get('teachers', []))}", highlight=False)
    gen = box.manifest.get("generator") or {}
    if gen:
        console.print(f"  mined by trajdistill {gen.get('package_version', '?')}, mode {gen.get('mode')}, "
                      f"analyst {gen.get('analyst') or 'none (deterministic)'}", highlight=False)
    if "tool_mining" in gen:
        tm = gen["tool_mining"]
        dropped = ", ".join(f"{n} {r}" for r, n in tm.get("dropped", {}).items()) or "none"
        console.print(f"  tools: {tm.get('kept')} kept of {tm.get('candidates')} candidates from "
                      f"{tm.get('code_calls')} code calls; {tm.get('merged')} merged; dropped: {dropped}",
                      highlight=False)


def _validation(console: Console, validation: dict[str, Any], fresh: dict[str, Any] | None = None,
                vouched: bool = True) -> None:
    """The self-check shown is a fresh run, or the recorded one when a signature or pin covers it."""
    console.print("[bold]validation[/]")
    if not validation and fresh is None:
        console.print("  none recorded")
    check = fresh or (validation.get("self_check") if vouched else None)
    if not vouched and fresh is None and "self_check" in validation:
        console.print("  self-check: the recorded result is not signed, so it is not shown; --check runs it now")
    if check:
        tools = check.get("tools", {})
        passed = sum(r.get("passed", 0) for r in tools.values())
        failed = sum(r.get("failed", 0) for r in tools.values())
        state = "[green]passed[/]" if check.get("ok") else "[red]FAILED[/]"
        origin = "fresh run" if fresh is not None else "signed"
        console.print(f"  self-check {state} ({origin} at {check.get('checked_at')}, sandbox {check.get('sandbox')}): "
                      f"{passed} tool tests passed, {failed} failed", highlight=False)
        for name, r in tools.items():
            if r.get("first_failure"):
                console.print(f"    {name}: {r['first_failure']}", highlight=False)
    for section, data in validation.items():
        if section != "self_check":
            console.print(f"  {section}: (recorded, not signed)", highlight=False)
            _show_section(console, data)


def _show_section(console: Console, data: Any) -> None:
    """A section another command wrote (e.g. the dev-set validation): its scalar fields, then nested ones as JSON."""
    if not isinstance(data, dict):
        console.print(f"    {data}", highlight=False)
        return
    for key, value in data.items():
        text = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
        console.print(f"    {key}: {str(text)[:300]}", highlight=False)


# ---- serve and validate (skills/_server.py, skills/_validate.py) ------------------------------------------


@skills_app.command("serve")
def serve_command(
    box: Path = typer.Argument(..., help="Skill box directory."),
    transport: str = typer.Option("stdio", help="stdio, or http (streamable HTTP at http://HOST:PORT/mcp)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (http)."),
    port: int = typer.Option(8000, help="Port to listen on (http)."),
    sandbox: str = typer.Option("auto", help="Sandbox backend the tools run in: auto, docker, nsjail, none."),
    timeout: float = typer.Option(10.0, help="Wall-clock limit of one tool call, in seconds."),
    memory_mb: int = typer.Option(512, help="Memory limit of one tool call, in MB."),
    exclude: list[str] = typer.Option([], help="Leave this skill or tool out (for ablations); repeatable."),
    trust: list[str] = TrustOption,
    allow_unsigned: bool = AllowUnsignedOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Serve a box over MCP: tools run in the sandbox, SKILL.md files are resources and prompts."""
    from trajdistill.skills import serve
    from trajdistill.skills._trust import Trust

    serve(box, transport=transport, host=host, port=port, sandbox=sandbox, timeout_s=timeout,
          memory_mb=memory_mb, exclude=exclude, trust=Trust.of(trust, allow_unsigned))


@skills_app.command("validate")
# ValidateConfig's defaults (it loads MCP)
@rollout_options(RolloutConfig, "env", "split", "tasks", "concurrency", "max_steps", "seed", "sandbox", "env_params",
                 "skills_top_k", "skills_examples", split="dev", tasks=50, concurrency=4)
def validate_command(
    box: Path = typer.Argument(..., help="Skill box directory."),
    agent: str = typer.Option(..., help="Policy spec of the agent that mounts the box."),
    ablate: bool = typer.Option(False, "--ablate", help="Also run the box minus each skill and tool."),
    config: Optional[Path] = ConfigOption,
    *, rollout: dict,
) -> None:
    """Run the agent with and without the box; record the delta (95% CI) in the manifest."""
    from trajdistill.skills import ValidateConfig

    cfg = ValidateConfig(**rollout, box=str(box), agent=agent, ablate=ablate)
    raise typer.Exit(validate_cmd(console, cfg))


def validate_cmd(console, cfg) -> int:
    import asyncio

    from rich.progress import Progress

    from trajdistill.skills import validate_async

    from ._progress import EpisodeRows, episode_columns

    with Progress(*episode_columns("validate"), console=console, transient=False) as bar:
        section = _interrupt.run(validate_async(cfg, EpisodeRows(bar)))
    validation_table(console, section)
    return 0


def validation_table(console, section) -> None:
    """The arms of a `ValidationReport`, with the delta and verdict of each."""
    from rich.table import Table

    table = Table(title=f"validation: {section.agent} on {section.env} / {section.split}, {section.tasks} tasks")
    for col in ("arm", "success", "95% CI", "delta", "delta 95% CI", "verdict"):
        table.add_column(col, justify="left" if col in ("arm", "verdict") else "right")
    base = section.without
    table.add_row("without box", f"{base.success_rate:.1%}", _ci(base.ci95), "", "", "")
    table.add_row("with box", f"{section.with_.success_rate:.1%}", _ci(section.with_.ci95),
                  f"{section.delta:+.1%}", _ci(section.delta_ci95, signed=True), section.verdict)
    for item, arm in (section.ablation or {}).items():
        table.add_row(f"box without {item}", f"{arm.success_rate:.1%}", _ci(arm.ci95),
                      f"{arm.delta:+.1%}", _ci(arm.delta_ci95, signed=True),
                      arm.verdict + (" (better without it)" if arm.flagged else ""))
    console.print(table)
    if section.flagged:
        console.print(f"[bold red]flagged[/]: the box lowers the success rate; {section.note}")


def _ci(ci, signed: bool = False) -> str:
    fmt = "{:+.0%}" if signed else "{:.0%}"
    return f"{fmt.format(ci[0])} to {fmt.format(ci[1])}"
