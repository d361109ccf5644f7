"""Mounting skill boxes in agents: the real ReAct loop and collector over a MountedEnv, box tools through a
real MCP session (stdio subprocess, HTTP URL, stdio command), read_skill, preload, name clashes, tool errors
as observations, an hf agent with the box in its prompt, and the box validation written into the manifest."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
from test_skills_serve import SKILLS, make_box, need_nsjail, serve_argv

from trajdistill.agents import CollectConfig, ReActLoop, _policy, collect
from trajdistill.envs import ConfigError, PolicyRequest, Turn, make_env
from trajdistill.envs._react_text import ParsedAction, format_action, format_final, parse_react
from trajdistill.envs.sandbox import Limits, get_provider
from trajdistill.skills import ValidateConfig, SkillBox, validate
from trajdistill.skills._validate import HARMFUL_NOTE, rate_diff_ci, verdict
from trajdistill.skills import MountedEnv, mount_skills
from trajdistill.skills._mount import READ_SKILL
from trajdistill.skills._retrieve import BM25
from trajdistill.trajectories import RunStore


class Scripted:
    """A policy that plays a fixed list of (tool, arguments) actions, then answers."""

    backend, model, action_format = "scripted", "scripted", "react"

    def __init__(self, actions, answer="42"):
        self.spec = "scripted:test"
        self.actions, self.answer = actions, answer
        self.requests: list[PolicyRequest] = []

    async def __call__(self, request: PolicyRequest) -> Turn:
        self.requests.append(request)
        step = sum(m["role"] == "assistant" for m in request.messages)
        if step < len(self.actions):
            tool, args = self.actions[step]
            return Turn(content=format_action(f"I call {tool}.", tool, args))
        return Turn(content=format_final("Done.", self.answer))

    def sampling(self):
        return {}

    async def close(self):
        pass


@pytest.fixture
def box(tmp_path):
    return make_box(tmp_path / "box")


def observations(result) -> dict[str, str]:
    return {m["name"]: m["content"] for m in result.messages if m["role"] == "tool"}


async def test_scripted_agent_calls_box_tools_through_the_react_loop(box):
    need_nsjail()
    env = mount_skills(make_env("math"), [str(box.path)], sandbox="nsjail", top_k=0)  # every tool listed
    assert isinstance(env, MountedEnv) and env.id == "math" and mount_skills(env.inner, []) is env.inner
    names = [t.name for t in env.tools()]
    # the env's own tool keeps its name; the box's clashing `python` gets the box prefix
    assert names[0] == "python" and "demo_box__python" in names and "add_numbers" in names
    assert names[-2:] == [READ_SKILL, "final_answer"]
    policy = Scripted([("add_numbers", {"a": 40, "b": 2}), ("demo_box__python", {"code": "x"}),
                       ("python", {"code": "print(6 * 7)"}), (READ_SKILL, {"name": "adding"}),
                       ("spin", {"n": 0}), ("boom", {"message": "bad"}), ("add_numbers", {"a": "x"})])
    loop = ReActLoop(env, policy, max_steps=10)
    task = env.tasks("dev", 1)[0]
    try:
        async with get_provider("nsjail", Limits(timeout_s=5)) as provider, provider.acquire() as sb:
            result = await loop.run(task, sb)
    finally:
        await env.close()
    calls = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert calls[0] == "42"  # the box tool ran in the box server's sandbox
    assert calls[1] == "box saw: x"  # the prefixed name reached the box's own `python`
    assert calls[2].strip() == "42"  # the env's `python` still reached the env
    assert calls[3] == (box.path / "skills/adding/SKILL.md").read_text()  # read_skill: the whole SKILL.md
    assert calls[4].startswith("Error: ") and "timed out" in calls[4]  # an error observation, not an exception
    assert calls[5].startswith("Error: ") and "ValueError: bad" in calls[5]
    assert calls[6].startswith("Error: bad arguments for 'add_numbers'")
    assert result.usage["invalid_actions"] == 1 and result.outcome.final_answer == "42"
    system = result.messages[0]["content"]
    assert "- adding: Use when a task asks for the sum of two numbers." in system
    assert "add_numbers(a: integer, b: integer)" in system


async def test_read_skill_of_an_unknown_name_lists_the_skills(box):
    env = mount_skills(make_env("math"), [str(box.path)], sandbox="none")
    try:
        episode = await env.start(env.tasks("dev", 1)[0], sandbox=object())
        obs = await episode.call(READ_SKILL, {"name": "nope"})
        unknown = await episode.call("no_such_tool", {})
    finally:
        await env.close()
    assert obs.invalid and "Skills: adding, checking" in obs.text
    # the valid tools named are those this task is shown: add_numbers does not fit a dev task, so it is left out
    assert unknown.invalid and READ_SKILL in unknown.text and "add_numbers" not in unknown.text


# ---- tool retrieval: the top-k box tools and skills per task ------------------------------------------


@pytest.fixture(scope="module")
def mined_math_box(tmp_path_factory):
    """A tools-only box mined, in nsjail, from a real expert:coder run of 60 math tasks."""
    need_nsjail()
    from trajdistill.skills import MineConfig, mine

    root = tmp_path_factory.mktemp("mined")
    collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(root / "run"), tasks=60, sandbox="nsjail"))
    return mine(MineConfig(runs=[str(root / "run")], out=str(root / "box"), mode="tools", sandbox="nsjail")).box


def modular_task():
    return next(t for t in make_env("math").tasks("test", 100) if "to the power" in t.prompt)


async def test_top_k_lists_exactly_the_relevant_box_tools_and_the_loop_calls_one(mined_math_box):
    box_tools = {t.name for t in mined_math_box.tools}
    assert len(box_tools) >= 5 and {"modular_power", "evaluate_expression"} <= box_tools, box_tools
    env = mount_skills(make_env("math"), [str(mined_math_box.path)], sandbox="nsjail", top_k=2)
    task = modular_task()  # "Find A to the power B, modulo M."
    base, exp, mod = map(int, re.findall(r"\d+", task.prompt)[:3])
    policy = Scripted([("modular_power", {"base": base, "exponent": exp, "modulus": mod}),
                       ("count_combinations", {"n": 5, "k": 2})], answer=str(pow(base, exp, mod)))
    try:
        async with get_provider("nsjail", Limits(timeout_s=5)) as provider, provider.acquire() as sb:
            result = await ReActLoop(env, policy, max_steps=5).run(task, sb)
    finally:
        await env.close()
    system = result.messages[0]["content"]
    listed = {name for name in box_tools if f"- {name}(" in system}
    assert listed == {"modular_power", "evaluate_expression"}, system
    shown = [t.name for t in policy.requests[0].tools]  # what a native tool-calling agent is given
    assert shown[0] == "python" and shown[-1] == "final_answer" and set(shown[1:-1]) == listed
    calls = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert calls[0] == str(pow(base, exp, mod))  # the box tool ran in the box server's sandbox
    assert calls[1] == "10"  # a box tool left out of the list still answers when called
    assert result.outcome.success


async def test_examples_list_each_box_tool_with_the_calls_that_solved_the_nearest_source_tasks(mined_math_box):
    task = modular_task()  # "Find A to the power B, modulo M." (a test task: never a source task)
    tests = {(t.task, json.dumps(t.args, sort_keys=True)): t.expected for t in mined_math_box.tests["modular_power"]}
    env = mount_skills(make_env("math"), [str(mined_math_box.path)], sandbox="nsjail", top_k=1, examples=2)
    plain = mount_skills(make_env("math"), [str(mined_math_box.path)], sandbox="nsjail", top_k=1)
    policy = Scripted([])
    try:
        async with get_provider("nsjail", Limits(timeout_s=5)) as provider, provider.acquire() as sb:
            result = await ReActLoop(env, policy, max_steps=2).run(task, sb)
        before = {t.name: t.description for t in plain.tools_for(task)}
    finally:
        await env.close()
        await plain.close()
    listed = {t.name: t.description for t in policy.requests[0].tools}
    assert set(listed) == {"python", "modular_power", "final_answer"}
    summary, _, shown = listed["modular_power"].partition(" Examples: ")
    assert summary == before["modular_power"] and "Example" not in before["modular_power"]
    pairs = [re.fullmatch(r'(".*") -> (\{.*\})', e).groups() for e in shown.split("; ")]
    assert len(pairs) == 2
    for quoted, arguments in pairs:
        source, args = json.loads(quoted), json.loads(arguments)
        assert "to the power" in source and source != task.prompt
        assert tests[(source, json.dumps(args, sort_keys=True))] == pow(args["base"], args["exponent"], args["modulus"])
    assert f"- modular_power(base: integer, exponent: integer, modulus: integer): {listed['modular_power']}" \
        in result.messages[0]["content"]  # the ReAct prompt lists it so
    # a source task is never its own example (its call would be its answer): the next nearest one is shown
    source_task = task.model_copy(update={"prompt": json.loads(pairs[0][0])})
    (own,) = [t.description for t in env.tools_for(source_task) if t.name == "modular_power"]
    assert pairs[0][0] not in own and own.count(" -> ") == 2
    with pytest.raises(ConfigError, match="--skills-examples"):
        mount_skills(make_env("math"), [str(mined_math_box.path)], sandbox="none", examples=-1)


def test_top_k_ranks_skills_with_tools_and_read_skill_still_reads_every_skill(box):
    env = mount_skills(make_env("math"), [str(box.path)], sandbox="none", top_k=2)
    task = modular_task().model_copy(update={"prompt": "What is the sum of two numbers, 40 and 2?"})
    try:
        tools, skills = env.relevant(task)
        assert (tools, skills) == (["add_numbers"], ["adding"])
        names = [t.name for t in env.tools_for(task)]
        assert names == ["python", "add_numbers", READ_SKILL, "final_answer"]
        prompt = env.system_prompt_for(task)
        assert "- adding: Use when a task asks for the sum" in prompt and "checking" not in prompt

        async def read_unlisted():
            episode = await env.start(task, sandbox=object())
            return await episode.call(READ_SKILL, {"name": "checking"})

        assert asyncio.run(read_unlisted()).text == (box.path / "skills/checking/SKILL.md").read_text()
        # a task that shares no word with the box is shown none of it
        other = task.model_copy(update={"prompt": "Zzz?"})
        assert env.tools_for(other) == [t for t in make_env("math").tools()]
        assert env.system_prompt_for(other) == make_env("math").system_prompt()
        # top_k=0 lists everything, as before
        every = mount_skills(make_env("math"), [str(box.path)], sandbox="none", top_k=0)
        assert every.tools_for(task) == every.tools() and every.system_prompt_for(task) == every.system_prompt()
    finally:
        asyncio.run(env.close())
    with pytest.raises(ConfigError, match="--skills-top-k"):
        mount_skills(make_env("math"), [str(box.path)], sandbox="none", top_k=-1)


def test_bm25_prefers_the_document_that_shares_the_rare_words():
    index = BM25(["modular_power\nCompute 71^9 mod 69.", "evaluate_expression\nEvaluate (6 + 25) * 8.",
                  "count_combinations\nChoose 3 of 10 stamps."])
    assert index.top("Compute 32^27 mod 62.", 2) == [0, 1]
    assert index.top("In how many ways can you choose 8 of 36 stamps?", 1) == [2]
    assert index.top("nothing in common", 3) == []


def test_preload_puts_whole_skills_in_the_prompt_and_tools_only_boxes_get_no_read_skill(tmp_path):
    full = make_box(tmp_path / "full")
    env = mount_skills(make_env("math"), [str(full.path)], preload=True, sandbox="none")
    prompt = env.system_prompt()
    assert prompt.startswith(make_env("math").system_prompt())
    assert "Call `add_numbers` with both numbers." in prompt and "# Checking\nRecompute once." in prompt
    tools_only = make_box(tmp_path / "tools-only", tools=("add_numbers",), skills=[])
    env2 = mount_skills(make_env("math"), [str(tools_only.path)], sandbox="none")
    assert [t.name for t in env2.tools()] == ["python", "add_numbers", "final_answer"]
    assert env2.system_prompt() == make_env("math").system_prompt()


def test_two_boxes_with_the_same_tool_get_distinct_names(tmp_path):
    a = make_box(tmp_path / "a", tools=("add_numbers",), skills=[SKILLS[0]])
    b = SkillBox.write(tmp_path / "b", name="other", env="math", skills=[SKILLS[0]],
                       tools=[_tool_draft("add_numbers")])
    env = mount_skills(make_env("math"), [str(a.path), str(b.path)], sandbox="none")
    names = [t.name for t in env.tools()]
    assert names == ["python", "add_numbers", "other__add_numbers", READ_SKILL, "final_answer"]
    assert set(env.skills()) == {"adding", "other__adding"}


def _tool_draft(name):
    from test_skills_serve import TOOLS

    from trajdistill.skills import ToolDraft

    return ToolDraft(name, TOOLS[name])


def test_a_tampered_box_is_refused_before_mounting(box):
    (box.path / "tools" / "spin.py").write_text("def spin(n: int) -> int:\n    '''x'''\n    return n\n")
    with pytest.raises(ValueError, match="tools/spin.py was tampered with"):
        mount_skills(make_env("math"), [str(box.path)])


def test_a_server_that_does_not_start_is_one_clear_error():
    env = mount_skills(make_env("math"), [f"{sys.executable} -c 'import sys; sys.exit(3)'"])
    with pytest.raises(ValueError, match="cannot mount skills"):
        env.tools()


async def test_mounts_a_url_and_a_stdio_command(box):
    """The other two source kinds: a served HTTP URL and an explicit stdio command line."""
    need_nsjail()
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(serve_argv(box.path, "--transport", "http", "--port", str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "http server did not start"
                time.sleep(0.2)
        command = " ".join(serve_argv(box.path))
        env = mount_skills(make_env("math"), [f"http://127.0.0.1:{port}/mcp", command], sandbox="nsjail")
        try:
            names = [t.name for t in env.tools()]
            assert "add_numbers" in names and "demo_box__add_numbers" in names
            episode = await env.start(env.tasks("dev", 1)[0], sandbox=object())
            via_http = await episode.call("add_numbers", {"a": 1})
            via_stdio = await episode.call("demo_box__add_numbers", {"a": 2})
        finally:
            await env.close()
        assert (via_http.text, via_stdio.text) == ("3", "4")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_hf_agent_mounts_a_box_and_runs_an_episode_with_its_tools_in_the_prompt(box, tmp_path):
    """Collector + CollectConfig.skills + a tiny hf model: the box is in the prompt the model saw."""
    need_nsjail()
    from trajdistill.agents import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    cfg = CollectConfig(env="math", teachers=[f"hf:{model}"], out=str(tmp_path / "run"), tasks=1, max_steps=2,
                        sandbox="nsjail", teacher_options={"max_new_tokens": 8}, skills=[str(box.path)],
                        skills_top_k=0)  # every box tool and skill in the prompt
    store, progress = collect(cfg, mount=mount_skills)
    (traj,) = store.load()
    assert progress.errors == 0 and traj.usage.steps == 2
    system = traj.messages[0].content
    for name in ("add_numbers", "demo_box__python", "spin", READ_SKILL, "python"):
        assert f"- {name}(" in system
    assert "- checking: Use before giving a final answer, to check it." in system


# ---- box validation (skills validate) --------------------------------------------------------------------------


class Hijackable:
    """Answers right from the task data, unless the prompt lists skills: then it follows them off a cliff."""

    backend, model, action_format = "hijackable", "hijackable", "react"

    def __init__(self, target: str, *, env=None, spec: str = "", **_):
        self.spec = spec

    async def __call__(self, request: PolicyRequest) -> Turn:
        hijacked = "Skills you have" in request.messages[0]["content"]
        answer = "-1" if hijacked else request.task.data["answer"]
        return Turn(content=format_final("Answering.", answer))

    def sampling(self):
        return {}

    async def close(self):
        pass


@pytest.fixture
def hijackable():
    _policy.policies.register("hijackable", Hijackable)
    yield "hijackable:x"
    _policy.policies._items.pop("hijackable")


def test_validation_flags_a_harmful_box_writes_the_manifest_and_inspect_shows_it(tmp_path, hijackable):
    need_nsjail()
    box = make_box(tmp_path / "box", tools=("add_numbers",), skills=[SKILLS[1]])
    section = validate(ValidateConfig(box=str(box.path), env="math", agent=hijackable, tasks=5, ablate=True,
                                      sandbox="nsjail", concurrency=2, skills_top_k=0))  # the skill in every prompt
    assert section.without.successes == 5 and section.with_.successes == 0
    assert section.delta == -1.0 and section.delta_ci95[1] < 0
    assert section.verdict == "harmful" and section.flagged and section.note == HARMFUL_NOTE
    # ablation: the box without its one skill no longer hijacks; without its tool it still does
    assert section.ablation["skill:checking"].success_rate == 1.0
    assert section.ablation["skill:checking"].flagged is True
    assert section.ablation["tool:add_numbers"].success_rate == 0.0
    assert SkillBox.load(box.path).validation["dev_eval"]["verdict"] == "harmful"  # still verifies after the write

    shown = subprocess.run([sys.executable, "-m", "trajdistill", "skills", "inspect", str(box.path)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "dev_eval:" in shown.stdout and "verdict: harmful" in shown.stdout and HARMFUL_NOTE in shown.stdout


def test_validate_cli_on_an_expert_reports_no_clear_effect(tmp_path):
    need_nsjail()
    box = make_box(tmp_path / "box", tools=("add_numbers",), skills=[SKILLS[0]])
    res = subprocess.run([sys.executable, "-m", "trajdistill", "skills", "validate", str(box.path), "--env", "math",
                          "--agent", "expert:coder", "--tasks", "3", "--sandbox", "nsjail"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
    gate = json.loads((box.path / "skillbox.json").read_text())["validation"]["dev_eval"]
    assert gate["without"]["n"] == gate["with"]["n"] == 3
    assert gate["delta"] == 0.0 and gate["verdict"] == "no clear effect" and not gate["flagged"]
    assert "no clear effect" in res.stdout


def test_newcombe_interval_and_verdicts():
    lo, hi = rate_diff_ci((30, 50), (20, 50))
    assert lo < 0.2 < hi and 0.0 < lo  # 60% vs 40% at n=50: a clear gain
    assert rate_diff_ci((5, 5), (5, 5))[0] < 0 < rate_diff_ci((5, 5), (5, 5))[1]
    assert verdict(0.2, (lo, hi)) == "helps"
    assert verdict(-0.1, (-0.3, 0.1)) == "worse (not significant)"
    assert verdict(-0.4, (-0.6, -0.1)) == "harmful"
    assert verdict(0.0, (-0.2, 0.2)) == "no clear effect"


def test_eval_cli_preload_skills_puts_the_skill_text_in_every_system_prompt(box, tmp_path):
    out = tmp_path / "eval"
    res = subprocess.run([sys.executable, "-m", "trajdistill", "eval", "--env", "math", "--agent", "expert:coder",
                          "--tasks", "2", "--sandbox", "none", "--skills", str(box.path), "--preload-skills",
                          "--skills-top-k", "0", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (run,) = (out / "runs").iterdir()
    trajs = RunStore.open(run).load()
    assert len(trajs) == 2
    assert all("Call `add_numbers` with both numbers." in t.messages[0].content for t in trajs)


def test_collect_cli_lists_example_calls_and_the_coder_still_fits_the_listed_tool(mined_math_box, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "trajdistill", "collect", "--env", "math", "--teacher", "expert:coder", "--tasks",
            "12", "--split", "test", "--sandbox", "nsjail", "--skills", str(mined_math_box.path), "--skills-top-k", "1"]
    res = subprocess.run([*argv, "--skills-examples", "1", "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "skills_examples: 1" in (out / "run.yaml").read_text()
    trajs = RunStore.open(out).load()
    box_tools = {t.name for t in mined_math_box.tools}
    assert len(trajs) == 12 and all(t.outcome.success for t in trajs)
    for t in trajs:
        lines = [ln for ln in t.messages[0].content.splitlines() if ln.startswith("- ") and "(" in ln]
        boxed = [ln for ln in lines if ln[2:].split("(")[0] in box_tools]
        assert len(boxed) <= 1 and all(" Example: \"" in ln for ln in boxed), lines
    assert sum(m.name in box_tools for t in trajs for m in t.messages if m.role == "tool") >= 4
    for t in trajs:  # a box call's Thought cites the example the list shows beside that tool
        for m in t.messages:
            call = parse_react(m.content or "") if m.role == "assistant" else None
            if isinstance(call, ParsedAction) and call.tool in box_tools:
                listed = next(ln for ln in t.messages[0].content.splitlines() if ln.startswith(f"- {call.tool}("))
                shown = listed.split(" Example: ", 1)[1]
                cited = shown.split(" -> ")[0]
                assert f"Its example turns {cited} into " in call.thought, (call.thought, listed)
    bad = subprocess.run([*argv, "--skills-examples", "-1", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--skills-examples must be 0 (none) or more, got -1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


# ---- box-aware experts: the coder calls a listed box tool that computes its program -------------------


def test_the_coder_calls_a_fitting_box_tool_from_the_list_it_is_shown(mined_math_box, tmp_path):
    """With the mined box mounted, the coder answers through a listed box tool wherever one computes its
    program (chosen from the schemas, no tool name known in advance), falls back to python elsewhere, and
    solves every task; without the box it only ever calls python."""
    runs = {}
    for name, skills in (("boxed", [str(mined_math_box.path)]), ("plain", [])):
        runs[name] = tmp_path / name
        collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(runs[name]), tasks=40, split="test",
                              sandbox="nsjail", skills=skills), mount=mount_skills)
    boxed = RunStore.open(runs["boxed"]).load()
    box_tools = {t.name for t in mined_math_box.tools}
    called = [[m.name for m in t.messages if m.role == "tool"] for t in boxed]
    assert all(t.outcome.success for t in boxed) and len(boxed) == 40
    via_box = [c for c in called if c and c[0] in box_tools]
    assert len(via_box) >= 10, called  # most kinds have a mined tool
    assert all(c == [c[0]] for c in via_box)  # one box call, then the answer: no python after it
    assert {c[0] for c in via_box} <= box_tools and len({c[0] for c in via_box}) >= 2
    assert all(set(c) <= {"python"} for c in called if c and c[0] not in box_tools)
    for t in boxed:  # the tool it called was in the list the prompt showed for that task
        for m in t.messages:
            if m.role == "tool" and m.name in box_tools:
                assert f"- {m.name}(" in t.messages[0].content
    plain = RunStore.open(runs["plain"]).load()
    assert all({m.name for m in t.messages if m.role == "tool"} <= {"python"} for t in plain)


PYTHON_EXPRESSION = '''
def evaluate_expression(expression: str):
    """Evaluate an arithmetic expression written in Python's notation only.

    Args:
        expression: The expression, with numbers only; e.g. "(6 + 25) * 8"
    """
    import ast
    return eval(compile(ast.parse(expression, mode="eval"), "<expression>", "eval"), {"__builtins__": {}})
'''


def test_the_slipping_coder_copies_the_tasks_notation_recovers_and_train_masks_the_slip(tmp_path):
    """On tasks written in a person's notation, the slipping coder first copies the task's expression into an
    expression tool that reads Python's notation only (a real error observation from nsjail), then calls again in
    Python's notation naming what it translated; every episode still wins. `mask_failed_calls` (train's
    --mask-failed-calls) leaves the slip untrained and trains the recovery."""
    from trajdistill.skills import SkillBox, ToolDraft
    from trajdistill.agents._models import smollm2_tokenizer
    from trajdistill.train import TrainConfig
    from trajdistill.train._data import build_data
    from trajdistill.train._encode import IGNORE_INDEX, encode
    from trajdistill.trajectories import failed_calls, mask_failed_calls

    need_nsjail()
    box = SkillBox.write(tmp_path / "box", name="python-expressions", env="math", skills=[],
                         tools=[ToolDraft("evaluate_expression", PYTHON_EXPRESSION)])
    out = tmp_path / "slips"
    collect(CollectConfig(env="math", env_params={"categories": "arithmetic", "notation": "mixed"},
                          teachers=["expert:slipping-coder"], out=str(out), tasks=40, split="test", sandbox="nsjail",
                          skills=[str(box.path)]), mount=mount_skills)
    trajs = RunStore.open(out).load()
    assert len(trajs) == 40 and all(t.outcome.success for t in trajs)
    slipped = [t for t in trajs if failed_calls(t)]
    assert 3 <= len(slipped) <= 30, len(slipped)  # half the tasks whose wording is not Python's
    for t in slipped:
        (i,) = failed_calls(t)
        first, again = parse_react(t.messages[i].content), parse_react(t.messages[i + 2].content)
        assert first.tool == again.tool and set(first.arguments["expression"]) & set("×÷−")
        assert first.arguments["expression"] in t.messages[1].content  # copied as the task writes it
        assert t.messages[i + 1].error_kind == "tool_error" and "Python writes " in again.thought
        assert not set(again.arguments["expression"]) & set("×÷−") and t.messages[i + 3].error_kind is None
    clean = [t for t in trajs if not failed_calls(t)]
    assert all(mask_failed_calls(t) is t for t in clean)
    tok = smollm2_tokenizer()
    t = slipped[0]
    (i,) = failed_calls(t)
    enc = encode(mask_failed_calls(t), tok)
    slip, recovery = t.messages[i].content, t.messages[i + 2].content

    def labels_in(text):
        start = enc.text.index(text)
        return [lab for (a, _), lab in zip(enc.offsets, enc.labels) if start <= a < start + len(text)]
    assert all(lab == IGNORE_INDEX for lab in labels_in(slip))
    assert all(lab != IGNORE_INDEX for lab in labels_in(recovery)[len(tok("Thought")["input_ids"]):])
    plain, masked = (build_data(TrainConfig(data=[str(out)], out=str(tmp_path / "s"), mask_failed_calls=m,
                                            packing=False), tok) for m in (False, True))
    assert masked.trained_tokens["act"] < plain.trained_tokens["act"]
    assert masked.trained_tokens["answer"] == plain.trained_tokens["answer"]


def test_box_tool_call_matches_the_programs_shape_not_a_name():
    from trajdistill.envs import ToolSpec
    from trajdistill.envs.math._experts import box_tool_call

    def spec(name, **params):
        return ToolSpec(name, "", {"type": "object", "properties": {
            p: {"type": t, "description": d} for p, (t, d) in params.items()}})

    origin = "int from `return pow(71, 9, 69)`; e.g."  # as the miner writes it: the statement, print as return
    power = spec("t1", a=("integer", f"{origin} 71"), b=("integer", f"{origin} 9"), c=("integer", f"{origin} 69"))
    expression = spec("t2", expression=("string", 'The expression, with numbers only; e.g. "(6 + 25) * 8"'))
    code = spec("python", code=("string", "Python source to run."))
    assert box_tool_call([code, power, expression], "print(pow(3, 4, 5))") == ("t1", {"a": 3, "b": 4, "c": 5})
    assert box_tool_call([code, power, expression], "print(102600 - (45 * 929))") == \
        ("t2", {"expression": "102600 - 45 * 929"})
    assert box_tool_call([code, power], "import math\nprint(math.comb(10, 3))") is None  # no tool of that shape
    assert box_tool_call([code, expression], "print(pow(3, 4, 5))") is None  # a call is not plain arithmetic


def test_box_tool_call_fits_a_many_line_program_line_by_line_and_picks_by_the_tasks_words():
    """A tool mined from a loop documents each parameter's own line; it fits a program holding lines of those
    shapes, with the program's literals; a literal the tool keeps must match; of two fitting tools the
    description nearer the task wins."""
    from trajdistill.envs import ToolSpec
    from trajdistill.envs.math._experts import box_tool_call

    def seq_tool(name, what):
        return ToolSpec(name, f"The n-th term of a {what} sequence.", {"type": "object", "properties": {
            "terms": {"type": "array", "description": "list of int from `terms = [8, 15, 22]`; e.g. [8, 15, 22]"},
            "n": {"type": "integer", "description": "int from `while len(terms) < 8:`; e.g. 8"},
            "k": {"type": "integer", "description": "int from `terms.append(terms[-1] + 2 * terms[0])`; e.g. 2"}}})

    arith, geom = seq_tool("t_a", "arithmetic (constant difference)"), seq_tool("t_g", "geometric (constant ratio)")
    program = "terms = [1, 4, 7]\nwhile len(terms) < 12:\n    terms.append(terms[-1] + 5 * terms[0])\nprint(terms[-1])"
    args = {"terms": [1, 4, 7], "n": 12, "k": 5}
    assert box_tool_call([arith], program) == ("t_a", args)
    assert box_tool_call([geom, arith], program, "An arithmetic sequence keeps the same difference.") == ("t_a", args)
    assert box_tool_call([geom, arith], program, "A geometric sequence keeps the same ratio.") == ("t_g", args)
    assert box_tool_call([arith, geom], program) == ("t_a", args)  # no words in common: list order
    other_loop = program.replace("while len(terms) < 12:", "while len(terms) <= 12:")
    assert box_tool_call([arith], other_loop) is None  # a line of another shape
    step = ToolSpec("t_m", "", {"type": "object", "properties": {
        "stop": {"type": "integer", "description": "int from `return sum(1 for x in range(1, 75 + 1))`; e.g. 75"}}})
    assert box_tool_call([step], "print(sum(1 for x in range(1, 30 + 1)))") == ("t_m", {"stop": 30})
    assert box_tool_call([step], "print(sum(1 for x in range(0, 30 + 1)))") is None  # the tool keeps its 1
