"""Typed reports that are also JSON files: the box validation, the box self-check, run stats, and the eval results and
compose report that the demo report reads back."""

from __future__ import annotations

import json

import pytest

from test_skills_serve import SKILLS, make_box, need_nsjail

from trajdistill.agents import EvalConfig, EvalResults, evaluate
from trajdistill.report import build_report
from trajdistill.skills import Arm, ValidateConfig, ValidationReport, SkillBox, validate
from trajdistill.trajectories import ComposeReport, GroupStats, Report, RunError

GATE_KEYS = ["env", "agent", "split", "tasks", "without", "with", "delta", "delta_ci95", "verdict", "flagged",
             "wall_s", "at"]
ARM_KEYS = ["success_rate", "ci95", "n", "successes", "mean_steps", "errors"]


def test_box_validation_returns_a_typed_report_and_writes_the_same_keys(tmp_path):
    need_nsjail()
    box = make_box(tmp_path / "box", tools=("add_numbers",), skills=[SKILLS[0]])
    report = validate(ValidateConfig(box=str(box.path), env="math", agent="expert:coder", tasks=2, sandbox="nsjail"))
    assert isinstance(report, ValidationReport) and isinstance(report.with_, Arm)
    assert report.without.n == report.with_.n == report.tasks == 2
    assert report.verdict == "no clear effect" and not report.flagged and report.note is None
    written = json.loads((box.path / "skillbox.json").read_text())["validation"]["dev_eval"]
    assert written == report.doc() and list(written) == GATE_KEYS  # no ablation, no note: left out, as before
    assert list(written["with"]) == ARM_KEYS
    assert ValidationReport.model_validate(SkillBox.load(box.path).validation["dev_eval"]) == report  # reads back typed


class _Example(Report):
    omit_none = ("note",)
    count: int
    note: str | None = None
    other: str | None = None


def test_a_report_leaves_out_only_the_fields_it_names_and_is_read_by_attribute():
    assert _Example(count=1).doc() == {"count": 1, "other": None}
    assert _Example(count=1, note="n").doc() == {"count": 1, "note": "n", "other": None}
    example = _Example(count=2)
    assert example.count == 2 and example.note is None
    with pytest.raises(TypeError):  # not a dict: the dict-style reads of the first typed reports are gone
        example["count"]


def test_eval_results_read_back_typed_and_a_bad_file_is_one_line(tmp_path):
    out = tmp_path / "eval"
    written = evaluate(EvalConfig(env="math", agents=["expert:coder", "expert:reasoner"], tasks=4, out=str(out),
                                  sandbox="none", concurrency=2))
    read = EvalResults.read(out / "results.json")
    assert read == written  # every field, the agents' ci95 tuples and the out dir included
    assert read.agents[1].spec == "expert:reasoner" and read.agents[1].n == 4
    doc = json.loads((out / "results.json").read_text())
    doc["agents"][0]["label"] = "base student"  # a key of an older demo's results.json: left out
    del doc["task_ids"]  # older evals did not write it
    (out / "results.json").write_text(json.dumps(doc))
    older = EvalResults.read(out / "results.json")
    assert older.agents == written.agents and older.task_ids == []
    del doc["agents"][1]["n"]
    bad = {"missing": json.dumps(doc), "not json": "{", "a list": "[]"}
    for what, text in bad.items():
        (out / "results.json").write_text(text)
        with pytest.raises(RunError) as info:
            EvalResults.read(out / "results.json")
        message = str(info.value)
        assert message.startswith(f"{out / 'results.json'} is not ") and "\n" not in message, what
    assert "'n'" in _read_error(EvalResults.read, out / "results.json", json.dumps(doc))
    with pytest.raises(RunError, match="is not an eval results.json"):  # the report says so too, in one line
        build_report(tmp_path / "page", {}, eval_results=out)
    with pytest.raises(RunError, match="cannot be read"):
        EvalResults.read(tmp_path / "nope.json")


def test_a_compose_report_reads_back_typed_and_a_bad_file_is_one_line(tmp_path):
    report = ComposeReport(strategy="dual", runs=["runs/a", "runs/b"], teachers=["expert:reasoner", "expert:coder"],
                           by_difficulty={"2": GroupStats(tasks=1, dropped=1)}, transitions={"a->b": 1}, out=str(tmp_path))
    report.total = GroupStats(tasks=3, kept=2, composed=1, dropped=1, won={"expert:coder": 2})
    report.by_category["modular"] = GroupStats(tasks=2, kept=2, composed=1, won={"expert:coder": 2})
    report.write(tmp_path / "compose_report.json")
    assert ComposeReport.read(tmp_path / "compose_report.json") == report
    message = _read_error(ComposeReport.read, tmp_path / "compose_report.json", json.dumps({"strategy": "dual"}))
    assert message.startswith(f"{tmp_path / 'compose_report.json'} is not a compose report: ") and "'runs'" in message
    message = _read_error(ComposeReport.read, tmp_path / "compose_report.json",
                          json.dumps({**report.to_dict(), "total": {"tasks": "x", "kept": 1, "wins": 2}}))
    assert "is not a compose report" in message and "wins" in message
    with pytest.raises(RunError, match="is not a compose report"):
        build_report(tmp_path / "page", {}, compose_report=tmp_path)


def _read_error(read, path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(RunError) as info:
        read(path)
    return str(info.value)
