"""The box's own validation: files parse and match their hashes, and every tool passes its tests in a sandbox."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from trajdistill.envs.sandbox import Limits, get_provider
from trajdistill.trajectories import Report

from ._box import SkillBox, ToolResult, ToolRunner, ToolTest

SECTION = "self_check"


class ToolCheck(Report):
    """One tool's tests: passed and failed, and the first failure in one line."""

    omit_none = ("first_failure",)
    passed: int
    failed: int
    first_failure: str | None = None


class CheckReport(Report):
    """A box's self-check, as `validation.self_check` of its manifest holds it."""

    ok: bool
    checked_at: str
    sandbox: str | None
    files: int
    skills: int
    tools: dict[str, ToolCheck]


def test_passes(test: ToolTest, res: ToolResult) -> bool:
    """The tool returned the expected value (or, for values JSON changes, printed the same text)."""
    if not res.ok:
        return False
    return res.value == test.expected or res.text.strip() == str(test.expected).strip()


async def check_tools(box: SkillBox, runner: ToolRunner) -> dict[str, ToolCheck]:
    """Per tool: tests passed and failed, and the first failure in one line."""

    async def one(name: str, tests: list[ToolTest]) -> tuple[str, ToolCheck]:
        tool = box.tool(name)
        results = await asyncio.gather(*(runner.run(tool.source, name, t.args) for t in tests))
        failures = [(t, r) for t, r in zip(tests, results) if not test_passes(t, r)]
        report = ToolCheck(passed=len(tests) - len(failures), failed=len(failures))
        if not tests:
            report.first_failure = "the tool has no tests"
        elif failures:
            t, r = failures[0]
            got = r.error if not r.ok else f"returned {r.text[:200]!r}"
            report.first_failure = f"args {t.args}: expected {t.expected!r}, {got}"
        return name, report

    return dict(await asyncio.gather(*(one(t.name, box.tests.get(t.name, [])) for t in box.tools)))


async def check_box_async(box: SkillBox | str | Path, *, runner: ToolRunner | None = None, sandbox: str = "auto",
                          workers: int = 2, timeout_s: float = 10.0, record: bool = True) -> CheckReport:
    """Verify a box and replay every tool test in the sandbox; the result goes into `validation.self_check`.

    Loading verifies files and hashes (a BoxError is raised for a broken box); tool failures are results.
    """
    box = box if isinstance(box, SkillBox) else SkillBox.load(box)
    own = None
    if runner is None and box.tools:
        own = get_provider(sandbox, Limits(timeout_s=timeout_s))
        runner = ToolRunner(own, workers, timeout=timeout_s)
    try:
        tools = await check_tools(box, runner) if box.tools else {}
    finally:
        if own is not None:
            await runner.close()
            await own.close()
    ok = all(r.failed == 0 and r.passed > 0 for r in tools.values())
    result = CheckReport(ok=ok, checked_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         sandbox=runner.provider.name if runner is not None else None,
                         files=len(box.manifest["files"]), skills=len(box.skills), tools=tools)
    if record:
        box.record_validation(SECTION, result.doc())
    return result


def check_box(box: SkillBox | str | Path, **kwargs: Any) -> CheckReport:
    """Sync wrapper of check_box_async."""
    return asyncio.run(check_box_async(box, **kwargs))
