"""Expected episode failures (the library's errors) are recorded and the run goes on; any other exception
in an episode is a bug: the run stops with its traceback, finished trajectories stay, and --resume
completes the run (issue 12, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trajdistill.agents._collector import CollectConfig, collect
from trajdistill.envs import make_env
from trajdistill.trajectories import RunStore

import flaky_policy

TESTS = Path(__file__).parent
RUN_CLI = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import flaky_policy; flaky_policy.register(); "
           "from trajdistill._app import run; sys.argv[0] = 'trajdistill'; run()")


def trajdistill(*args, fail: str = ""):
    """The real CLI in a subprocess, with the flaky policy registered."""
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PYTHONWARNINGS": "ignore", "TRAJDISTILL_TEST_FAIL": fail,
           "TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"]}
    return subprocess.run([sys.executable, "-c", RUN_CLI, str(TESTS), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


def tasks(n: int) -> list[str]:
    return [t.id for t in make_env("math").tasks("train", n=n)]


def test_a_bug_in_an_episode_stops_the_run_with_its_traceback_and_resume_completes_it(tmp_path):
    ids, out = tasks(4), tmp_path / "run"
    args = ("collect", "--env", "math", "--teacher", "flaky:bug", "--tasks", "4", "--concurrency", "1",
            "--sandbox", "none", "--out", out)
    res = trajdistill(*args, fail=ids[2])
    assert res.returncode == 1, res.stderr
    assert "Traceback" in res.stderr and "ZeroDivisionError: division by zero" in res.stderr, res.stderr
    assert "1 / 0" in res.stderr  # the traceback reaches the line of the bug
    finished = {t.task_id: t.id for t in RunStore.open(out).load()}
    assert set(finished) == set(ids[:2])  # one worker, in task order: the two before the bug are on disk
    assert not (out / "errors.jsonl").exists()  # a bug is not a failed episode

    res = trajdistill(*args, "--resume")
    assert res.returncode == 0, res.stderr
    resumed = {t.task_id: t.id for t in RunStore.open(out).load()}
    assert set(resumed) == set(ids) and all(resumed[k] == v for k, v in finished.items())


def test_a_library_error_in_an_episode_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    flaky_policy.register()
    ids = tasks(3)
    monkeypatch.setenv("TRAJDISTILL_TEST_FAIL", ids[1])
    cfg = CollectConfig(env="math", teachers=["flaky:expected"], out=str(tmp_path / "run"), tasks=3,
                        concurrency=2, sandbox="none")
    store, progress = collect(cfg)
    assert (progress.done, progress.errors) == (3, 1)
    assert {t.task_id for t in store.load()} == {ids[0], ids[2]}
    errors = [json.loads(line) for line in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
    assert [(e["task_id"], e["kind"]) for e in errors] == [(ids[1], "error")]
    assert errors[0]["reason"] == f"ToolError: the tool server for {ids[1]} went away"
