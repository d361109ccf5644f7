"""Escape attempts against every real sandbox backend, each judged from the host.

A missing backend skips here and fails under TRAJDISTILL_REQUIRE_ALL=1.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import require
from trajdistill.envs import UnknownNameError
from trajdistill.envs.sandbox import ExecResult, Limits, get_provider, sandboxes, self_check
from trajdistill.envs.sandbox._selfcheck import (DAEMON, DISK_FILL, ESCAPE_CALLS, ESCAPE_PROBES, FORK_BOMB, MEMORY_BOMB,
                                                 NET_SCRIPT, SPREAD_MEMORY, WORK_CAP_MB, find_processes, kill_processes,
                                                 peak_memory_mb, work_usage_mb)

LIMITS = Limits(timeout_s=5.0, memory_mb=256, pids=32, output_bytes=64_000)
BACKENDS = [pytest.param("nsjail", marks=pytest.mark.nsjail),
            pytest.param("docker", marks=pytest.mark.docker)]


def backend_missing(name: str) -> str | None:
    """Why backend `name` cannot run here, or None."""
    try:
        return sandboxes.get(name).available()
    except UnknownNameError as e:
        return str(e)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    why = backend_missing(request.param)
    require(why is None, f"{request.param} sandbox unavailable: {why}")
    return request.param


@pytest.fixture
async def sb(backend):
    async with get_provider(backend, LIMITS) as provider:
        async with provider.acquire() as sandbox:
            yield sandbox


@pytest.fixture
def home_secret():
    """A secret file in the host's home directory (/root when run as root), removed afterwards."""
    secret = f"home-secret-{uuid.uuid4().hex}"
    path = Path.home() / f".trajdistill-test-{uuid.uuid4().hex}"
    path.write_text(secret)
    yield path, secret
    path.unlink(missing_ok=True)


async def test_writes_to_host_paths_stay_inside(sb, tmp_path):
    tag = uuid.uuid4().hex
    targets = [Path.home() / f"pwned-{tag}", Path("/tmp") / f"pwned-{tag}", tmp_path / "pwned",
               Path(f"/pwned-{tag}")]
    try:
        script = "; ".join(f"echo x > {t}" for t in targets) + f"; echo x > /work/../pwned-{tag}-up"
        res = await sb.exec(script)
        assert isinstance(res, ExecResult)
        assert [t for t in targets if t.exists()] == []
        assert not Path(f"/pwned-{tag}-up").exists()
        assert list(tmp_path.iterdir()) == []
    finally:
        for t in targets[:2]:
            t.unlink(missing_ok=True)


async def test_host_secrets_stay_unread(sb, tmp_path, home_secret, monkeypatch):
    secret = f"tmp-secret-{uuid.uuid4().hex}"
    (tmp_path / "secret.txt").write_text(secret)
    home_path, home_value = home_secret
    api_key = f"sk-fake-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    res = await sb.exec(f"cat {tmp_path / 'secret.txt'} {home_path}; env; "
                        "cat /proc/[0-9]*/environ | tr '\\0' '\\n'")
    seen = res.stdout + res.stderr
    assert "PATH=" in seen  # env ran, so a leak would have shown
    for value in (secret, home_value, api_key):
        assert value not in seen


async def test_host_file_api_ignores_planted_symlinks(sb, tmp_path, home_secret):
    home_path, home_value = home_secret
    target = tmp_path / "written-through-link"
    await sb.exec(f"ln -s {home_path} link; ln -s {target} out")
    try:
        data = await sb.read_file("link")
    except (OSError, ValueError):
        data = b""
    assert home_value.encode() not in data
    try:
        await sb.write_file("out", "pwned")
    except (OSError, ValueError):
        pass  # refusing is as good as writing inside
    assert not target.exists()


async def test_network_is_cut(sb):
    hits = []

    def on_connect(reader, writer):
        hits.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        res = await sb.exec_python(NET_SCRIPT.format(port=port))
    finally:
        server.close()
        await server.wait_closed()
    assert hits == []
    assert "CONNECTED" not in res.stdout
    assert res.stdout.count("BLOCKED") == 2, res.stdout + res.stderr


async def test_fork_bomb_is_contained(sb):
    token = f"forkbomb-{uuid.uuid4().hex}"
    assert find_processes(token) == []
    task = asyncio.create_task(sb.exec_python(FORK_BOMB.format(token=token), timeout=3.0))
    peak = 0
    while not task.done():
        peak = max(peak, len(find_processes(token)))
        await asyncio.sleep(0.1)
    res = task.result()
    await asyncio.sleep(0.3)
    left = kill_processes(token)
    assert isinstance(res, ExecResult) and not res.ok
    assert peak >= 2  # the bomb did fork
    assert peak <= LIMITS.pids + 2  # the process limit held (+ the jail's own supervisor)
    assert left == 0
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the host can still fork


