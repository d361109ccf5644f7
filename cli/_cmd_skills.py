"""`trajdistill skills ...`: mine and inspect skill boxes (serve and validate add to `skills_app`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ._config import ConfigOption

skills_app = typer.Typer(help="Mine, inspect, validate and serve skill boxes.", no_args_is_help=True)
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(skills_app, name="skills")


@skills_app.command("mine")
def mine_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories to mine (one env)."),
    out: Path = typer.Option(..., help="Box directory to write."),
    analyst: Optional[str] = typer.Option(None, help="Policy spec of an analyst LLM; default: deterministic."),
    mode: str = typer.Option("both", help="tools, docs or both."),
    workers: int = typer.Option(4, help="Analysts and sandboxed tool runs in flight at once."),
    sandbox: str = typer.Option("auto", help="Sandbox backend for tool replay: auto, docker, nsjail, none."),
    name: Optional[str] = typer.Option(None, help="Box name; default: <env>-skills."),
    force: bool = typer.Option(False, "--force", help="Replace an existing box at OUT."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Mine a skill box (SKILL.md docs and sandboxed tools) from trajectories, then self-check it."""
    from trajdistill.skills._mine import MineConfig, mine_async

    cfg = MineConfig(runs=[str(r) for r in runs], out=str(out), analyst=analyst, mode=mode, workers=workers,
                     sandbox=sandbox, name=name, force=force)
    with Progress(TextColumn("[bold]mine[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("loading runs", total=None)

        def listener(stage: str, done: int, total: int) -> None:
            bar.update(job, description=stage, completed=done, total=total)

        result = asyncio.run(mine_async(cfg, listener=listener))
    console.print(f"box written to [bold]{out}[/]: {result.summary()}", highlight=False)
    if not result.check["ok"]:
        bad = [f"{n} ({r.get('first_failure')})" for n, r in result.check["tools"].items() if r["failed"]]
        raise ValueError(f"the mined box failed its own validation: {'; '.join(bad)}")


@skills_app.command("inspect")
def inspect_cmd(box: Path = typer.Argument(..., help="Skill box directory."),
                config: Optional[Path] = ConfigOption) -> None:
    """Print a box's skills, tool signatures, provenance and validation results (the box is verified)."""
    from trajdistill.skills import SkillBox

    show_box(console, SkillBox.load(box))


def show_box(console: Console, box: Any) -> None:
    console.print(f"[bold]{box.name}[/] {box.version}  env [bold]{box.env}[/]  "
                  f"created {box.manifest.get('created_at', '?')}  ({len(box.manifest['files'])} files, verified)",
                  highlight=False)
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
    _validation(console, box.validation)


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


def _validation(console: Console, validation: dict[str, Any]) -> None:
    console.print("[bold]validation[/]")
    if not validation:
        console.print("  none recorded")
    check = validation.get("self_check")
    if check:
        tools = check.get("tools", {})
        passed = sum(r.get("passed", 0) for r in tools.values())
        failed = sum(r.get("failed", 0) for r in tools.values())
        state = "[green]passed[/]" if check.get("ok") else "[red]FAILED[/]"
        console.print(f"  self-check {state} at {check.get('checked_at')} (sandbox {check.get('sandbox')}): "
                      f"{passed} tool tests passed, {failed} failed", highlight=False)
        for name, r in tools.items():
            if r.get("first_failure"):
                console.print(f"    {name}: {r['first_failure']}", highlight=False)
    for section, data in validation.items():
        if section != "self_check":
            console.print(f"  {section}:", highlight=False)
            _show_section(console, data)


def _show_section(console: Console, data: Any) -> None:
    """A section another command wrote (e.g. the dev-set gate): its scalar fields, then nested ones as JSON."""
    if not isinstance(data, dict):
        console.print(f"    {data}", highlight=False)
        return
    for key, value in data.items():
        text = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
        console.print(f"    {key}: {str(text)[:300]}", highlight=False)
