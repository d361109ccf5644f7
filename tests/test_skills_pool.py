"""A skill-box server keeps one sandbox per client session, and no call sees what an earlier call left.

Every real backend (nsjail as root, docker), the real `trajdistill skills serve` over stdio and the mcp SDK's
own client; the session-count test drives the server in memory. A missing backend skips here and fails under
TRAJDISTILL_REQUIRE_ALL=1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
import warnings

import pytest
from conftest import require
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from trajdistill.envs import UnknownNameError
from trajdistill.envs.sandbox import Limits, Sandbox, sandboxes
from trajdistill.envs.sandbox._host import HostProvider, HostSandbox
from trajdistill.skills import SkillBox, ToolDraft, build_server

BACKENDS = [pytest.param("nsjail", marks=pytest.mark.nsjail), pytest.param("docker", marks=pytest.mark.docker)]
LIMITS = Limits(timeout_s=10.0)

LEAVE = '''
def leave(mark: str) -> str:
    """Leave files, a background process and a changed tool file behind, and report what this call sees.

    Args:
        mark: A name for the files and a word on the process's command line.
    """
    import os
    import subprocess
    import time
    for path in (mark, "/tmp/" + mark, "/dev/shm/" + mark):
        try:
            open(path, "w").write("left")
        except OSError:
            pass
    subprocess.Popen(["/bin/sh", "-c", "sleep 60; : " + mark], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tampered = []
    tools = os.path.dirname(__file__)
    for path in (__file__, os.path.join(tools, "look.py")):
        try:
            open(path, "w").write("def look(mark: str) -> str:\\n    return 'tampered'\\n")
            tampered.append(path)
        except OSError:
            pass
    for path in (tools, os.path.dirname(tools)):
        try:
            os.rename(path, path + ".moved")
            tampered.append("moved " + path)
        except OSError:
            pass
    time.sleep(0.2)
    return f"{sorted(os.listdir('.'))} {_processes(mark)} {tampered}"


def _processes(mark: str) -> int:
    import os
    found = 0
    for pid in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        found += mark in cmdline and "leave" not in cmdline and "look" not in cmdline
    return found
'''

LOOK = '''
def look(mark: str) -> str:
    """Report what an earlier call left that this one can see.

    Args:
        mark: The name `leave` used.
    """
    import os
    files = [p for p in (mark, "/tmp/" + mark, "/dev/shm/" + mark) if os.path.exists(p)]
    processes = 0
    for pid in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        processes += mark in cmdline and "leave" not in cmdline and "look" not in cmdline
    return f"files={files} processes={processes} work={sorted(os.listdir('.'))}"
'''


def need(backend: str) -> None:
    try:
        why = sandboxes.get(backend).available()
    except UnknownNameError as e:
        why = str(e)
    require(why is None, f"{backend} sandbox unavailable: {why}")


@pytest.fixture
def box(tmp_path) -> SkillBox:
    return SkillBox.write(tmp_path / "box", name="leftovers", env=None,
                          tools=[ToolDraft("leave", LEAVE), ToolDraft("look", LOOK)])


def text(result) -> str:
    return "\n".join(c.text for c in result.content)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_call_sees_no_file_process_or_tampering_an_earlier_call_left(box, backend):
    need(backend)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "trajdistill", "skills", "serve", str(box.path), "--sandbox", backend, "--timeout", "10"],
        env={"TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"], "PATH": os.environ["PATH"]})
    async with Client(params, read_timeout_seconds=120) as client:
        for _ in range(2):  # the second round runs in the sandbox the first one used
            mark = f"left-{uuid.uuid4().hex[:8]}"
            left = await client.call_tool("leave", {"mark": mark})
            assert not left.is_error, text(left)
            # the leaving call itself saw its file and its process, and could change no tool file
            assert text(left) == f"['{mark}'] 1 []"
            seen = await client.call_tool("look", {"mark": mark})
            assert not seen.is_error, text(seen)
            assert text(seen) == "files=[] processes=0 work=[]"


def counting(backend: str, made: list, released: list):
    """The real provider of `backend`, noting each sandbox it makes and takes back."""
    class Counting(sandboxes.get(backend)):
        async def create(self):
            made.append(await super().create())
            return made[-1]

        async def release(self, sandbox):
            released.append(sandbox)
            await super().release(sandbox)

    return Counting


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_one_sandbox_per_session_released_when_it_ends(box, backend, mode):
    need(backend)
    made, released = [], []
    async with counting(backend, made, released)(LIMITS) as provider:
        server = build_server(box, provider, timeout_s=10)
        for session in range(2):
            async with Client(server, mode=mode) as client:
                for _ in range(3):
                    seen = await client.call_tool("look", {"mark": "nothing"})
                    assert text(seen) == "files=[] processes=0 work=[]"
                assert len(made) == session + 1 and len(released) == session
            assert released == made  # the session's end handed its sandbox back


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_http_session_holds_its_own_sandbox_until_it_ends(box, backend):
    need(backend)
    made, released = [], []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with counting(backend, made, released)(LIMITS) as provider:
        server = build_server(box, provider, timeout_s=10)
        serving = asyncio.create_task(server.run_streamable_http_async(host="127.0.0.1", port=port))
        try:
            await until(lambda: _listening(port))
            for session in range(2):
                # legacy: the handshake protocol, whose HTTP sessions have ids (the 2026 one has no sessions)
                async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
                    for _ in range(2):
                        assert text(await client.call_tool("look", {"mark": "x"})) == "files=[] processes=0 work=[]"
                    assert len(made) == session + 1 and len(released) == session
                await until(lambda: len(released) == session + 1)  # the session's end hands it back
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    assert released == made


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def until(ok, limit_s: float = 60.0) -> None:
    """Wait for `ok()`; fail after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not ok():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_calls_of_a_session_never_share_a_sandbox(box, backend):
    need(backend)
    made, released = [], []
    async with counting(backend, made, released)(LIMITS) as provider:
        async with Client(build_server(box, provider, timeout_s=10)) as client:
            await client.call_tool("look", {"mark": "x"})
            marks = [f"c{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
            left = await asyncio.gather(*(client.call_tool("leave", {"mark": m}) for m in marks))
            # each call saw only its own file: three sandboxes at once, the first one reused
            assert [text(r) for r in left] == [f"['{m}'] 1 []" for m in marks]
            assert len(made) == 3
            await client.call_tool("look", {"mark": "x"})
            assert len(made) == 3
        assert sorted(map(id, released)) == sorted(map(id, made))


async def test_a_backend_that_cannot_install_gets_a_fresh_sandbox_per_call(box):
    made = []

    class NoInstall(HostSandbox):
        install = Sandbox.install  # the interface's default: NotImplementedError

    class Provider(HostProvider):
        async def create(self):
            made.append(NoInstall(self.limits))
            return made[-1]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with Provider(LIMITS) as provider:
            async with Client(build_server(box, provider, timeout_s=10)) as client:
                for _ in range(2):
                    # the tool file written into the working directory: the per-call path ran
                    assert text(await client.call_tool("look", {"mark": "x"})).endswith("work=['skilltool_look.py']")
    assert len(made) == 3  # the one that refused, then one per call
    assert any("cannot install read-only files: every box tool call gets a fresh sandbox" in str(w.message)
               for w in caught)
