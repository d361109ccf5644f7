"""`trajdistill demo --quick` end to end on the embedded student, its report checked in a real browser."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_report_browser import CHROMIUM, Dom, assert_rendered_trajectory, dump_dom, screenshot

from conftest import require

pytestmark = pytest.mark.slow

STAGES = ["collect", "collect_twx", "compose", "train", "mine", "validate", "serve", "eval"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    cmd = [sys.executable, "-m", "trajdistill", "demo", "--quick", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res, cmd


def test_summary_has_every_stage_and_the_eval_table(demo):
    out, res, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == STAGES
    labels = [row["label"] for row in summary["eval"]]
    assert labels[:2] == ["base student", "distilled student"]  # the box is measured by the validate stage, on dev
    assert {"expert:reasoner", "expert:coder"} <= set(labels)
    coder = next(r for r in summary["eval"] if r["label"] == "expert:coder")
    assert coder["success_rate"] == 1.0
    assert summary["compose"]["total"]["tasks"] == 8
    assert summary["validation"]["verdict"] and "with" in summary["validation"]
    assert (out / "student" / "model.safetensors").exists()  # train's default: full fine-tuning
    assert (out / "box" / "skillbox.json").exists()
    assert "held-out math test tasks" in res.stdout


def test_rerun_resumes_from_finished_stages(demo):
    out, _, cmd = demo
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("(finished earlier)") == len(STAGES)


def test_report_renders_in_chromium(demo, tmp_path):
    require(CHROMIUM.is_file(), "apt-get install chromium (see .ci/browser.sh)")
    out, _, _ = demo
    report = out / "report.html"
    dom, _ = dump_dom(tmp_path, report)
    assert isinstance(dom, Dom)
    assert_rendered_trajectory(dom)
    assert dom.count("span-context") > 0 or dom.count("span-answer") > 0
    assert dom.count("td-notrun") == 0  # every section had its input
    screenshot(tmp_path, report, tmp_path / "report.png", "1400,2600")
