"""Plug-ins: a user's package adds an export format, a compose strategy and a segmenter through entry points
(a real dist-info on the path), and the real `trajdistill` command uses them by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trajdistill.envs import UnknownNameError, envs
from trajdistill.envs.math import MathEnv
from trajdistill.trajectories import (CurateItem, RunStore, Span, assistant_text, compose_strategies, env_segmenter,
                                      export_formats, segment, segment_as_env, segmenters)

from conftest import collect_math

PLUGIN = '''
from trajdistill.trajectories import ComposeTaskResult, Span, assistant_text


def write_tsv(store, trajs, out):
    """Export format: one line per trajectory, task id and success."""
    out.write_text("".join(f"{t.task_id}\\t{int(t.outcome.success)}\\n" for t in trajs))


def last_teacher(cands, cfg):
    """Compose strategy: the success of the teacher whose spec sorts last."""
    ok = sorted((t for t in cands if t.outcome.success), key=lambda t: t.teacher.spec)
    if not ok:
        return ComposeTaskResult(None)
    return ComposeTaskResult(ok[-1].model_copy(update={"id": "last-" + ok[-1].id}), ok[-1].teacher.spec)


def all_reason(traj):
    """Segmenter: every assistant character is reasoning."""
    return [Span(message=i, start=0, end=len(assistant_text(m)), kind="reason")
            for i, m in enumerate(traj.messages) if m.role == "assistant"]
'''

ENTRY_POINTS = """
[trajdistill.export_formats]
tsv = td_plugin:write_tsv

[trajdistill.compose_strategies]
last-teacher = td_plugin:last_teacher

[trajdistill.segmenters]
all-reason = td_plugin:all_reason
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A directory that holds the plug-in module and its installed metadata, as pip would leave them."""
    root = tmp_path_factory.mktemp("site")
    (root / "td_plugin.py").write_text(PLUGIN)
    info = root / "td_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: td-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return collect_math(tmp_path_factory.mktemp("plugins") / "run", ["expert:coder", "expert:reasoner"], tasks=3)


def cli(plugin_path, *args):
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(plugin_path), "TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"]}
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_plugged_in_export_format_writes_through_the_cli(plugin_path, run, tmp_path):
    assert "tsv" in " ".join(cli(plugin_path, "export", "--help").stdout.split())
    res = cli(plugin_path, "export", run, "--format", "tsv", "--out", tmp_path / "runs.tsv")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "runs.tsv").read_text().splitlines()]
    assert len(rows) == 6 and {r[0] for r in rows} == {t.task_id for t in RunStore.open(run).load()}


def test_a_plugged_in_compose_strategy_composes_through_the_cli(plugin_path, run, tmp_path):
    res = cli(plugin_path, "compose", run, "--strategy", "last-teacher", "--out", tmp_path / "composed")
    assert res.returncode == 0, res.stderr[-2000:]
    kept = RunStore.open(tmp_path / "composed").load()
    assert kept and all(t.id.startswith("last-") and t.teacher.spec == "expert:reasoner" for t in kept)
    assert json.loads((tmp_path / "composed" / "compose_report.json").read_text())["strategy"] == "last-teacher"


def _chars_per_kind(stdout: str) -> dict[str, int]:
    line = next(line for line in stdout.splitlines() if line.startswith("chars per kind:"))
    words = line.removeprefix("chars per kind:").split()
    return {k: int(v) for k, v in zip(words[::2], words[1::2])}


def test_a_plugged_in_segmenter_labels_the_spans_inspect_shows(plugin_path, run):
    traj = RunStore.open(run).load()[0]
    default = cli(plugin_path, "inspect", run, "--show", traj.id, "--spans")
    assert default.returncode == 0 and "segmenter react" in default.stdout, default.stderr[-2000:]
    react = _chars_per_kind(default.stdout)
    assert react["answer"] > 0  # the ReAct grammar finds the expert's final answer
    res = cli(plugin_path, "inspect", run, "--show", traj.id, "--segmenter", "all-reason")
    assert res.returncode == 0 and "segmenter all-reason" in res.stdout, res.stderr[-2000:]
    assert _chars_per_kind(res.stdout) == {"reason": sum(react.values()), "act": 0, "answer": 0, "context": 0}


@pytest.mark.parametrize("args, known", [
    (["export", "RUN", "--format", "xlsx", "--out", "OUT"], "unknown export format 'xlsx'; known: openai, "
                                                             "parquet, sharegpt, tsv"),
    (["compose", "RUN", "--strategy", "worst", "--out", "OUT"], "unknown compose strategy 'worst'; known: "
                                                                "best, dual, last-teacher"),
    (["inspect", "RUN", "--show", "ID", "--segmenter", "bnf"], "unknown segmenter 'bnf'; known: all-reason, react"),
])
def test_an_unknown_name_is_one_line_listing_the_plugins_too(plugin_path, run, tmp_path, args, known):
    traj_id = RunStore.open(run).load()[0].id
    subst = {"RUN": run, "OUT": tmp_path / "out", "ID": traj_id}
    res = cli(plugin_path, *(subst.get(a, a) for a in args))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and known in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_built_ins_register_by_name():
    assert {"parquet", "sharegpt", "openai"} <= set(export_formats.names())
    assert {"best", "dual"} <= set(compose_strategies.names())
    assert "react" in segmenters.names()
    with pytest.raises(UnknownNameError, match="unknown segmenter 'nope'; known: .*react"):
        segmenters.get("nope")


@segmenters.register("test-all-act")
def _all_act(traj):
    return [Span(message=i, start=0, end=len(assistant_text(m)), kind="act")
            for i, m in enumerate(traj.messages) if m.role == "assistant"]


@envs.register("test-act-math")
class ActMath(MathEnv):
    """The math env, with a span grammar of its own."""

    segmenter = "test-all-act"


def test_an_env_names_the_segmenter_its_trajectories_are_read_with(run):
    traj = RunStore.open(run).load()[0]
    assert env_segmenter("math") == "react" and env_segmenter("not-installed") == "react"
    assert segment_as_env(traj) == segment(traj)
    act = traj.model_copy(update={"env": traj.env.model_copy(update={"name": "test-act-math"})})
    spans = segment_as_env(act)
    assert spans and {s.kind for s in spans} == {"act"}
    assert CurateItem(act, "run").reasoning == 0 < CurateItem(traj, "run").reasoning
