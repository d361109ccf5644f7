"""Collection runs: expert teachers, kill-and-resume, and a faulty OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import yaml

from trajdistill.agents import CollectConfig, collect
from trajdistill.agents._collector import in_shard, parse_shard
from trajdistill.trajectories import RunStore

from fault_server import Error, FaultServer, Malformed, Reply, Stall

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def lines(run: Path) -> list[dict]:
    out = []
    for shard in sorted(run.glob("trajectories-*.jsonl")):
        out += [json.loads(line) for line in shard.read_text().splitlines()]
    return out


def test_two_expert_teachers_run_every_task(tmp_path):
    out = tmp_path / "run"
    cfg = CollectConfig(env="math", teachers=["expert:coder", "expert:reasoner"], out=str(out), tasks=6,
                        split="train", concurrency=4, sandbox="none")
    store, progress = collect(cfg)
    rows = lines(out)
    pairs = Counter((r["task_id"], r["teacher"]["spec"]) for r in rows)
    assert len(pairs) == 12 and set(pairs.values()) == {1}
    assert len(rows) == 12 and progress.done == 12 and progress.errors == 0
    coder = [r for r in rows if r["teacher"]["spec"] == "expert:coder"]
    assert all(r["outcome"]["success"] for r in coder)
    assert all(r["provenance"]["sandbox"] == "none" for r in coder)
    assert yaml.safe_load((out / "run.yaml").read_text())["teachers"] == ["expert:coder", "expert:reasoner"]
    assert (out / "stats.json").exists()
    # A second run without --resume refuses to overwrite; with --resume it has nothing left to do.
    with pytest.raises(ValueError):
        collect(cfg)
    cfg.resume = True
    _, progress = collect(cfg)
    assert progress.total == 0 and len(lines(out)) == 12


def test_shards_partition_the_tasks():
    ids = [f"math-train-{i:05d}" for i in range(200)]
    shards = [{t for t in ids if in_shard(t, parse_shard(f"{i}/3"))} for i in range(3)]
    assert set().union(*shards) == set(ids)
    assert sum(len(s) for s in shards) == len(ids)
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("3/3")


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    out, tasks = tmp_path / "run", 1000  # enough that the signal lands mid-run: the expert plays ~35 tasks/s
    cmd = [sys.executable, "-m", "trajdistill", "collect", "--env", "math", "--teacher", "expert:coder",
           "--tasks", str(tasks), "--concurrency", "4", "--sandbox", "none", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_raw_lines(out)) < 15:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(_raw_lines(out))
    assert 15 <= before < tasks, "the kill must land mid-run"
    subprocess.run(cmd + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a torn line: every line must parse
        trajs = RunStore.open(out).load()
    ids = Counter(t.task_id for t in trajs)
    assert len(ids) == tasks and set(ids.values()) == {1}
    assert len(_raw_lines(out)) == tasks


def test_sigterm_mid_run_exits_143_and_resume_completes_the_run(tmp_path):
    """SIGTERM (a scheduler's stop) unwinds like Ctrl-C: exit 143, one "terminated" line naming --resume, every
    trajectory it reported kept, and --resume finishes the rest with no duplicate."""
    out, tasks = tmp_path / "run", 1000  # enough that the signal lands mid-run: the expert plays ~35 tasks/s
    cmd = [sys.executable, "-m", "trajdistill", "collect", "--env", "math", "--teacher", "expert:coder",
           "--tasks", str(tasks), "--concurrency", "4", "--sandbox", "none", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_raw_lines(out)) < 15:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout[-2000:]
    assert "terminated: finished trajectories are kept" in stdout and "--resume" in stdout
    before = len(_raw_lines(out))
    assert 15 <= before < tasks, "the signal must land mid-run"
    subprocess.run(cmd + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = Counter(t.task_id for t in RunStore.open(out).load())
    assert len(ids) == tasks and set(ids.values()) == {1}


def _raw_lines(run: Path) -> list[str]:
    return [line for shard in run.glob("trajectories-*.jsonl") for line in shard.read_text().splitlines()]


def test_faulty_endpoint_every_task_accounted_for(tmp_path):
    final = Reply("Thought: I computed it.\nFinal Answer: 7")

    def script(i, body):
        # Faults by request index: most succeed after retries; every 7th request keeps failing.
        kinds = [Error(500), Error(429, retry_after=0.01), Malformed(), Stall(5.0), None, None]
        if i % 7 == 6:
            return Error(503)
        return kinds[i % len(kinds)] or final

    out = tmp_path / "run"
    with FaultServer(script) as url:
        cfg = CollectConfig(env="math", teachers=[f"openai:fault-model@{url}"], out=str(out), tasks=12,
                            concurrency=4, sandbox="none",
                            teacher_options={"max_retries": 2, "timeout_s": 1.0})
        store, progress = collect(cfg)
    done = {t.task_id for t in store.load()}
    errored = {json.loads(line)["task_id"] for line in (out / "errors.jsonl").read_text().splitlines()} \
        if (out / "errors.jsonl").exists() else set()
    assert done | errored == {t.id for t in _math_tasks(12)}
    assert not done & errored
    assert progress.done == 12
    assert done, "some tasks must survive the faults through retries"
    usage = [t.usage for t in store.load()]
    assert all(u.prompt_tokens > 0 and u.completion_tokens > 0 for u in usage)


def _math_tasks(n):
    from trajdistill.envs import make_env

    return make_env("math").tasks("train", n=n)


def test_bad_input_gets_one_line_and_nonzero_exit(tmp_path):
    res = subprocess.run([sys.executable, "-m", "trajdistill", "collect", "--env", "nope", "--teacher",
                          "expert:x", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: unknown env 'nope'; known:")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_hf_teacher_collects_with_batched_generation(tmp_path):
    from trajdistill.agents import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "run"
    cfg = CollectConfig(env="math", teachers=[f"hf:{model}"], out=str(out), tasks=4, concurrency=4,
                        max_steps=2, sandbox="none", teacher_options={"max_new_tokens": 8})
    store, progress = collect(cfg)
    trajs = store.load()
    assert len(trajs) == 4 and progress.errors == 0
    for t in trajs:
        assert t.teacher.backend == "hf"
        assert t.usage.prompt_tokens > 0 and t.usage.completion_tokens > 0
        # a random tiny model writes no valid action: each turn comes back as a parse-error observation
        assert t.usage.steps == 2 and t.usage.invalid_actions >= 1


def test_a_reported_trajectory_is_on_disk_and_concurrent_finishes_share_fsyncs(tmp_path, monkeypatch):
    import os
    import threading

    from trajdistill.trajectories import _store

    out = tmp_path / "run"
    synced: dict[str, int] = {}  # shard path -> bytes an fsync of it has returned for
    shard_syncs = []
    lock = threading.Lock()
    real_fsync = os.fsync

    def fsync(fd):  # the real fsync, noting what it covered: every byte written before the call
        path, size = os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size
        real_fsync(fd)
        with lock:
            synced[path] = max(synced.get(path, 0), size)
            if os.path.basename(path).startswith("trajectories-"):
                shard_syncs.append(size)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_store, "GROUP_WINDOW_S", 1.0)  # wide, so the 8 workers' first episodes surely meet
    unsynced_reports = []

    def listener(progress):  # each finished pair must already be in the fsynced part of the shard
        (shard,) = out.glob("trajectories-*.jsonl")
        with lock:
            durable = shard.read_bytes()[:synced.get(str(shard), 0)].count(b"\n")
        if durable < progress.done - progress.errors:
            unsynced_reports.append((progress.done, durable))

    cfg = CollectConfig(env="math", teachers=["expert:reasoner"], out=str(out), tasks=24, concurrency=8,
                        sandbox="none")
    store, progress = collect(cfg, listener)
    assert progress.done == 24 and progress.errors == 0 and len(lines(out)) == 24
    assert unsynced_reports == []
    assert len(shard_syncs) == store.syncs
    assert 1 <= store.syncs < 24  # trajectories that finished together shared an fsync


def test_the_loop_engine_is_how_a_run_steps_not_what_it_holds(tmp_path):
    from trajdistill.envs import ConfigError

    base = dict(env="twx:coin", teachers=["expert:gold"], split="train", sandbox="none")
    collect(CollectConfig(**base, tasks=3, out=str(tmp_path / "run"), loop="langgraph"))
    collect(CollectConfig(**base, tasks=6, out=str(tmp_path / "run"), loop="direct", resume=True))
    collect(CollectConfig(**base, tasks=6, out=str(tmp_path / "direct")))
    mixed = {t.task_id: t.messages for t in RunStore.open(tmp_path / "run").load()}
    direct = {t.task_id: t.messages for t in RunStore.open(tmp_path / "direct").load()}
    assert len(mixed) == 6 and mixed == direct  # the engines play the same games turn for turn
    with pytest.raises(ConfigError, match="--loop must be one of direct, langgraph, got 'fast'"):
        CollectConfig(**base, out=str(tmp_path / "x"), loop="fast")


def test_stop_on_repeat_is_stored_when_set_and_a_resume_may_not_change_it(tmp_path):
    from trajdistill.envs import ConfigError
    from trajdistill.trajectories import RunError

    base = dict(env="twx:coin", teachers=["expert:gold"], split="train", sandbox="none", tasks=2)
    collect(CollectConfig(**base, out=str(tmp_path / "off")))
    collect(CollectConfig(**base, out=str(tmp_path / "on"), stop_on_repeat=3))
    off, on = (yaml.safe_load((tmp_path / name / "run.yaml").read_text()) for name in ("off", "on"))
    assert "stop_on_repeat" not in off and on["stop_on_repeat"] == 3  # off: runs written before it still resume
    with pytest.raises(RunError, match="'stop_on_repeat' differs .run has unset, now 3."):
        collect(CollectConfig(**base, out=str(tmp_path / "off"), stop_on_repeat=3, resume=True))
    with pytest.raises(ConfigError, match="--stop-on-repeat must be 0 .never. or at least 2, got 1"):
        CollectConfig(**base, out=str(tmp_path / "x"), stop_on_repeat=1)
