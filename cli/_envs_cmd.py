"""`trajdistill envs list|show`."""

from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from trajdistill.envs import UnknownNameError, envs, make_env


def _default_spec(name: str) -> str:
    cls = envs.get(name)
    default = getattr(cls, "default_variant", None)
    return f"{name}:{default}" if default else name


def list_envs(console: Console) -> None:
    table = Table(title="Environments")
    for col in ("env", "variants", "tools", "train", "dev", "test", "experts"):
        table.add_column(col)
    for name in envs.names():
        try:
            env = make_env(_default_spec(name))
            sizes = env.split_sizes()
        except (UnknownNameError, ValueError, OSError) as e:
            table.add_row(name, "", f"[red]unavailable: {e}[/]", "", "", "", "")
            continue
        variants = ", ".join(getattr(type(env), "variants", ()) or ()) or "-"
        table.add_row(
            name, variants, ", ".join(t.name for t in env.tools()),
            *(str(sizes.get(s, "-")) for s in ("train", "dev", "test")),
            ", ".join(env.experts()) or "-",
        )
    console.print(table)


def show_env(console: Console, spec: str) -> None:
    env = make_env(spec if ":" in spec else _default_spec(spec))
    sizes = env.split_sizes()
    console.print(f"[bold]{env.id}[/] version {env.version}  "
                  f"splits: train={sizes.get('train')} dev={sizes.get('dev')} test={sizes.get('test')}  "
                  f"experts: {', '.join(env.experts()) or '-'}")
    if env.system_prompt():
        console.print(Panel(env.system_prompt(), title="system prompt"))
    for spec_ in env.tools():
        console.print(Panel(Syntax(json.dumps(spec_.openai(), indent=2), "json"), title=f"tool {spec_.name}"))
    task = env.tasks("train", n=1)[0]
    console.print(Panel(task.prompt, title=f"sample task {task.id} "
                        f"(category={task.category}, difficulty={task.difficulty})"))