async def test_memory_bomb_comes_back_as_a_result(sb):
    res = await sb.exec_python(MEMORY_BOMB, timeout=30.0)
    assert isinstance(res, ExecResult)
    assert res.killed or res.exit_code != 0
    assert not res.timed_out  # it was stopped by the memory limit, not the clock


async def test_memory_is_bounded_for_the_whole_sandbox(sb):
    token = f"spread-{uuid.uuid4().hex}"
    code = SPREAD_MEMORY.format(token=token, children=6, child_mb=128, hold_s=1.5)
    peak = await peak_memory_mb(sb, code, token, timeout=20.0)
    assert peak > 32  # the children did allocate
    assert peak <= LIMITS.memory_mb + 32, f"6 children held {peak:.0f} MB against a {LIMITS.memory_mb} MB limit"


async def test_work_has_a_size_cap(backend):
    # Memory well above the cap, so the size of /work is what stops the writes.
    async with get_provider(backend, Limits(timeout_s=30.0, memory_mb=1024)) as provider:
        async with provider.acquire() as sb:
            res = await sb.exec_python(DISK_FILL.format(files=8, file_mb=64), timeout=30.0)
            used = await work_usage_mb(sb)
            assert "stopped" in res.stdout, res.observation()
            assert 0 < used <= WORK_CAP_MB
            assert (await sb.exec("echo x > after && cat after")).stdout == ""  # full, yet still answers
            await sb.exec("rm -f /work/fill-*")
            assert (await sb.exec("echo y > after && cat after")).stdout == "y\n"


async def test_namespace_mount_ptrace_and_keyring_calls_are_denied(sb):
    res = await sb.exec_python(ESCAPE_CALLS.format())
    lines = res.stdout.splitlines()
    assert len(lines) == ESCAPE_PROBES, res.observation()
    assert [ln for ln in lines if not ln.startswith("DENIED")] == []


async def test_ordinary_python_still_runs(sb):
    code = ("import threading, subprocess, concurrent.futures as cf\n"
            "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
            "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())\n"
            "with cf.ProcessPoolExecutor(2) as ex: print('pool', sum(ex.map(abs, [-1, -2])))\n")
    res = await sb.exec_python(code, timeout=20.0)
    assert res.stdout.split() == ["thread", "child", "pool", "3"], res.observation()


async def test_infinite_loop_times_out(sb):
    start = time.monotonic()
    res = await sb.exec_python("while True: pass", timeout=1.5)
    assert res.timed_out and not res.ok
    assert "[timed out]" in res.observation()
    assert time.monotonic() - start < 1.5 + 5.0


async def test_output_flood_is_truncated(sb):
    code = "import sys\nb = b'x' * 1048576\nfor _ in range(200): sys.stdout.buffer.write(b)"
    res = await sb.exec_python(code, timeout=60.0)
    assert res.truncated
    assert "output truncated" in res.stdout
    assert len(res.stdout) <= LIMITS.output_bytes + 100
    assert res.stdout.startswith("x" * 1000)


async def test_daemon_dies_with_the_exec(sb):
    token = f"daemon-{uuid.uuid4().hex}"
    try:
        res = await sb.exec_python(DAEMON.format(token=token))
        assert "parent done" in res.stdout
        await asyncio.sleep(0.5)
        assert find_processes(token) == []
        ticks = (await sb.read_file(f"daemon-{token}")).count(b"tick")
        assert ticks >= 1  # the daemon did run inside
        await asyncio.sleep(0.6)
        assert (await sb.read_file(f"daemon-{token}")).count(b"tick") == ticks
    finally:
        kill_processes(token)


async def test_kill_all_spares_the_host(sb):
    sentinel = subprocess.Popen(["sleep", "300"])
    try:
        res = await sb.exec("kill -9 -1; echo still here")
        assert isinstance(res, ExecResult)
        await asyncio.sleep(0.3)
        assert sentinel.poll() is None
        assert (await sb.exec("echo alive")).stdout == "alive\n"  # the sandbox is still usable
    finally:
        sentinel.kill()
        sentinel.wait()


async def test_self_check_passes(backend):
    result = await self_check(backend)
    assert result.backend == backend
    assert len(result.checks) == 12
    assert [c.name for c in result.checks if not c.contained] == []


def test_process_finder_sees_host_processes():
    token = f"finder-{uuid.uuid4().hex}"
    proc = subprocess.Popen(["sh", "-c", f"sleep 30; : {token}"])
    try:
        deadline = time.monotonic() + 5
        while proc.pid not in find_processes(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in find_processes(token)
    finally:
        proc.kill()
        proc.wait()


async def test_self_check_flags_the_unconfined_backend():
    with pytest.warns(UserWarning):
        result = await self_check("none")
    verdicts = {c.name: c.contained for c in result.checks}
    assert result.backend == "none"
    assert verdicts["write host paths"] is False
    assert verdicts["read host secrets"] is False
    assert verdicts["network"] is False
    assert verdicts["kill -9 -1"] is False  # never run on the host
