"""The sandbox interface on the `none` and `nsjail` backends, and the `sandbox run` CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from conftest import require
from trajdistill.envs import UnknownNameError
from trajdistill.envs.sandbox import Limits, SandboxError, get_provider, resolve_backend, sandboxes
from trajdistill.envs.sandbox._host import UnsandboxedWarning

LIMITS = Limits(timeout_s=10.0, memory_mb=256, pids=32, output_bytes=64_000)
BACKENDS = ["none", pytest.param("nsjail", marks=pytest.mark.nsjail)]


def nsjail_missing() -> str | None:
    return sandboxes.get("nsjail").available()


@pytest.fixture(params=BACKENDS)
async def sb(request):
    if request.param == "nsjail":
        why = nsjail_missing()
        require(why is None, f"nsjail sandbox unavailable: {why}")
    async with get_provider(request.param, LIMITS) as provider:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsandboxedWarning)
            sandbox = await provider.create()
        try:
            yield sandbox
        finally:
            await provider.release(sandbox)


async def test_exec_feeds_stdin(sb):
    res = await sb.exec("cat", stdin="hello\n")
    assert res.stdout == "hello\n" and res.ok


async def test_exec_passes_env(sb):
    res = await sb.exec("echo $GREETING", env={"GREETING": "bonjour"})
    assert res.stdout == "bonjour\n"


async def test_exec_reports_exit_codes(sb):
    failed = await sb.exec("echo oops >&2; exit 3")
    assert failed.exit_code == 3 and not failed.ok
    assert failed.stderr == "oops\n"
    assert "[exit code 3]" in failed.observation()
    assert (await sb.exec("true")).ok


async def test_exec_argv_and_python(sb):
    assert (await sb.exec(["echo", "a  b"])).stdout == "a  b\n"
    assert (await sb.exec_python("print(6 * 7)")).stdout == "42\n"


async def test_file_round_trip(sb):
    await sb.write_file("d/x.txt", "abc")
    assert await sb.read_file("d/x.txt") == b"abc"
    assert await sb.read_file("/work/d/x.txt") == b"abc"
    assert (await sb.exec("cat d/x.txt")).stdout == "abc"
    await sb.write_file("blob.bin", bytes(range(256)))
    assert await sb.read_file("blob.bin") == bytes(range(256))
    res = await sb.exec("echo more >> d/x.txt && echo made > y.txt")
    assert res.ok, res.stderr  # the sandbox may change files the host wrote for it
    assert await sb.read_file("d/x.txt") == b"abcmore\n"
    assert await sb.read_file("y.txt") == b"made\n"


async def test_workdir_persists_until_reset(sb):
    await sb.exec("echo 1 > keep")
    assert (await sb.exec("cat keep")).stdout == "1\n"
    await sb.reset()
    assert (await sb.exec("ls -A")).stdout == ""
    with pytest.raises(FileNotFoundError):
        await sb.read_file("keep")


async def test_installed_files_outlive_fresh_execs_until_reset(sb):
    where = await sb.install({"tools/t.py": "print('installed')\n", "README": "x"})
    await sb.write_file("a.txt", "x")
    res = await sb.exec_fresh(f"ls -A; {sb.python} {where}/tools/t.py; echo 2 > b.txt")
    assert (res.stdout, res.ok) == ("installed\n", True)  # /work was emptied, the installed files stayed
    assert (await sb.exec_fresh("ls -A")).stdout == ""
    if sb.backend != "none":  # `none` confines nothing: its /tmp is the host's, and root may write anywhere
        await sb.exec("echo 1 > /tmp/t")
        assert (await sb.exec_fresh("cat /tmp/t")).stdout == ""
        tamper = await sb.exec_fresh(f"echo 'print(1)' > {where}/tools/t.py")
        assert not tamper.ok
        assert (await sb.exec(f"cat {where}/tools/t.py")).stdout == "print('installed')\n"
    await sb.reset()
    assert not (await sb.exec(f"test -e {where}/tools/t.py")).ok
    with pytest.raises(ValueError, match="relative"):
        await sb.install({"../up.py": "x"})


async def test_missing_file_raises(sb):
    with pytest.raises(FileNotFoundError):
        await sb.read_file("nope.txt")


@pytest.fixture
async def jail():
    why = nsjail_missing()
    require(why is None, f"nsjail sandbox unavailable: {why}")
    async with get_provider("nsjail", LIMITS) as provider:
        async with provider.acquire() as sandbox:
            yield sandbox


@pytest.mark.nsjail
@pytest.mark.parametrize("path", ["../x", "d/../../x", "/etc/passwd", "/workspace/x"])
async def test_nsjail_rejects_paths_outside_work(jail, path):
    with pytest.raises(ValueError):
        await jail.read_file(path)
    with pytest.raises(ValueError):
        await jail.write_file(path, "x")


@pytest.mark.nsjail
async def test_nsjail_refuses_special_files(jail):
    await jail.exec("mkfifo pipe; mkdir sub")
    with pytest.raises(ValueError):
        await jail.read_file("pipe")  # a FIFO must not block the host
    with pytest.raises(IsADirectoryError):
        await jail.read_file("sub")


@pytest.mark.nsjail
async def test_nsjail_runs_unprivileged_with_limits(jail):
    res = await jail.exec_python("import os, resource\n"
                                 "print(os.getuid(), os.getpid(), resource.getrlimit(resource.RLIMIT_NPROC)[0],"
                                 " resource.getrlimit(resource.RLIMIT_AS)[0])")
    uid, pid, nproc, mem = res.stdout.split()
    assert uid == "65534"
    assert pid == "1"  # its own PID namespace
    assert int(nproc) == LIMITS.pids
    assert int(mem) == LIMITS.memory_mb * 1024 * 1024


async def test_none_backend_warns_every_time():
    provider = get_provider("none", LIMITS)
    for _ in range(2):
        with pytest.warns(UnsandboxedWarning):
            sandbox = await provider.create()
        await sandbox.cleanup()


def test_auto_never_picks_none(monkeypatch):
    picked = None
    try:
        picked = resolve_backend("auto")
    except (SandboxError, UnknownNameError):
        pass
    assert picked in (None, "docker", "nsjail")
    for name in ("docker", "nsjail"):
        try:
            cls = sandboxes.get(name)
        except UnknownNameError:
            continue
        monkeypatch.setattr(cls, "available", classmethod(lambda c: "disabled for this test"))
    with pytest.raises((SandboxError, UnknownNameError)) as err:
        resolve_backend("auto")
    if isinstance(err.value, SandboxError):
        assert "none" in str(err.value)  # the message says how to opt in


def test_unknown_backend_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        get_provider("chroot-ish")
    for name in ("docker", "nsjail", "none"):
        assert name in str(err.value)


CLI = [sys.executable, "-c", "from trajdistill._app import run; run()"]


@pytest.mark.nsjail
def test_cli_run_exits_with_the_command_code():
    why = nsjail_missing()
    require(why is None, f"nsjail sandbox unavailable: {why}")
    proc = subprocess.run(CLI + ["sandbox", "run", "--backend", "nsjail", "--", "sh", "-c", "echo hi; exit 3"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "hi\n"


LEAKER = """
import asyncio, time
from trajdistill.envs.sandbox import Limits, get_provider

