"""`trajdistill gate`: shadow-mode readiness (agreement, calibration, behaviour, drift) with exit codes."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from trajdistill.agents import (build_tiny_llama, expected_calibration_error, ks_statistic, load_causal_lm, psi,
                                read_gate, score_episodes)
from trajdistill.agents._hf import render_prompt
from trajdistill.envs import Outcome
from trajdistill.trajectories import EnvRef, Message, Teacher, Trajectory

from conftest import cli, one_line_error


def test_ece_by_hand():
    # bin 0.9-1.0: confidence 0.95, accuracy 1/2 -> 0.45; bin 0.1-0.2: confidence 0.15, accuracy 0 -> 0.15
    ece, bins = expected_calibration_error([0.95, 0.95, 0.15, 0.15], [True, False, False, False])
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert [(b["n"], b["accuracy"]) for b in bins] == [(2, 0.0), (2, 0.5)]
    assert expected_calibration_error([1.0, 0.0], [True, False])[0] == pytest.approx(0.0)


def test_psi_and_ks_by_hand():
    expected = [float(v) for v in range(1, 11)]  # two bins at the median edge 6: shares 0.5 / 0.5
    actual = [1.0] * 8 + [7.0] * 2  # shares 0.8 / 0.2
    want = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert psi(expected, actual, n_bins=2) == pytest.approx(want, abs=1e-3)
    assert psi(expected, expected) == pytest.approx(0.0)
    assert ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)


def _traj(messages: list[dict]) -> Trajectory:
    return Trajectory(task_id="t", env=EnvRef(name="math", version="1"), teacher=Teacher(spec="x", backend="x",
                      model="x"), messages=[Message(**m) for m in messages], outcome=Outcome(success=True))


def test_confidence_is_the_answer_tokens_probability_token_by_token(tmp_path):
    """One forward pass per turn gives what feeding the answer one token at a time gives."""
    model_dir = build_tiny_llama(tmp_path / "tiny")
    msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "What is 3 + 4?"},
            {"role": "assistant", "content": "Thought: add them.\nFinal Answer: 7"}]
    [scores] = score_episodes(str(model_dir), [_traj(msgs)], dtype="float32")
    model, tok = load_causal_lm(model_dir)
    ids = tok(render_prompt(tok, msgs[:2]), add_special_tokens=False).input_ids
    ids += tok("Thought: add them.\nFinal Answer: ", add_special_tokens=False).input_ids
    prob = 1.0
    with torch.no_grad():
        for t in tok("7", add_special_tokens=False).input_ids:
            prob *= torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)[t].item()
            ids.append(t)
    assert scores.confidence == pytest.approx(prob, rel=1e-3)
    assert len(scores.entropy) == 1 and 0 < scores.entropy[0] <= math.log(model.config.vocab_size) + 1e-6


def test_a_student_wrong_on_its_disagreements_is_held_with_exit_1(tmp_path):
    out = tmp_path / "gate"
    res = cli("gate", "--env", "math", "--student", "expert:reasoner", "--teacher", "expert:coder", "--tasks", "20",
              "--sandbox", "nsjail", "--out", out)
    assert res.returncode == 1, res.stderr[-2000:]
    report = read_gate(out / "gate.json")
    assert report.decision == "hold" and report.agreement.tasks == 20
    d = report.agreement.disagreements
    assert d > 0 and report.agreement.student_wrong_on_disagreement == 1.0  # the coder is always right
    assert report.agreement.final_answer == pytest.approx(1 - d / 20)
    assert report.student_success == pytest.approx(1 - d / 20) and report.teacher_success == 1.0
    assert "the student is wrong on 100%" in res.stderr
    assert not report.calibration.measured and "no token probabilities" in report.calibration.why_not
    html = (out / "gate.html").read_text()
    assert "Agreement" in html and "data:image/png;base64," in html
    assert len(report.episodes) == 20 and all(e.length > 0 for e in report.episodes)


def test_a_student_right_where_it_disagrees_is_promoted_then_drift_holds_it(tmp_path):
    """coder against reasoner: every disagreement is the teacher's mistake, exit 0. Then the reasoner, measured
    against that report as the baseline, has drifted: shorter outputs and lower accuracy on the same tasks."""
    first = tmp_path / "first"
    res = cli("gate", "--env", "math", "--student", "expert:coder", "--teacher", "expert:reasoner", "--tasks", "20",
              "--sandbox", "nsjail", "--out", first)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert read_gate(first / "gate.json").agreement.student_wrong_on_disagreement == 0.0
    second = tmp_path / "second"
    res = cli("gate", "--env", "math", "--student", "expert:reasoner", "--teacher", "expert:coder", "--tasks", "20",
              "--sandbox", "nsjail", "--out", second, "--baseline", first / "gate.json",
              "--max-wrong-on-disagreement", "1")
    assert res.returncode == 1
    drift = read_gate(second / "gate.json").drift
    assert drift.shared_tasks == 20 and drift.accuracy_then == 1.0 and drift.accuracy_now < 0.95
    assert drift.psi["length"] > 0.1
    assert "drift: PSI of length" in res.stderr and "accuracy on the 20 baseline tasks fell" in res.stderr


def test_local_students_and_teachers_get_entropy_compared(tmp_path):
    a = build_tiny_llama(tmp_path / "a")
    model, _ = load_causal_lm(a)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights: the default init writes one token over and over, or nothing
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    model.save_pretrained(a)
    b = shutil.copytree(a, tmp_path / "b")
    out = tmp_path / "gate"
    res = cli("gate", "--env", "math", "--student", f"hf:{a}", "--teacher", f"hf:{b}", "--tasks", "2",
              "--max-steps", "1", "--agent-option", "max_new_tokens=6", "--agent-option", "dtype=float32",
              "--sandbox", "nsjail", "--out", out)
    report = json.loads((out / "gate.json").read_text())
    assert res.returncode in (0, 1) and report["decision"] in ("promote", "hold")
    beh = report["behaviour"]
    assert beh["student_entropy"] > 0 and beh["teacher_entropy"] > 0
    assert beh["entropy_ratio"] == pytest.approx(1.0, rel=0.05)  # the same weights write the same text


def test_too_few_disagreements_do_not_hold(tmp_path):
    """Against a verified teacher every disagreement is the student's mistake: below the minimum rate the
    disagreement rule is a note, not a reason (the reasoner disagrees with the coder on about 30% of tasks)."""
    out = tmp_path / "gate"
    res = cli("gate", "--env", "math", "--student", "expert:reasoner", "--teacher", "expert:coder", "--tasks", "20",
              "--sandbox", "nsjail", "--out", out, "--min-disagreement-rate", "0.9")
    assert res.returncode == 0, res.stderr[-2000:]
    report = read_gate(out / "gate.json")
    assert report.decision == "promote" and report.agreement.disagreements > 0
    assert any("disagreement rule not applied" in n for n in report.notes)


def test_bad_gate_input_is_one_line(tmp_path):
    res = cli("gate", "--env", "math", "--student", "expert:coder", "--teacher", "expert:coder", "--out", tmp_path)
    one_line_error(res, "--student and --teacher must differ")
    res = cli("gate", "--env", "math", "--student", "expert:coder", "--teacher", "expert:reasoner", "--out",
              tmp_path / "g", "--baseline", tmp_path / "nope.json")
    one_line_error(res, "--baseline", "is not a file")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = cli("gate", "--env", "math", "--student", "expert:coder", "--teacher", "expert:reasoner", "--out",
              tmp_path / "g2", "--baseline", bad)
    one_line_error(res, "is not a gate.json")
