"""The Ray executor on a real two-node Ray cluster on loopback: `ray start --head`, then a second node with
`ray start --address`, one CPU each. Every command runs as `trajdistill ...` in a subprocess, the driver.
The tests share one cluster; the node-kill test runs last, since it leaves the cluster one node short."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from trajdistill.agents import CollectConfig, build_tiny_llama, resolved_config
from trajdistill.train import SelfDistillConfig
from trajdistill.train._self_distill import SelfDistiller
from trajdistill.trajectories import RunStore

from conftest import cli, one_line_error, require

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are picked, so the kernel cannot hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Ray nodes on 127.0.0.1 with their session files in a temp dir of their own, ended by pid."""

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        # token auth, with this cluster's own token, so no ~/.ray/auth_token of another cluster interferes
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
        self.raylets: list[int] = []  # node manager port of each node

    def start_node(self, head: bool = False, cpus: int = 1) -> int:
        ray_bin = Path(sys.executable).with_name("ray")
        ports = free_ports(8)
        ports.remove(self.port) if self.port in ports else ports.pop()  # the head's GCS port, free until it starts
        manager, objects, metrics, agent, agent_grpc, runtime_env, dashboard = ports
        cmd = [str(ray_bin) if ray_bin.exists() else shutil.which("ray"), "start", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(cpus), "--disable-usage-stats", "--node-manager-port", str(manager),
               "--object-manager-port", str(objects), "--metrics-export-port", str(metrics),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env)]
        if head:
            cmd += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp), "--include-dashboard", "false",
                    "--dashboard-port", str(dashboard)]
        else:
            cmd += ["--address", self.address]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=180)
        self.raylets.append(manager)
        return manager

    def raylet_pid(self, manager_port: int) -> int:
        for pid, args in _processes():
            if "/raylet" in args.split(" ")[0] and f"--node_manager_port={manager_port}" in args:
                return pid
        raise LookupError(f"no raylet with node manager port {manager_port}")

    def stop(self) -> None:
        """SIGKILL every process of this cluster (those naming its temp dir, and their children)."""
        ours = {pid for pid, args in _processes() if str(self.temp) in args}
        children = _children()
        todo = list(ours)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in ours:
                    ours.add(child)
                    todo.append(child)
        for pid in ours:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)

    def trajdistill(self, *args: object, **kw):
        return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=600, **kw)


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                pass
    return out


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


@pytest.fixture(scope="module")
def cluster():
    require(HAVE_RAY, "ray is not installed (pip install 'trajdistill[ray]')")
    c = Cluster()
    try:
        c.start_node(head=True)
        c.start_node()
        yield c
    finally:
        c.stop()


def trajectory_lines(run: Path) -> list[str]:
    return [line for shard in sorted(run.glob("trajectories-*.jsonl")) for line in shard.read_text().splitlines()]


def _without_timing(results: dict) -> dict:
    for agent in results["agents"]:
        agent.pop("wall_s")
    return results


@pytest.mark.slow
def test_eval_on_the_cluster_equals_a_local_eval(cluster, tmp_path):
    args = ["eval", "--env", "math", "--agent", "expert:coder", "--agent", "expert:reasoner", "--tasks", 12,
            "--sandbox", "none", "--concurrency", "4"]
    local = cluster.trajdistill(*args, "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    remote = cluster.trajdistill(*args, "--out", tmp_path / "ray", "--executor", "ray", "--ray-address",
                                 cluster.address, "--ray-workers", 2)
    assert remote.returncode == 0, remote.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray"))
    assert _without_timing(a) == _without_timing(b)
    assert [x["n"] for x in a["agents"]] == [12, 12]
    for run in ("expert-coder", "expert-reasoner"):  # the very same episodes, message for message
        here, there = ({t.task_id: t.messages for t in RunStore.open(tmp_path / d / "runs" / run).load()}
                       for d in ("local", "ray"))
        assert here == there and len(here) == 12


@pytest.mark.slow
def test_an_hf_teacher_runs_as_one_model_actor_for_the_workers(cluster, tmp_path):
    model = build_tiny_llama(tmp_path / "tiny")
    res = cluster.trajdistill("eval", "--env", "math", "--agent", f"hf:{model}", "--tasks", 3, "--max-steps", 2,
                              "--sandbox", "none", "--agent-option", "max_new_tokens=8", "--out", tmp_path / "e",
                              "--executor", "ray", "--ray-address", cluster.address)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "e" / "results.json").read_text())["agents"][0]
    assert result["n"] == 3 and result["errors"] == 0
    trajs = RunStore.open(tmp_path / "e" / result["run"]).load()
    assert len(trajs) == 3 and {t.teacher.backend for t in trajs} == {"hf"}
    assert all(t.teacher.sampling["max_new_tokens"] == 8 for t in trajs)
    assert all(t.usage.completion_tokens > 0 for t in trajs)  # the actor's model generated every turn