async def main():
    provider = get_provider("nsjail", Limits())
    sb = await provider.create()
    print(sb.root, flush=True)
    time.sleep(60)

asyncio.run(main())
"""


@pytest.mark.nsjail
async def test_nsjail_cleans_up_what_a_killed_run_leaked(tmp_path):
    why = nsjail_missing()
    require(why is None, f"nsjail sandbox unavailable: {why}")
    proc = subprocess.Popen([sys.executable, "-c", LEAKER], stdout=subprocess.PIPE, text=True)
    try:
        leaked = Path(proc.stdout.readline().strip())
    finally:
        proc.kill()  # SIGKILL: nothing of the run's own cleanup runs
        proc.wait()
    assert leaked.name.startswith("trajdistill-nsjail-") and leaked.is_dir()
    live = Path(tempfile.mkdtemp(prefix=f"trajdistill-nsjail-{os.getpid()}-"))  # its owner still runs
    try:
        async with get_provider("nsjail", LIMITS):  # the next start
            assert not leaked.exists()
            assert live.exists()
    finally:
        live.rmdir()


@pytest.mark.nsjail
async def test_nsjail_work_is_a_sized_tmpfs_that_reset_empties(jail):
    assert os.path.ismount(jail.root)  # not a directory on the host's disk
    await jail.write_file("a.txt", "x")
    assert (await jail.exec("df -m /work | tail -1")).stdout.split()[1] == "256"
    await jail.reset()
    assert (await jail.exec("ls -A /work")).stdout == ""


def jail_cgroups() -> set[Path]:
    from trajdistill.envs.sandbox._nsjail import _own_cgroups_v1

    return {d for mount, path in _own_cgroups_v1().values()
            for d in (Path(mount) / path.strip("/") / "trajdistill").glob("NSJAIL.*")}


@pytest.mark.nsjail
async def test_nsjail_leaves_no_cgroup_behind_when_an_exec_times_out(jail):
    before = jail_cgroups()
    res = await jail.exec_python("while True: pass", timeout=1.0)
    assert res.timed_out
    assert jail_cgroups() - before == set()


@pytest.mark.nsjail
async def test_nsjail_a_jail_slow_to_start_does_not_eat_the_commands_time(tmp_path):
    """Setting a jail up has taken tens of seconds on a loaded machine; that time is not the code's. Here nsjail
    itself starts 3 s late (a wrapper sleeps, then runs it) under a 2 s limit: the command still runs, and a
    command that runs past the limit is still stopped by it."""
    from trajdistill.envs.sandbox._nsjail import find_binary

    require(nsjail_missing() is None, f"nsjail sandbox unavailable: {nsjail_missing()}")
    slow = tmp_path / "slow-nsjail"
    slow.write_text(f"#!/bin/sh\nsleep 3\nexec {find_binary()} \"$@\"\n")
    slow.chmod(0o755)
    async with get_provider("nsjail", Limits(timeout_s=2.0), binary=str(slow)) as provider:
        async with provider.acquire() as sandbox:
            done = await sandbox.exec_python("print(6 * 7)")
            spin = await sandbox.exec_python("while True: pass")
    assert (done.exit_code, done.stdout.strip(), done.timed_out) == (0, "42", False)
    assert spin.timed_out and not spin.killed


@pytest.mark.nsjail
async def test_nsjail_killed_before_its_teardown_leaves_no_cgroup_and_spares_a_live_jails(jail, monkeypatch):
    """With no grace, nsjail is SIGKILLed on our timeout and cannot remove its cgroups itself (as on a loaded
    machine, where its teardown takes longer than TERM_GRACE_S); the exec removes them, and not a running jail's."""
    from trajdistill.envs.sandbox import _nsjail

    before = jail_cgroups()
    running = asyncio.create_task(jail.exec("sleep 4", timeout=10))
    deadline = time.monotonic() + 5
    while not jail_cgroups() - before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    live = jail_cgroups() - before
    assert live, "the running jail's cgroups must exist"
    monkeypatch.setattr(_nsjail, "TERM_GRACE_S", 0.0)
    monkeypatch.setattr(_nsjail, "SETUP_S", 0.0)  # ours fires before nsjail's own limit, a second later
    res = await jail.exec_python("while True: pass", timeout=1.0)
    assert res.timed_out
    assert jail_cgroups() - before == live  # the killed jail's are gone; the running jail keeps its own
    assert (await running).exit_code == 0
    assert jail_cgroups() - before == set()


@pytest.mark.nsjail
def test_nsjail_without_a_usable_cgroup_says_so_instead_of_pretending(monkeypatch):
    from trajdistill.envs.sandbox import _nsjail

    why = nsjail_missing()
    require(why is None, f"nsjail sandbox unavailable: {why}")
    monkeypatch.setattr(_nsjail, "_own_cgroups_v1", lambda: {})  # as on a host with no cgroup v1 mounted
    _nsjail.cgroup_argv.cache_clear()
    try:
        with pytest.warns(UserWarning, match="bound each process, not the sandbox: no cgroup v1"):
            _nsjail.NsjailProvider(LIMITS)
        argv = _nsjail.jail_argv("nsjail", "/tmp/w", 1_000_000, LIMITS, 1.0, {}, ["true"])
        assert not [a for a in argv if a.startswith("--cgroup")]
        assert "--rlimit_as" in argv and "--rlimit_nproc" in argv  # the per-process bounds stay
    finally:
        _nsjail.cgroup_argv.cache_clear()
