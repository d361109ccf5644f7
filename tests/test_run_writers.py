"""One writer per run and shard slice, and `--resume` checked against the trajectories a run already holds
(issue 17, sections 4 and 5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from trajdistill.trajectories import RunError, RunStore
from conftest import cli, one_line_error

CONFIG = {"env": "math", "teachers": ["expert:coder"], "split": "train", "tasks": 4, "out": "RUN"}


def collect(out, *extra):
    return cli("collect", "--env", "math", "--teacher", "expert:coder", "--tasks", "4", "--sandbox", "none",
               "--out", out, *extra)


def lines(run) -> list[dict]:
    return [json.loads(x) for p in sorted(run.glob("trajectories-*.jsonl")) for x in p.read_text().splitlines()]


# ---- section 4: one writer per shard slice -----------------------------------------------------------


def test_a_second_writer_of_the_same_slice_is_refused_until_the_first_closes(tmp_path):
    first = RunStore.create(tmp_path / "run", CONFIG)
    with pytest.raises(RunError, match="another process is writing shard 0/1"):
        RunStore.create(tmp_path / "run", CONFIG, resume=True)
    first.close()
    RunStore.create(tmp_path / "run", CONFIG, resume=True).close()


def test_different_slices_write_side_by_side(tmp_path):
    a = RunStore.create(tmp_path / "run", {**CONFIG, "shard": "0/2"})
    b = RunStore.create(tmp_path / "run", {**CONFIG, "shard": "1/2"})
    with pytest.raises(RunError, match="shard 1/2"):
        RunStore.create(tmp_path / "run", {**CONFIG, "shard": "1/2"}, resume=True)
    a.close()
    b.close()


def test_collect_resume_while_another_process_writes_the_slice_is_one_line(tmp_path):
    run = tmp_path / "run"
    assert collect(run).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, yaml
        from trajdistill.trajectories import RunStore
        store = RunStore.create({str(run)!r}, yaml.safe_load(open({str(run / 'run.yaml')!r})), resume=True)
        print("holding", flush=True)
        sys.stdin.read()
        store.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = lines(run)
        one_line_error(collect(run, "--resume", "--tasks", "8"), "another process is writing shard 0/1")
        assert lines(run) == before
        assert collect(run, "--resume", "--tasks", "8", "--shard", "1/2").returncode == 0  # another slice runs
    finally:
        holder.communicate("", timeout=60)
    assert collect(run, "--resume", "--tasks", "8").returncode == 0
    assert len(lines(run)) == len({r["task_id"] for r in lines(run)}) == 8


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    RunStore.create(tmp_path / "run", CONFIG).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from trajdistill.trajectories import RunStore
        store = RunStore.create({str(tmp_path / 'run')!r}, {CONFIG!r}, resume=True)
        print("holding", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(RunError, match="another process"):
        RunStore.create(tmp_path / "run", CONFIG, resume=True)
    holder.kill()
    holder.wait(timeout=60)
    RunStore.create(tmp_path / "run", CONFIG, resume=True).close()


# ---- section 5: --resume against the trajectories on disk ----------------------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "run"
    assert collect(run).returncode == 0
    return run


@pytest.fixture
def run(collected, tmp_path):
    shutil.copytree(collected, tmp_path / "run")
    return tmp_path / "run"


def test_an_edited_run_yaml_split_cannot_mix_dev_into_train(run):
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    (run / "run.yaml").write_text(yaml.safe_dump({**cfg, "split": "dev"}))
    before = lines(run)
    one_line_error(collect(run, "--resume", "--split", "dev"), "split", "'train'", "'dev'")
    assert lines(run) == before


@pytest.mark.parametrize("field, value, named", [("version", "0-old", "env version"), ("name", "other", "env")])
def test_trajectories_of_another_env_or_version_refuse_a_resume(run, field, value, named):
    for shard in run.glob("trajectories-*.jsonl"):
        rows = [json.loads(x) for x in shard.read_text().splitlines()]
        for r in rows:
            r["env"][field] = value
        shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_line_error(collect(run, "--resume", "--tasks", "6"), named, repr(value))
    assert len(lines(run)) == 4