def test_ray_settings_are_checked_before_anything_runs(tmp_path):
    one_line_error(cli("collect", "--env", "math", "--teacher", "expert:coder", "--out", tmp_path / "a",
                       "--ray-address", "127.0.0.1:6379"), "--ray-address needs --executor ray")
    one_line_error(cli("eval", "--env", "math", "--agent", "expert:coder", "--executor", "dask"),
                   "--executor must be one of", "local", "ray")
    one_line_error(cli("collect", "--env", "math", "--teacher", "expert:coder", "--out", tmp_path / "b",
                       "--executor", "ray", "--ray-workers", "-1"), "--ray-workers must be 0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_without_ray_installed_the_ray_executor_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['ray'] = None; sys.argv[0] = 'trajdistill'; "  # as if ray were missing
              "from trajdistill import main; main()")
    res = subprocess.run([sys.executable, "-c", script, "collect", "--env", "math", "--teacher", "expert:coder",
                          "--out", str(tmp_path / "run"), "--executor", "ray"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    one_line_error(res, "executor 'ray' cannot load", "pip install 'trajdistill[ray]'")
    assert not (tmp_path / "run").exists()


def test_self_distill_samples_on_the_executor_it_is_given(tmp_path):
    cfg = SelfDistillConfig(student="hf:smollm2-135m", env="math", out=str(tmp_path / "sd"), tasks=3,
                            executor="ray", ray_address="127.0.0.1:6379", ray_workers=2)
    distiller = SelfDistiller(cfg)
    cc = distiller._collect_config(cfg.student, tmp_path / "sd" / "samples-0", 1, 0.7)
    assert (cc.executor, cc.ray_address, cc.ray_workers) == ("ray", "127.0.0.1:6379", 2)
    assert not {"executor", "ray_address", "ray_workers"} & set(distiller._settings())  # resumes on either


def test_a_run_collected_on_ray_resumes_locally_and_back():
    """The executor says how to run, not what a run holds: it stays out of run.yaml and the resume check."""
    cfg = CollectConfig(env="math", teachers=["expert:coder"], out="x", executor="ray", ray_address="h:1",
                        ray_workers=3)
    assert not {"executor", "ray_address", "ray_workers"} & set(resolved_config(cfg))


@pytest.mark.slow
def test_node_killed_mid_collection_then_resume_gives_every_pair_once(cluster, tmp_path):
    out, n = tmp_path / "run", 300
    cmd = ["collect", "--env", "math", "--teacher", "expert:coder", "--tasks", n, "--sandbox", "none",
           "--concurrency", "2", "--executor", "ray", "--ray-address", cluster.address, "--out", out]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "trajdistill", *map(str, cmd)], env=cluster.env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(trajectory_lines(out)) < 20 and proc.poll() is None:
            time.sleep(0.02)
        os.kill(cluster.raylet_pid(cluster.raylets[1]), signal.SIGKILL)  # the second node dies
        at_kill = len(trajectory_lines(out))
        proc.wait(timeout=600)
    finally:
        proc.kill()
    stderr = log.read_text()
    assert 20 <= at_kill < n, "the kill must land mid-run"
    assert proc.returncode == 0, stderr[-3000:]
    assert "Ray episode worker was lost" in stderr, stderr[-3000:]  # the driver saw the node go
    resumed = cluster.trajdistill(*cmd, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn or duplicate line anywhere
        trajs = RunStore.open(out).load(dedupe=False)
    ids = Counter(t.task_id for t in trajs)
    assert len(ids) == n and set(ids.values()) == {1}
    assert len(trajectory_lines(out)) == n
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"]["done"] == n and stats["total"]["errors"] == 0


@pytest.mark.slow
def test_with_no_worker_left_the_rest_is_recorded_as_errors_and_a_local_resume_completes(tmp_path):
    require(HAVE_RAY, "ray is not installed (pip install 'trajdistill[ray]')")
    c = Cluster()
    try:
        c.start_node(head=True, cpus=0)  # the head runs no worker: the one worker is on the node that dies
        c.start_node()
        out, n = tmp_path / "run", 300
        cmd = ["collect", "--env", "math", "--teacher", "expert:coder", "--tasks", n, "--sandbox", "none",
               "--concurrency", "2", "--out", out]
        proc = subprocess.Popen([sys.executable, "-m", "trajdistill", *map(str, cmd), "--executor", "ray",
                                 "--ray-address", c.address], env=c.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(trajectory_lines(out)) < 20 and proc.poll() is None:
                time.sleep(0.02)
            os.kill(c.raylet_pid(c.raylets[1]), signal.SIGKILL)
            at_kill = len(trajectory_lines(out))
            proc.wait(timeout=600)
        finally:
            proc.kill()
    finally:
        c.stop()
    assert 20 <= at_kill < n, "the kill must land mid-run"
    done = len(trajectory_lines(out))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == n - done and {e["kind"] for e in errors} == {"node"}  # every pair not done, recorded
    resumed = cli(*cmd, "--resume")  # on this machine now: the executor is not part of the run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = Counter(t.task_id for t in RunStore.open(out).load(dedupe=False))
    assert len(ids) == n and set(ids.values()) == {1}
    assert json.loads((out / "stats.json").read_text())["total"]["errors"] == 0
