"""The `trajdistill` command end to end: help, envs, --config defaults, inspect, export, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def cli(*args, ok=True, timeout=300):
    res = subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root",
                                               "PYTHONWARNINGS": "ignore"})
    if ok:
        assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.mark.parametrize("cmd", [[], ["envs"], ["sandbox"], ["collect"], ["inspect"], ["export"],
                                 ["sandbox", "run"], ["sandbox", "build-image"], ["curate"], ["import"]])
def test_help_on_every_command(cmd):
    res = cli(*cmd, "--help")
    assert "Usage:" in res.stdout


def test_help_reflows_a_docstring_paragraph_to_the_terminal_width():
    # the docstrings are wrapped at ~110 columns; kept as hard breaks they made ragged lines in narrower terminals
    lines = [" ".join(line.split()) for line in cli("onpolicy", "--help").stdout.splitlines()]
    assert any("mixed with the teacher by beta, rolls out through the ReAct loop" in line for line in lines)


def test_envs_list_and_show():
    out = cli("envs", "list").stdout
    for name in ("math", "twx", "mcp"):
        assert name in out
    assert "reasoner, coder" in out and "gold" in out and "replay" in out
    show = cli("envs", "show", "math").stdout
    assert '"name": "python"' in show and "sample task math-train-00000" in show


def test_config_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "collect.yaml"
    config.write_text("env: math\nteacher: [expert:coder]\ntasks: 4\nsandbox: none\nconcurrency: 2\n")
    cli("collect", "--config", config, "--tasks", "2", "--out", tmp_path / "run")
    rows = [json.loads(line) for f in (tmp_path / "run").glob("trajectories-*.jsonl")
            for line in f.read_text().splitlines()]
    assert len(rows) == 2  # the flag won over the file's tasks: 4
    assert {r["teacher"]["spec"] for r in rows} == {"expert:coder"}  # the file gave the teacher

    stats = cli("inspect", tmp_path / "run").stdout
    assert "expert:coder" in stats
    shown = cli("inspect", tmp_path / "run", "--show", rows[0]["id"][:8]).stdout
    assert "Action" in shown and rows[0]["task_id"] in shown
    for fmt, name in (("parquet", "t.parquet"), ("sharegpt", "t.sharegpt.jsonl"), ("openai", "t.openai.jsonl")):
        cli("export", tmp_path / "run", "--format", fmt, "--out", tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["collect", "--config", "/nonexistent.yaml", "--out", "x"], "config file /nonexistent.yaml does not exist"),
    (["envs", "show", "nosuchenv"], "unknown env 'nosuchenv'; known: math, mcp, twx"),
    (["export", "/nonexistent-run", "--format", "parquet", "--out", "x"], "/nonexistent-run"),
    (["collect", "--env", "math", "--teacher", "expert:coder", "--out", "x", "--shard", "5/2"], "--shard"),
    (["collect", "--env", "math", "--teacher", "expert:nobody", "--out", "x"], "has no expert 'nobody'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    res = cli(*args, ok=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("taskz: 3\n")
    res = cli("collect", "--config", config, "--out", tmp_path / "r", ok=False)
    assert res.returncode == 2 and "unknown setting(s) for 'collect': taskz" in res.stderr


def test_compose_curate_and_mine_options_are_their_configs_fields():
    """One description per setting: the options of compose, curate and skills mine carry their config field's help
    and default."""
    import typer

    from trajdistill._app import app
    from trajdistill.skills import MineConfig
    from trajdistill.trajectories import ComposeConfig, CurateConfig

    root = typer.main.get_command(app)
    mine_fields = ("runs", "out", "analyst", "mode", "workers", "sandbox", "min_support", "name", "force", "key")
    flags = {"compose": (ComposeConfig, {"runs": "runs", "out": "out", "prefer": "prefer", "seed": "seed",
                                         "transition": "transition", "max_prefix_steps": "max_prefix_steps",
                                         "strategy": "strategy"}),
             "curate": (CurateConfig, {"runs": "runs", "out": "out", "step": "steps", "mix": "mix", "seed": "seed"}),
             "skills mine": (MineConfig, {name: name for name in mine_fields})}
    for command, (cls, fields) in flags.items():
        group, _, sub = command.partition(" ")
        params = {p.name: p for p in (root.commands[group].commands[sub] if sub else root.commands[group]).params}
        for param, name in fields.items():
            f = cls.__dataclass_fields__[name]
            assert params[param].help.startswith(f.metadata["help"]), (command, param)
    mine = {p.name: p for p in root.commands["skills"].commands["mine"].params}
    assert set(mine) == {*mine_fields, "config"}
    assert {n: mine[n].default for n in mine_fields[2:]} == {n: MineConfig.__dataclass_fields__[n].default
                                                             for n in mine_fields[2:]}
    assert mine["runs"].required and mine["out"].required and "docs, tools (plug-ins add more" in mine["mode"].help
    compose = {p.name: p for p in root.commands["compose"].params}
    assert compose["strategy"].required and "best, dual (plug-ins add more" in compose["strategy"].help
    assert compose["max_prefix_steps"].default == ComposeConfig.__dataclass_fields__["max_prefix_steps"].default
    curate = {p.name: p for p in root.commands["curate"].params}
    assert curate["seed"].default is None and curate["step"].default == [] and curate["out"].required


def test_loading_the_cli_does_not_load_the_mcp_sdk():
    """`skills mine` takes its options from MineConfig, so the CLI imports `trajdistill.skills`; serving, mounting
    and validating a box (which load the MCP SDK) are imported on first use, not with every command."""
    code = ("import sys, trajdistill._app, trajdistill.skills, trajdistill.envs; "
            "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    from trajdistill.skills import MountedEnv, mount_skills  # the lazy names resolve

    assert mount_skills.__module__ == MountedEnv.__module__ == "trajdistill.skills._mount"
