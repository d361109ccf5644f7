"""The run directory store: create/resume, fsynced shards, torn and corrupt lines, errors and stats."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from test_schema import native_traj, react_traj

from trajdistill.trajectories import RunError, RunStore, TeacherStats, Trajectory

CONFIG = {"env": "math", "teachers": ["expert:solver"], "split": "train", "tasks": 10, "max_steps": 20,
          "seed": 0, "shard": "0/1", "out": "RUN", "env_params": {"level": 1}}


def make_store(tmp_path, **changes):
    return RunStore.create(tmp_path / "run", {**CONFIG, **changes}, resume=False)


def test_create_writes_run_yaml_and_append_load(tmp_path):
    store = make_store(tmp_path)
    assert yaml.safe_load((tmp_path / "run" / "run.yaml").read_text()) == CONFIG
    trajs = [react_traj(f"t{i}") for i in range(3)] + [native_traj()]
    for t in trajs:
        store.append(t)
    store.close()
    shards = store.shards()
    assert [p.name for p in shards] == ["trajectories-0of1-000.jsonl"]
    assert len(shards[0].read_text().splitlines()) == 4
    assert RunStore.open(tmp_path / "run").load() == trajs


async def test_concurrent_appends_from_50_tasks(tmp_path):
    store = make_store(tmp_path)

    async def one(i: int) -> None:
        await asyncio.sleep(0)
        t = react_traj(f"task-{i}")
        if i % 2:  # half from worker threads, so the lock is really contended
            await asyncio.to_thread(store.append, t)
        else:
            store.append(t)

    await asyncio.gather(*(one(i) for i in range(50)))
    store.close()
    lines = store.shards()[0].read_text().splitlines()
    assert len(lines) == 50
    assert {Trajectory.from_json(line).task_id for line in lines} == {f"task-{i}" for i in range(50)}


def _write_run(tmp_path, lines: list[str], tail: str = "\n") -> tuple[RunStore, str]:
    store = make_store(tmp_path)
    shard = tmp_path / "run" / "trajectories-0of1-000.jsonl"
    shard.write_text("\n".join(lines) + tail)
    return RunStore.open(tmp_path / "run"), str(shard)


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    good = [react_traj(f"t{i}").to_json() for i in range(2)]
    torn = react_traj("t2").to_json()[:57]
    store, shard = _write_run(tmp_path, good + [torn], tail="")
    with pytest.warns(RuntimeWarning, match=rf"{shard}:3: dropping the torn last line"):
        loaded = store.load()
    assert [t.task_id for t in loaded] == ["t0", "t1"]


def test_unparsable_last_line_with_newline_is_dropped(tmp_path):
    store, shard = _write_run(tmp_path, [react_traj("t0").to_json(), '{"id": "x", "task'])
    with pytest.warns(RuntimeWarning, match=rf"{shard}:2:"):
        assert [t.task_id for t in store.load()] == ["t0"]


def test_corrupt_middle_line_raises_naming_file_and_line(tmp_path):
    lines = [react_traj("t0").to_json(), "{not json", react_traj("t2").to_json()]
    store, shard = _write_run(tmp_path, lines)
    with pytest.raises(RunError, match=rf"{shard}:2: corrupt line"):
        store.load()


def test_invalid_trajectory_in_the_middle_raises(tmp_path):
    lines = [react_traj("t0").to_json(), json.dumps({"task_id": "t1"}), react_traj("t2").to_json()]
    store, shard = _write_run(tmp_path, lines)
    with pytest.raises(RunError, match=rf"{shard}:2: not a valid trajectory"):
        store.load()


def test_unknown_schema_version_raises_run_error(tmp_path):
    row = json.loads(react_traj("t0").to_json())
    row["schema_version"] = 9
    store, shard = _write_run(tmp_path, [json.dumps(row)])
    with pytest.raises(RunError, match=rf"{shard}:1: trajectory schema_version 9 is not supported"):
        store.load()


def test_existing_run_without_resume_is_refused(tmp_path):
    make_store(tmp_path).append(react_traj())
    with pytest.raises(RunError, match="run dir .* exists; pass --resume"):
        make_store(tmp_path)


def test_non_run_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds no run.yaml"):
        make_store(tmp_path)
    with pytest.raises(RunError, match="not a run directory"):
        RunStore.open(tmp_path / "run")
    with pytest.raises(RunError, match="does not exist"):
        RunStore.open(tmp_path / "missing")


def test_resume_with_a_different_setting_names_it(tmp_path):
    make_store(tmp_path).append(react_traj())
    with pytest.raises(RunError, match=r"setting 'max_steps' differs \(run has 20, now 5\)"):
        RunStore.create(tmp_path / "run", {**CONFIG, "max_steps": 5}, resume=True)
    with pytest.raises(RunError, match=r"setting 'env_params.level' differs \(run has 1, now 2\)"):
        RunStore.create(tmp_path / "run", {**CONFIG, "env_params": {"level": 2}}, resume=True)
    with pytest.raises(RunError, match=r"setting 'temperature' differs \(run has unset, now 0.5\)"):
        RunStore.create(tmp_path / "run", {**CONFIG, "temperature": 0.5}, resume=True)


def test_resume_adds_teachers_and_never_appends_to_an_old_shard(tmp_path):
    first = make_store(tmp_path)
    first.append(react_traj("t0"))
    first.close()
    cfg = {**CONFIG, "teachers": ["expert:other"], "tasks": 20, "concurrency": 4}
    second = RunStore.create(tmp_path / "run", cfg, resume=True)
    assert second.config["teachers"] == ["expert:solver", "expert:other"]
    assert yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())["teachers"] == ["expert:solver",
                                                                                       "expert:other"]
    second.append(react_traj("t0", "expert:other"))
    second.close()
    assert [p.name for p in second.shards()] == ["trajectories-0of1-000.jsonl", "trajectories-0of1-001.jsonl"]
    assert second.finished_keys() == {("t0", "expert:solver"), ("t0", "expert:other")}


def test_another_shard_may_join_an_existing_run(tmp_path):
    RunStore.create(tmp_path / "run", {**CONFIG, "shard": "0/2"}).append(react_traj("t0"))
    other = RunStore.create(tmp_path / "run", {**CONFIG, "shard": "1/2"})
    other.append(react_traj("t1"))
    assert [p.name for p in other.shards()] == ["trajectories-0of2-000.jsonl", "trajectories-1of2-000.jsonl"]
    with pytest.raises(RunError, match="pass --resume"):
        RunStore.create(tmp_path / "run", {**CONFIG, "shard": "1/2"})


def test_errors_are_not_finished_but_kept_as_history(tmp_path):
    store = make_store(tmp_path)
    store.append(react_traj("t0"))
    store.record_error("t1", "expert:solver", "endpoint down", "policy")
    assert store.finished_keys() == {("t0", "expert:solver")}
    store.close()  # stats.json is refreshed at most once a second, and always on close
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["teachers"]["expert:solver"]["errors"] == 1
    resumed = RunStore.create(tmp_path / "run", CONFIG, resume=True)
    resumed.append(react_traj("t1"))
    resumed.record_error("t2", "expert:solver", "boom", "exception")
    assert [e["task_id"] for e in resumed.errors()] == ["t1", "t2"]
    assert resumed.errors()[0]["kind"] == "policy"
    assert resumed.finished_keys() == {("t0", "expert:solver"), ("t1", "expert:solver")}
    assert resumed.write_stats().teachers["expert:solver"].errors == 1  # t1 was redone


def test_torn_error_record_does_not_swallow_the_next(tmp_path):
    store = make_store(tmp_path)
    (tmp_path / "run" / "errors.jsonl").write_text('{"task_id": "t0", "tea')
    store.record_error("t1", "expert:solver", "boom")
    with pytest.warns(RuntimeWarning, match="errors.jsonl:1: skipping a torn error record"):
        assert [e["task_id"] for e in store.errors()] == ["t1"]


def test_stats_json_counts_per_teacher(tmp_path):
    store = make_store(tmp_path)
    store.append(react_traj("t0", success=True))
    store.append(react_traj("t1", success=False))
    store.append(native_traj("t0"))
    store.close()
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["teachers"]["expert:solver"] == {"done": 2, "success": 1, "errors": 0, "steps": 4, "tokens": 240}
    assert stats["teachers"]["openai:big@http://x/v1"]["tokens"] == 340
    assert stats["total"]["done"] == 3
    typed = RunStore.open(tmp_path / "run").stats()
    assert typed.teachers["expert:solver"] == TeacherStats(done=2, success=1, steps=4, tokens=240)
    assert typed.total.done == 3 and typed.doc()["teachers"] == stats["teachers"]
    assert list(stats) == list(typed.doc()) == ["teachers", "total", "updated_at"]  # stats.json's keys, in order
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_duplicate_key_keeps_the_first_and_warns(tmp_path):
    store = make_store(tmp_path)
    store.append(react_traj("t0", id="first"))
    store.append(react_traj("t0", id="second"))
    with pytest.warns(RuntimeWarning, match="duplicate trajectory for task 't0'"):
        assert [t.id for t in store.load()] == ["first"]
    assert [t.id for t in store.load(dedupe=False)] == ["first", "second"]


def test_reader_cannot_append(tmp_path):
    make_store(tmp_path)
    with pytest.raises(RunError, match="opened for reading"):
        RunStore.open(tmp_path / "run").append(react_traj())
