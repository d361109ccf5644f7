"""The `mcp` env against the real example MCP server, over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import require
from trajdistill.envs import ConfigError, McpMountedEnv, PolicyRequest, Task, make_env, mount_mcp
from trajdistill.envs._react_text import ParsedFinal, ParseError, parse_react
from trajdistill.envs.mcp_env import EXAMPLE_DIR, McpConnectionError, McpEnv, hash_split, load_tasks
from trajdistill.envs.sandbox import get_provider, sandboxes
from trajdistill.envs.sandbox._host import UnsandboxedWarning

SERVER = EXAMPLE_DIR / "server.py"


@pytest.fixture
async def env():
    env = make_env("mcp")
    yield env
    await env.close()


@pytest.fixture
async def host_sandbox():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsandboxedWarning)
        provider = get_provider("none")
        async with provider.acquire() as sb:
            yield sb


async def drive(env, task: Task, sandbox, max_steps: int = 8):
    """A tiny stand-in for the agent loop: policy -> parse_react -> call or finish."""
    policy = env.experts()["replay"]()
    episode = await env.start(task, sandbox)
    messages = [{"role": "user", "content": task.prompt}]
    for _ in range(max_steps):
        turn = policy(PolicyRequest(messages=messages, tools=env.tools(), task=task))
        messages.append({"role": "assistant", "content": turn.content})
        parsed = parse_react(turn.content)
        assert not isinstance(parsed, ParseError), parsed.message
        if isinstance(parsed, ParsedFinal):
            return await episode.finish(parsed.answer), messages
        obs = await episode.call(parsed.tool, parsed.arguments)
        messages.append({"role": "user", "content": f"Observation: {obs.text}"})
    raise AssertionError(f"{task.id} did not finish in {max_steps} steps")


def write_tasks(tmp_path, lines: list) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def task(id: str, verify: dict, **extra) -> dict:
    return {"id": id, "prompt": f"task {id}", "verify": verify, **extra}


# ---------------------------------------------------------------- tools


def test_tools_are_listed_from_the_stdio_server_with_schemas():
    env = make_env("mcp")
    specs = {s.name: s for s in env.tools()}
    assert set(specs) == {"convert_units", "inventory_lookup", "list_inventory", "date_diff", "text_tool",
                          "final_answer"}
    conv = specs["convert_units"].parameters
    assert conv["required"] == ["value", "from_unit", "to_unit"]
    assert conv["properties"]["value"]["type"] == "number"
    assert "quantity to convert" in conv["properties"]["value"]["description"]  # moved out of Args:
    assert "Args:" not in specs["convert_units"].description
    assert specs["text_tool"].parameters["properties"]["operation"]["enum"][0] == "reverse"
    assert specs["list_inventory"].validate({}) is None


async def test_tools_can_be_listed_synchronously_inside_a_running_loop():
    env = make_env("mcp")
    assert "date_diff" in [s.name for s in env.tools()]  # runs its own loop in a worker thread


# ---------------------------------------------------------------- the replay expert


async def test_replay_expert_solves_a_sample_of_tasks_concurrently(env, host_sandbox):
    sample = env.tasks("train", n=8) + env.tasks("dev", n=3) + env.tasks("test", n=3)
    kinds = {t.data["verify"]["type"] for t in sample}
    assert kinds == {"exact", "regex", "python"}
    results = await asyncio.gather(*(drive(env, t, host_sandbox) for t in sample))
    failed = [(t.id, o.detail) for t, (o, _) in zip(sample, results) if not o.success]
    assert failed == []
    multi = next(m for t, (_, m) in zip(sample, results) if len(t.data["solution"]["steps"]) > 1)
    second = next(m["content"] for m in multi[3:] if m["role"] == "assistant")
    assert "The last result was:" in second  # the thought says what the last observation said


def test_replay_expert_formats_react_turns():
    env = make_env("mcp")
    t = env.tasks("train", n=1)[0]
    policy = env.experts()["replay"]()
    first = policy(PolicyRequest(messages=[{"role": "user", "content": t.prompt}], tools=env.tools(), task=t))
    step = t.data["solution"]["steps"][0]
    parsed = parse_react(first.content)
    assert (parsed.tool, parsed.arguments) == (step["tool"], step["arguments"])
    assert step["tool"] in parsed.thought


# ---------------------------------------------------------------- verifiers


async def test_exact_regex_and_python_verifiers(tmp_path, host_sandbox):
    path = write_tasks(tmp_path, [
        task("e", {"type": "exact", "answer": "Paris"}),
        task("ei", {"type": "exact", "answer": "Paris", "ignore_case": True}),
        task("r", {"type": "regex", "pattern": r"4[0-9]"}),
        task("p", {"type": "python", "code": "import sys\nsys.exit(0 if int(answer) % 7 == 0 else 1)"}),
        task("stdin", {"type": "python", "code": "sys.exit(0 if sys.stdin.read() == '' and answer == 'ok' else 3)"}),
    ])
    env = McpEnv(tasks=path, server=f"{sys.executable} {SERVER}")
    by_id = {t.id: t for s in ("train", "dev", "test") for t in env.tasks(s)}
    cases = [("e", " Paris ", True), ("e", "paris", False), ("ei", "PARIS", True), ("r", "42", True),
             ("r", "420", False), ("p", "21", True), ("p", "22", False), ("p", "x", False), ("stdin", "ok", True)]
    try:
        for tid, answer, want in cases:
            episode = await env.start(by_id[tid], host_sandbox)
            outcome = await episode.finish(answer)
            assert (tid, answer, outcome.success) == (tid, answer, want), outcome.detail
            assert outcome.reward == float(want) and outcome.final_answer == answer
    finally:
        await env.close()


async def test_python_check_needs_a_sandbox(env):
    python_task = next(t for t in env.tasks("train") if t.data["verify"]["type"] == "python")
    exact_task = next(t for t in env.tasks("train") if t.data["verify"]["type"] == "exact")
    assert env.needs_sandbox is True
    with pytest.raises(ValueError, match="needs a sandbox"):
        await env.start(python_task, None)
    episode = await env.start(exact_task, None)  # no code runs for an exact match
    assert (await episode.finish(exact_task.data["solution"]["answer"])).success


@pytest.mark.nsjail
async def test_python_check_runs_in_nsjail(env):
    try:
        why = sandboxes.get("nsjail").available()
    except LookupError as e:
        why = str(e)
    require(why is None, f"nsjail backend unavailable: {why}")
    t = next(t for t in env.tasks("train") if t.data["verify"]["type"] == "python")
    async with get_provider("nsjail").acquire() as sb:
        outcome, _ = await drive(env, t, sb)
        assert outcome.success, outcome.detail
        episode = await env.start(t, sb)
        assert not (await episode.finish("not a number")).success


# ---------------------------------------------------------------- errors become observations


async def test_malformed_tool_call_is_an_invalid_observation(env):
    t = next(t for t in env.tasks("train") if t.data["verify"]["type"] == "exact")
    episode = await env.start(t, None)
    unknown = await episode.call("teleport", {})
    assert unknown.invalid and "convert_units" in unknown.text and "final_answer" in unknown.text
    bad = await episode.call("convert_units", {"value": "five", "from_unit": "mi"})
    assert bad.invalid and "Valid tools:" in bad.text
    not_a_dict = await episode.call("inventory_lookup", ["A-100"])
    assert not_a_dict.invalid and "JSON object" in not_a_dict.text


async def test_a_tool_that_raises_is_an_error_observation_and_the_episode_goes_on(env):
    t = next(t for t in env.tasks("train") if t.id == "inv-001")
    episode = await env.start(t, None)
    err = await episode.call("inventory_lookup", {"sku": "Z-999"})
    assert err.text.startswith("Error:") and "unknown SKU" in err.text and not err.invalid
    bad_date = await episode.call("date_diff", {"start": "2024-02-30", "end": "2024-03-01"})
    assert "not a date" in bad_date.text
    ok = await episode.call("inventory_lookup", {"sku": "B-310"})
    assert json.loads(ok.text)["quantity"] == 85
    assert (await episode.finish("85")).success


def _child_pids() -> list[int]:
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.append(int(stat.parent.name))
    return out


async def test_a_stdio_server_that_dies_is_an_observation_then_a_reconnect(env):
    t = next(t for t in env.tasks("train") if t.id == "inv-001")
    episode = await env.start(t, None)
    children = _child_pids()
    assert children, "the stdio server runs as a child process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            await asyncio.sleep(0.05)
    dead = await episode.call("inventory_lookup", {"sku": "B-310"})
    assert dead.text.startswith("Error:") and not dead.invalid
    again = await episode.call("inventory_lookup", {"sku": "B-310"})  # a fresh server is started
    assert json.loads(again.text)["quantity"] == 85
    assert set(_child_pids()).isdisjoint(children)


async def test_an_unreachable_server_is_one_clear_error():
    env = McpEnv(server=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(McpConnectionError, match="cannot connect to MCP server"):
        await env.connection()


# ---------------------------------------------------------------- streamable HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--transport", "streamable-http", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail(f"HTTP server exited: {proc.stderr.read().decode()[-500:]}")
    yield proc, f"http://127.0.0.1:{port}/mcp"
    proc.kill()
    proc.wait()
    proc.stderr.close()


async def test_an_episode_over_streamable_http(http_server, host_sandbox):
    proc, url = http_server
    env = make_env("mcp", server=url)
    try:
        t = next(t for t in env.tasks("train") if len(t.data["solution"]["steps"]) > 1)
        outcome, messages = await drive(env, t, host_sandbox)
        assert outcome.success, outcome.detail
        assert sum(m["role"] == "assistant" for m in messages) == len(t.data["solution"]["steps"]) + 1
        episode = await env.start(t, host_sandbox)
        proc.kill()
        proc.wait()
        gone = await episode.call("list_inventory", {})  # a dead transport is an observation, not a raise
        assert gone.text.startswith("Error:")
        await env.close()
        again = await episode.call("list_inventory", {})  # and so is a failed reconnect
        assert again.text.startswith("Error:") and "cannot connect" in again.text
    finally:
        await env.close()


# ---------------------------------------------------------------- tasks files and splits


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    (json.dumps({"prompt": "p", "verify": {"type": "exact", "answer": "a"}}), "'id'"),
    (json.dumps(task("b", {"type": "fuzzy"})), "exact, regex or python"),
    (json.dumps(task("b", {"type": "regex", "pattern": "("})), "not a valid regex"),
    (json.dumps(task("b", {"type": "python", "code": "if:"})), "not valid Python"),
    (json.dumps(task("b", {"type": "exact", "answer": "a"}, split="validation")), "split"),
    (json.dumps(task("b", {"type": "exact", "answer": "a"}, solution={"steps": [{"x": 1}], "answer": "a"})),
     "solution step 0"),
    (json.dumps(task("a", {"type": "exact", "answer": "a"})), "duplicate task id 'a'"),
])
def test_a_malformed_tasks_file_names_the_file_and_line(tmp_path, bad_line, message):
    path = write_tasks(tmp_path, [task("a", {"type": "exact", "answer": "a"}), bad_line])
    with pytest.raises(ValueError, match=message) as info:
        McpEnv(tasks=path, server="unused")
    assert str(info.value).startswith(f"{path}:2: ") and "\n" not in str(info.value)


def test_a_missing_tasks_file_or_server_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}/nope.jsonl cannot be read"):
        make_env(f"mcp:{tmp_path}/nope.jsonl")
    with pytest.raises(ValueError, match="cannot be parsed"):
        make_env("mcp", server="python 'unclosed")
    path = write_tasks(tmp_path, [task("a", {"type": "exact", "answer": "a"})])
    with pytest.raises(ValueError, match="needs server="):
        make_env(f"mcp:{path}")


def test_the_variant_is_a_tasks_path_and_splits_fall_back_to_a_stable_hash(tmp_path):
    rows = [task(f"t{i}", {"type": "exact", "answer": "a"}) for i in range(200)]
    rows[0]["split"] = "test"
    path = write_tasks(tmp_path, rows)
    env = make_env(f"mcp:{path}", server="unused")
    assert env.id == f"mcp:{path}" and env.needs_sandbox is False
    sizes = env.split_sizes()
    assert sum(sizes.values()) == 200 and 140 <= sizes["train"] <= 180 and sizes["dev"] > 5
    assert env.tasks("test")[0].id == "t0"
    assert [t.split for t in load_tasks(path)] == [t.split for t in load_tasks(path)]
    hashed = {t.id: t.split for t in load_tasks(path, split_by="hash")}
    assert hashed["t0"] == hash_split("t0")
    assert env.tasks("train", n=3, offset=1) == env.tasks("train")[1:4]


# ---------------------------------------------------------------- mounting a server's tools into any env


async def test_mount_mcp_lists_a_servers_tools_beside_the_envs_own_and_routes_each_call(host_sandbox):
    """The envs layer's generic mount: the example server mounted twice into the math env, over real sessions."""
    server = shlex.join([sys.executable, str(SERVER)])
    math = make_env("math")
    assert mount_mcp(math, []) is math
    env = mount_mcp(math, [server, server])
    assert isinstance(env, McpMountedEnv) and env.id == "math" and env.system_prompt() == math.system_prompt()
    try:
        names = [t.name for t in env.tools()]
        # the env's own tool first, the servers' next (the second server's clashing names prefixed), then the answer
        assert names[0] == "python" and names[-1] == "final_answer" and "read_skill" not in names
        assert {"inventory_lookup", "trajdistill_mcp_example__text_tool"} <= set(names) and len(names) == 12
        task = env.tasks("dev", 1)[0]
        episode = await env.start(task, host_sandbox)
        looked_up = await episode.call("inventory_lookup", {"sku": "b-310"})
        reversed_ = await episode.call("trajdistill_mcp_example__text_tool", {"text": "abc", "operation": "reverse"})
        own = await episode.call("python", {"code": "print(6 * 7)"})
        failed = await episode.call("inventory_lookup", {"sku": "Z-1"})
        bad = await episode.call("text_tool", {"operation": "reverse"})
        unknown = await episode.call("read_skill", {"name": "x"})
        outcome = await episode.finish(str(task.data["answer"]))
    finally:
        await env.close()
    assert json.loads(looked_up.text)["sku"] == "B-310" and reversed_.text == "cba" and own.text.strip() == "42"
    assert failed.error_kind == "tool_error" and "unknown SKU" in failed.text and not failed.invalid
    assert bad.invalid and "text_tool" in bad.text
    assert unknown.invalid and "Valid tools: python, convert_units" in unknown.text
    assert outcome.success  # the wrapped env's verifier


def test_mount_mcp_of_a_server_that_does_not_start_is_one_clear_error():
    env = mount_mcp(make_env("math"), [f"{sys.executable} -c 'import sys; sys.exit(3)'"])
    with pytest.raises(ConfigError, match="cannot mount MCP servers: cannot connect to MCP server"):
        env.tools()
    with pytest.raises(ConfigError, match="cannot be parsed"):
        mount_mcp(make_env("math"), ["python 'unclosed"])
