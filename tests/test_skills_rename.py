"""Renamed box tools (issue 18): boxed runs whose box tools get fresh names everywhere but the task text."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest
from test_skills_serve import need_nsjail

from trajdistill.agents import CollectConfig, collect, listed_tools
from trajdistill.envs import ConfigError
from trajdistill.envs._react_text import ParsedAction, parse_react
from trajdistill.skills import MineConfig, mine, mount_skills, rename_tools, renamed
from trajdistill.skills._rename import box_tools
from trajdistill.trajectories import RunStore, segment


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A box mined in nsjail from a real expert:coder run, and the box-aware coder's run with it mounted."""
    need_nsjail()
    root = tmp_path_factory.mktemp("rename")
    params = {"categories": "modular,arithmetic"}
    collect(CollectConfig(env="math", env_params=params, teachers=["expert:coder"], out=str(root / "plain"),
                          tasks=40, split="train", sandbox="nsjail"))
    box = mine(MineConfig(runs=[str(root / "plain")], out=str(root / "box"), mode="tools", sandbox="nsjail")).box
    collect(CollectConfig(env="math", env_params=params, teachers=["expert:coder"], out=str(root / "boxed"),
                          tasks=12, split="train", sandbox="nsjail", skills=[str(box.path)]), mount=mount_skills)
    return root


def actions(traj) -> list[str]:
    parsed = [parse_react(m.content) for m in traj.messages if m.role == "assistant"]
    return [p.tool for p in parsed if isinstance(p, ParsedAction)]


def test_every_mention_of_a_box_tool_is_renamed_but_the_task_and_the_envs_own_tools(runs):
    trajs = RunStore.open(runs / "boxed").load()
    traj = next(t for t in trajs if set(actions(t)) - {"python"})  # the coder called a box tool
    old = box_tools(traj)
    assert old and "python" not in old and "final_answer" not in old
    new = renamed(traj, random.Random(0))
    fresh = box_tools(new)
    assert len(fresh) == len(old) and not set(fresh) & set(old)
    assert listed_tools(new.messages[0].content) == [dict(zip(old, fresh)).get(n, n)
                                                     for n in listed_tools(traj.messages[0].content)]
    text = "\n".join(m.content for m in new.messages if m.role != "user")
    assert not any(name in text for name in old)  # not in the list, an Action, a Thought or an observation
    assert set(actions(new)) - {"python"} <= set(fresh) and set(actions(new)) - {"python"}
    assert {m.name for m in new.messages if m.role == "tool"} <= set(fresh) | {"python"}
    assert [m.content for m in new.messages if m.role == "user"] == [m.content for m in traj.messages
                                                                     if m.role == "user"]
    assert (new.task_id, new.outcome, new.id) == (traj.task_id, traj.outcome, traj.id)
    assert new.spans == [] and segment(new)  # spans of the old text are dropped; the new text segments


def signature(system: str, tool: str) -> list[str]:
    """The parameter names the tool list shows for `tool`."""
    line = re.search(rf"^- {tool}\(([^)]*)\)", system, re.MULTILINE).group(1)
    return [part.split(":")[0].strip() for part in line.split(",")]


def test_with_params_the_signature_and_every_action_input_get_the_same_fresh_parameter_names(runs):
    trajs = RunStore.open(runs / "boxed").load()
    traj = next(t for t in trajs if "modular_power" in actions(t))  # a three-parameter box tool, called
    new = renamed(traj, random.Random(0), params=True)
    tool = dict(zip(box_tools(traj), box_tools(new)))["modular_power"]
    old_names = signature(traj.messages[0].content, "modular_power")
    new_names = signature(new.messages[0].content, tool)
    assert old_names == ["base", "exponent", "modulus"] and len(new_names) == 3
    assert not set(new_names) & set(old_names)
    calls = [(parse_react(a.content), parse_react(b.content)) for a, b in zip(traj.messages, new.messages)
             if a.role == "assistant" and isinstance(parse_react(a.content), ParsedAction)]
    box_calls = [(a, b) for a, b in calls if a.tool == "modular_power"]
    assert box_calls
    for before, after in box_calls:  # the same values, under the names the list now shows, in its order
        assert after.tool == tool and list(after.arguments) == new_names
        assert list(after.arguments.values()) == [before.arguments[n] for n in old_names]
        assert after.thought == before.thought.replace("modular_power", tool)
    assert renamed(traj, random.Random(0)).messages[0].content.count("base: integer") == 1  # off by default


def test_a_task_that_names_a_tool_keeps_its_words(runs):
    traj = RunStore.open(runs / "boxed").load()[0]
    name = box_tools(traj)[0]
    user = next(i for i, m in enumerate(traj.messages) if m.role == "user")
    messages = list(traj.messages)
    messages[user] = messages[user].model_copy(update={"content": f"Use {name} if you like. " + messages[user].content})
    new = renamed(traj.model_copy(update={"messages": messages}), random.Random(1))
    assert new.messages[user].content.startswith(f"Use {name} if you like.")


def test_a_run_is_copied_with_the_share_renamed(runs, tmp_path):
    every = rename_tools(runs / "boxed", tmp_path / "all", share=1.0, seed=3)
    none = rename_tools(runs / "boxed", tmp_path / "none", share=0.0)
    plain = rename_tools(runs / "plain", tmp_path / "plain", share=1.0)
    assert (every.trajectories, every.boxed, every.renamed) == (12, 12, 12)
    assert none.renamed == 0 and (plain.boxed, plain.renamed) == (0, 0)  # no box listed: copied as it is
    source = {t.task_id: t for t in RunStore.open(runs / "boxed").load()}
    copied = {t.task_id: t for t in RunStore.open(tmp_path / "none").load()}
    assert copied == source
    for t in RunStore.open(tmp_path / "all").load():
        assert not set(box_tools(t)) & set(box_tools(source[t.task_id]))
    again = rename_tools(runs / "boxed", tmp_path / "again", share=1.0, seed=3)
    assert again.renamed == 12
    assert ([t.messages for t in RunStore.open(tmp_path / "again").load()]
            == [t.messages for t in RunStore.open(tmp_path / "all").load()])  # one seed, one copy


def test_bad_share_and_an_existing_out_are_refused_in_one_line(runs, tmp_path):
    with pytest.raises(ConfigError, match="--share"):
        rename_tools(runs / "boxed", tmp_path / "x", share=1.5)
    cmd = [sys.executable, "-m", "trajdistill", "skills", "rename-tools", str(runs / "boxed"), "--out",
           str(tmp_path / "cli"), "--share", "1"]
    wide = {**os.environ, "COLUMNS": "300"}
    ok = subprocess.run(cmd, capture_output=True, text=True, env=wide)
    assert ok.returncode == 0 and "12 of 12 trajectories renamed" in ok.stdout
    with_params = subprocess.run([*cmd[:7], str(tmp_path / "cli-params"), "--share", "1", "--params"],
                                 capture_output=True, text=True, env=wide)
    assert with_params.returncode == 0, with_params.stderr
    assert RunStore.open(tmp_path / "cli-params").config["rename_params"] is True
    assert not any("modulus: integer" in t.messages[0].content for t in RunStore.open(tmp_path / "cli-params").load())
    again = subprocess.run(cmd, capture_output=True, text=True, env=wide)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr


def test_a_boxed_trajectory_records_the_box_it_was_collected_with(runs):
    boxed = RunStore.open(runs / "boxed").load()
    assert {tuple(t.provenance.skills) for t in boxed} == {(str(runs / "box"),)}
    assert all(t.provenance.skills == [] for t in RunStore.open(runs / "plain").load())
