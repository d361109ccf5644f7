"""Typed reports (pydantic) that are also JSON files: the box validation, the box self-check and run stats."""

from __future__ import annotations

import json

import pytest

from test_skills_serve import SKILLS, make_box, need_nsjail

from trajdistill.skills import Arm, ValidateConfig, ValidationReport, SkillBox, validate
from trajdistill.trajectories import Report

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
