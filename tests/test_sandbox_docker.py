"""Docker-specific behaviour of the sandbox backend, against the real engine.

The escape attempts common to all backends live in test_sandbox_attacks.py.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import requests.exceptions

from conftest import require
from trajdistill.envs.sandbox import Limits, SandboxError

pytestmark = pytest.mark.docker

docker = pytest.importorskip("docker")
from trajdistill.envs.sandbox._docker import (LABEL, OWNER_LABEL, DockerProvider, _check, _remove, build_image, debian_mirror,
                                              image_name, remove_stale)

LIMITS = Limits(timeout_s=5.0, memory_mb=256, pids=48, output_bytes=10_000, cpus=0.5)


@pytest.fixture
def client():
    why = DockerProvider.available()
    require(why is None, f"docker sandbox unavailable: {why}")
    c = docker.from_env()
    yield c
    c.close()


@pytest.fixture
async def provider(client):
    async with DockerProvider(LIMITS, pool_size=1) as p:
        yield p


async def test_exec_separates_streams_and_keeps_exit_code(provider):
    async with provider.acquire() as sb:
        res = await sb.exec("echo out; echo err >&2; exit 3")
        assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
        py = await sb.exec_python("import os; print(os.getuid(), os.getcwd())")
        assert py.stdout.split() == ["65534", "/work"]


async def test_env_is_clean_plus_the_exec_env(provider):
    async with provider.acquire() as sb:
        res = await sb.exec("env | sort", env={"FOO": "bar"})
    names = {line.split("=", 1)[0] for line in res.stdout.splitlines()}
    assert names <= {"FOO", "HOME", "LANG", "PATH", "PWD"}
    assert "FOO=bar" in res.stdout


async def test_stdin_reaches_the_command_and_leaves_no_file(provider):
    async with provider.acquire() as sb:
        res = await sb.exec(["cat"], stdin="line one\nline two\n")
        assert res.stdout == "line one\nline two\n"
        listing = await sb.exec("ls -A /work")
        assert listing.stdout == ""


async def test_pool_reuses_the_container_with_a_wiped_workdir(provider):
    sb = await provider.create()
    await sb.write_file("notes/a.txt", "x")
    await sb.exec("echo y > /tmp/t; echo z > /dev/shm/s; chmod 000 notes; sleep 300 >/dev/null 2>&1 &")
    await sb.install({"tools/t.py": "x = 1\n"})
    first_id = sb.id
    await provider.release(sb)

    again = await provider.create()
    assert again.id == first_id
    assert (await again.exec("ls -A /work")).stdout == ""
    assert (await again.exec("ls -A /tmp /dev/shm")).stdout == "/dev/shm:\n\n/tmp:\n"
    assert "sleep 300" not in (await again.exec("ps -eo args=")).stdout
    await provider.release(again)


async def test_installed_files_stay_read_only_across_fresh_execs(provider):
    async with provider.acquire() as sb:
        where = await sb.install({"tools/t.py": "print('installed')\n"})
        await sb.write_file("a.txt", "x")
        changed = await sb.exec_fresh(f"ls -A; echo no >{where}/tools/t.py; mv {where} /tmp/moved; "
                                      f"rm -rf {where}; echo y > /tmp/y")
        assert changed.stdout == ""  # /work was emptied first
        after = await sb.exec_fresh(f"python3 {where}/tools/t.py; ls -A /work /tmp")
        assert after.stdout == "installed\n/tmp:\n.trajdistill-box\n\n/work:\n"


async def test_release_beyond_pool_size_removes_the_container(client, provider):
    a, b = await provider.create(), await provider.create()
    await provider.release(a)
    await provider.release(b)  # pool_size=1: this one goes away
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(b.id)
    assert client.containers.get(a.id).status == "running"


async def test_close_removes_every_container(client):
    p = DockerProvider(LIMITS, pool_size=2)
    await p.warm()
    ids = [sb.id for sb in p._idle]
    assert len(ids) == 2
    await p.close()
    for cid in ids:
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(cid)


def test_stale_labelled_containers_are_removed(client):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the owner of a crashed run
    stale = client.containers.run(image_name(), ["sleep", "infinity"], detach=True, network_mode="none",
                                  labels={LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}:{dead.pid}"})
    live = client.containers.run(image_name(), ["sleep", "infinity"], detach=True, network_mode="none",
                                 labels={LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"})
    try:
        assert remove_stale(client) >= 1
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(stale.id)
        assert client.containers.get(live.id).status == "running"
    finally:
        live.remove(force=True)
        try:
            stale.remove(force=True)
        except docker.errors.NotFound:
            pass  # removed by the code under test, as it should be


async def test_container_carries_the_limits(client, provider):
    async with provider.acquire() as sb:
        attrs = client.api.inspect_container(sb.id)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 48
    assert host["NanoCpus"] == 500_000_000
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert "/tmp" in host["Tmpfs"]
    assert attrs["Config"]["Labels"][LABEL] == "1"
    work = [m for m in attrs["Mounts"] if m["Destination"] == "/work"]
    assert work and work[0]["Type"] == "volume"


async def test_files_round_trip_and_belong_to_the_exec_uid(provider):
    async with provider.acquire() as sb:
        await sb.write_file("deep/dir/data.bin", bytes(range(256)))
        await sb.write_file("/tmp/elsewhere.txt", "outside /work")
        assert await sb.read_file("/work/deep/dir/data.bin") == bytes(range(256))
        assert await sb.read_file("/tmp/elsewhere.txt") == b"outside /work"
        res = await sb.exec("stat -c %u deep deep/dir deep/dir/data.bin; echo more >> deep/dir/data.bin")
        assert res.ok and res.stdout.split() == ["65534"] * 3
        await sb.exec("echo written inside > made.txt")
        assert await sb.read_file("made.txt") == b"written inside\n"


async def test_missing_file_raises_file_not_found(provider):
    async with provider.acquire() as sb:
        for path in ("nope.txt", "/work/no/such/file", "/tmp/nope"):
            with pytest.raises(FileNotFoundError):
                await sb.read_file(path)


async def test_missing_image_is_a_clear_error(client):
    why = _check("trajdistill-no-such-image:never")
    assert why is not None and "build-image" in why
    p = DockerProvider(LIMITS, image="trajdistill-no-such-image:never")
    with pytest.raises(SandboxError, match="build-image"):
        await p.create()
    await p.close()


def test_build_image_skips_an_existing_tag(client):
    from rich.console import Console

    console = Console(record=True, width=200)
    assert build_image(tag=image_name(), console=console) == image_name()
    assert "already exists" in console.export_text()


def test_build_from_missing_base_fails_in_one_line(client):
    with pytest.raises(SandboxError, match="not present locally"):
        build_image(tag="trajdistill-test:never", method="from-image", base="trajdistill-no-base:never")


def test_debian_mirror_is_a_url():
    assert debian_mirror().startswith(("http://", "https://", "file:/"))


class _SlowEngineContainer:
    """A container whose engine does not answer the removal in time (what a loaded dockerd did in a demo run)."""

    id = "0123456789abcdef"

    def remove(self, **_):
        raise requests.exceptions.ReadTimeout("UnixHTTPConnectionPool(host='localhost'): Read timed out.")


def test_an_engine_too_slow_to_remove_a_container_is_one_sandbox_error():
    with pytest.raises(SandboxError, match=r"cannot remove container 0123456789ab: .*Read timed out"):
        _remove(_SlowEngineContainer())
