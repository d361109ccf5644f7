"""The skill box format: write/load, hashes, tamper refusal, ast-built schemas, sandboxed tool runs."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import require
from trajdistill.envs import tool_spec
from trajdistill.envs.sandbox import Limits, get_provider, sandboxes
from trajdistill.skills import (BoxError, SkillBox, SkillDraft, ToolCheck, ToolDraft, ToolRunner, check_box,
                                parse_skill_md, run_source, run_source_many, run_tool_in_sandbox, spec_from_source)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the `none` sandbox warns that it is unconfined

COMB = '''from math import comb


def count_combinations(n: int, k: int = 2) -> int:
    """Count the ways to choose k of n items.

    Args:
        n: How many items there are.
        k: How many to choose.
    """
    print("chatty tools must not spoil the result")
    return comb(n, k)
'''


def count_combinations(n: int, k: int = 2) -> int:
    """Count the ways to choose k of n items.

    Args:
        n: How many items there are.
        k: How many to choose.
    """
    return n


def write_box(path, **extra):
    skill = SkillDraft("math-comb", "Use when a task asks how many ways to choose k of n things.",
                       "# Choosing\n\nCall `count_combinations`. See [notes](references/notes.md).",
                       {"notes.md": "# Notes\n\nC(n, k) = n! / (k! (n-k)!)\n"}, {"run-a": ["t1", "t2"]})
    tool = ToolDraft("count_combinations", COMB,
                     [{"args": {"n": 5, "k": 2}, "expected": 10}, {"args": {"n": 10}, "expected": 45}],
                     {"run-a": ["t1"]})
    return SkillBox.write(path, name="comb-box", env="math", skills=[skill], tools=[tool], **extra)


@pytest.fixture
def box(tmp_path):
    return write_box(tmp_path / "box")


def test_write_then_load_round_trips(box, tmp_path):
    again = SkillBox.load(tmp_path / "box")
    assert again.name == "comb-box" and again.env == "math"
    skill = again.skill("math-comb")
    assert skill.description.startswith("Use when") and "count_combinations" in skill.body
    assert skill.references == ("skills/math-comb/references/notes.md",)
    front, body = parse_skill_md((tmp_path / "box/skills/math-comb/SKILL.md").read_text())
    assert front == {"name": "math-comb", "description": skill.description} and body.strip() == skill.body
    assert [t.tool for t in again.tests["count_combinations"]] == ["count_combinations"] * 2
    assert again.sources_of("skills", "math-comb") == {"run-a": ["t1", "t2"]}
    manifest = json.loads((tmp_path / "box/skillbox.json").read_text())
    assert set(manifest["files"]) == {"skills/math-comb/SKILL.md", "skills/math-comb/references/notes.md",
                                      "tools/count_combinations.py", "tests/count_combinations.jsonl"}
    assert manifest["format_version"] == 1 and manifest["created_at"].endswith("Z")


def test_tool_schema_comes_from_the_one_builder_without_running_the_code(box):
    spec = box.tool("count_combinations").spec
    assert spec == tool_spec(count_combinations)  # the same builder, fed a stub parsed from the source
    assert spec.parameters["required"] == ["n"] and spec.parameters["properties"]["k"]["default"] == 2
    # a module that would fail on import still gets a schema: the host never imports it
    source = "import module_that_does_not_exist\n\n\ndef f(xs: list[int], mode: str | None = None):\n" \
             '    """Sum.\n\n    Args:\n        xs: Numbers.\n    """\n    return sum(xs)\n'
    props = spec_from_source(source, "f").parameters["properties"]
    assert props["xs"] == {"type": "array", "items": {"type": "integer"}, "description": "Numbers."}


@pytest.mark.parametrize("source, message", [
    ("def f(n):\n    '''Doc.'''\n    return n\n", "no type hint"),
    ("def f(n: int):\n    return n\n", "needs a docstring"),
    ("import os\nos.system('x')\n\ndef f(n: int):\n    '''Doc.'''\n", "may only import and define"),
    ("def f(n: os.PathLike):\n    '''Doc.'''\n", "not supported"),
    ("def g(n: int):\n    '''Doc.'''\n", "no top-level function named 'f'"),
])
def test_bad_tool_sources_are_refused(source, message):
    with pytest.raises((ValueError, TypeError), match=message):
        spec_from_source(source, "f")


def rehash(box_path, rel):
    manifest = json.loads((box_path / "skillbox.json").read_text())
    import hashlib

    manifest["files"][rel] = hashlib.sha256((box_path / rel).read_bytes()).hexdigest()
    (box_path / "skillbox.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper, message", [
    (lambda p: (p / "tools/count_combinations.py").write_text(COMB.replace("comb(n, k)", "comb(n, k) + 1")),
     "file tools/count_combinations.py was tampered with"),
    (lambda p: (p / "tests/count_combinations.jsonl").unlink(), "file tests/count_combinations.jsonl is missing"),
    (lambda p: (p / "tools/helper.py").write_text("x = 1\n"), "extra file tools/helper.py is not in the manifest"),
    (lambda p: (p / "skills/math-comb/notes.md").write_text("hi"), "extra file skills/math-comb/notes.md"),
    (lambda p: (p / "skillbox.json").write_text("{not json"), "skillbox.json is not valid JSON"),
    (lambda p: (p / "skillbox.json").unlink(), "skillbox.json is missing"),
    (lambda p: ((p / "skills/math-comb/SKILL.md").write_text("no frontmatter here\n"),
                rehash(p, "skills/math-comb/SKILL.md")), "SKILL.md does not parse"),
    (lambda p: ((p / "tools/count_combinations.py").write_text("def count_combinations(:\n"),
                rehash(p, "tools/count_combinations.py")), "does not parse as a tool: syntax error"),
])
def test_a_tampered_box_is_refused_with_one_clear_line(box, tamper, message):
    tamper(box.path)
    with pytest.raises(BoxError, match=message) as err:
        SkillBox.load(box.path)
    assert "\n" not in str(err.value)


def test_unverified_load_skips_hashes_but_still_parses(box):
    (box.path / "tools/count_combinations.py").write_text(COMB.replace("Count the ways", "Count all the ways"))
    with pytest.raises(BoxError, match="tampered"):
        SkillBox.load(box.path)
    assert SkillBox.load(box.path, verify=False).tool("count_combinations").spec.description.startswith("Count all")


def test_links_to_missing_references_and_bad_names_are_refused(tmp_path):
    with pytest.raises(BoxError, match="references/gone.md is not in the manifest"):
        SkillBox.write(tmp_path / "a", name="x", env=None,
                       skills=[SkillDraft("s", "Use when.", "see [x](references/gone.md)")])
    with pytest.raises(BoxError, match="lowercase letters"):
        SkillBox.write(tmp_path / "b", name="x", env=None, skills=[SkillDraft("Bad Name", "Use when.", "body")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written


def test_write_refuses_to_replace_a_box_unless_asked(box, tmp_path):
    with pytest.raises(BoxError, match="already holds a skill box"):
        write_box(tmp_path / "box")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(BoxError, match="not a skill box"):
        write_box(tmp_path / "other", overwrite=True)
    assert write_box(tmp_path / "box", overwrite=True).name == "comb-box"


def test_record_validation_rewrites_only_the_manifest(box):
    box.record_validation("gate", {"delta": 0.1, "flagged": False})
    again = SkillBox.load(box.path)  # still verifies: the manifest is not in its own hash list
    assert again.validation["gate"] == {"delta": 0.1, "flagged": False}
    assert not [p for p in box.path.iterdir() if p.name.endswith(".tmp")]


async def test_tools_run_in_the_sandbox_and_failures_are_results(box):
    async with get_provider("none", Limits(timeout_s=5)) as provider:
        async with provider.acquire() as sb:
            assert await run_tool_in_sandbox(box, "count_combinations", {"n": 6, "k": 3}, sb) == (True, 20)
            ok, err = await run_tool_in_sandbox(box, "count_combinations", {"n": "six"}, sb)
            assert not ok and "'six' is not of type 'integer'" in err
            ok, err = await run_tool_in_sandbox(box, "count_combinations", {"n": -1, "k": 2}, sb)
            assert not ok and err.startswith("ValueError")
            ok, err = await run_tool_in_sandbox(box, "nope", {}, sb)
            assert not ok and "has no tool 'nope'" in err
            res = await run_source("def spin():\n    '''Doc.'''\n    while True:\n        pass\n", "spin", {}, sb,
                                   timeout=1)
            assert not res.ok and "timed out" in res.error
            res = await run_source("import sys\n\ndef leave():\n    '''Doc.'''\n    sys.exit(3)\n", "leave", {}, sb)
            assert not res.ok and res.error.startswith("SystemExit")


async def test_many_calls_in_one_exec_equal_single_calls_and_a_broken_batch_runs_singly():
    src = "def half(x: int) -> float:\n    '''Doc.'''\n    return 10 / x\n"
    calls = [{"x": 4}, {"x": 0}, {"x": 5}]
    async with get_provider("none", Limits(timeout_s=5)) as provider:
        async with provider.acquire() as sb:
            batch = await run_source_many(src, "half", calls, sb)
            singles = [await run_source(src, "half", args, sb) for args in calls]
        assert batch == singles and [r.ok for r in batch] == [True, False, True]
        assert batch[1].error.startswith("ZeroDivisionError") and batch[2].value == 2.0
        # the second call hangs: the batch times out, and each call then runs alone with its own result
        nap = "import time\n\ndef nap(s: float) -> float:\n    '''Doc.'''\n    time.sleep(s)\n    return s\n"
        runner = ToolRunner(provider, 2, timeout=1)
        try:
            results = await runner.run_many(nap, "nap", [{"s": 0}, {"s": 30}, {"s": 0.1}])
        finally:
            await runner.close()
    assert [r.ok for r in results] == [True, False, True] and "timed out" in results[1].error


async def test_a_rewritten_tool_file_of_the_same_size_never_runs_stale_bytecode():
    async with get_provider("none", Limits(timeout_s=5)) as provider:
        async with provider.acquire() as sb:
            for want in range(1, 6):  # same name, same length, within one second of each other
                src = f"def f() -> int:\n    '''Doc.'''\n    return {want}\n"
                assert (await run_source(src, "f", {}, sb)).value == want


def test_self_check_replays_tests_and_records_the_result(box):
    result = check_box(box.path, sandbox="none")
    assert result.ok and result.tools["count_combinations"] == ToolCheck(passed=2, failed=0)
    recorded = SkillBox.load(box.path).validation["self_check"]
    assert recorded["ok"] is True and recorded == result.doc()
    assert list(recorded) == ["ok", "checked_at", "sandbox", "files", "skills", "tools"]  # the manifest's keys
    assert recorded["tools"]["count_combinations"] == {"passed": 2, "failed": 0}  # no first_failure key


def test_self_check_reports_a_tool_that_fails_its_tests(tmp_path):
    bad = ToolDraft("count_combinations", COMB, [{"args": {"n": 5, "k": 2}, "expected": 11}])
    path = SkillBox.write(tmp_path / "bad", name="bad", env="math", tools=[bad]).path
    result = check_box(path, sandbox="none")
    assert not result.ok
    assert result.tools["count_combinations"].failed == 1
    assert "expected 11" in result.tools["count_combinations"].first_failure


@pytest.mark.nsjail
def test_self_check_under_nsjail(box):
    why = sandboxes.get("nsjail").available()
    require(why is None, f"nsjail cannot run here: {why}")
    result = check_box(box.path, sandbox="nsjail")
    assert result.ok and result.sandbox == "nsjail"


def test_copied_box_still_verifies(box, tmp_path):
    shutil.copytree(box.path, tmp_path / "copy")
    assert SkillBox.load(tmp_path / "copy").name == "comb-box"  # nothing in the manifest is tied to the path
