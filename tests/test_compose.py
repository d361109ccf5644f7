"""DualDistill composition on real expert runs: transitions, spans, determinism, best/prefer, drops, training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import pytest

from trajdistill.agents import CollectConfig, collect
from trajdistill.envs import Outcome
from trajdistill.envs._react_text import ParsedAction, ParsedFinal, parse_react
from trajdistill.trajectories import EnvRef, Message, RunStore, Teacher, Trajectory, Usage, compose
from trajdistill.trajectories._compose import REPORT_FILE, TO_TOOL, cut_before_answer, pick, text_tokens
from trajdistill.trajectories import assistant_text

TEACHERS = ["expert:reasoner", "expert:coder"]


def _collect(out, teachers, tasks=20):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` sandbox warns that it is unconfined
        collect(CollectConfig(env="math", teachers=teachers, out=str(out), tasks=tasks, split="train",
                              sandbox="none", concurrency=4))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _collect(tmp_path_factory.mktemp("runs") / "both", TEACHERS)


@pytest.fixture(scope="module")
def dual(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dual") / "dual"
    report = compose([run], "dual", out)
    return out, report


def _source(run):
    return {t.id: t for t in RunStore.open(run).load()}


def _composed(out):
    return [t for t in RunStore.open(out).load() if t.teacher.backend == "compose"]


def test_reasoner_fails_some_tasks_so_dual_composes_transitions(run, dual):
    out, report = dual
    src = _source(run)
    failed = {t.task_id for t in src.values() if t.teacher.spec == "expert:reasoner" and not t.outcome.success}
    assert failed, "the reasoner expert should slip on some level-2/3 tasks"
    composed = _composed(out)
    assert {t.task_id for t in composed} == failed  # the coder solves everything
    assert report.total.composed == len(failed) == report.transitions["expert:reasoner->expert:coder"]
    for t in composed:
        assert t.teacher.spec == "compose:dual(expert:reasoner->expert:coder)"
        assert t.provenance.strategy == "dual" and len(t.provenance.composed_from) == 2
        reasoner, coder = (src[i] for i in t.provenance.composed_from)
        assert (reasoner.teacher.spec, coder.teacher.spec) == ("expert:reasoner", "expert:coder")
        assert t.outcome == coder.outcome and t.outcome.success
        wrong = re.compile(rf"(?<![\w.]){re.escape(reasoner.outcome.final_answer)}(?!\w)")
        assert not any(wrong.search(assistant_text(m)) for m in t.messages if m.role == "assistant")
        switch = t.messages[2].content
        assert any(phrase in switch for phrase in TO_TOOL)
        assert switch.startswith("Thought: I'll work it out by hand")  # the hand work stays, as context


def test_composed_messages_are_one_valid_react_conversation(dual):
    for t in _composed(dual[0]):
        roles = [m.role for m in t.messages]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        assert "python(code: string)" in t.messages[0].content  # the tool user's system prompt
        turns = [m for m in t.messages if m.role == "assistant"]
        assert all(isinstance(parse_react(m.content), ParsedAction) for m in turns[:-1])
        assert isinstance(parse_react(turns[-1].content), ParsedFinal)
        for i, m in enumerate(t.messages[2:], 2):  # every action is answered by an observation
            if m.role == "assistant" and m is not turns[-1]:
                assert t.messages[i + 1].role == "tool"


def test_spans_line_up_with_messages_and_the_prefix_is_context(dual):
    out, _ = dual
    for t in RunStore.open(out).load():
        by_msg: dict[int, list] = {}
        for s in t.spans:
            assert t.messages[s.message].role == "assistant"
            assert 0 <= s.start <= s.end <= len(assistant_text(t.messages[s.message]))
            by_msg.setdefault(s.message, []).append(s)
        if t.teacher.backend != "compose":
            continue
        for i, m in enumerate(t.messages):  # the spans tile every assistant text, so the encoder uses them
            if m.role == "assistant":
                ends = [(s.start, s.end) for s in sorted(by_msg[i], key=lambda s: s.start)]
                assert ends[0][0] == 0 and ends[-1][1] == len(assistant_text(m))
                assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))
        text = t.messages[2].content
        cut = min(text.find(p) for p in TO_TOOL if p in text)
        first = sorted(by_msg[2], key=lambda s: s.start)
        assert first[0].kind == "context" and first[0].end == cut  # the failed hand work, up to the switch
        assert all(s.kind != "context" for s in first[1:])  # the transition and the solution are trained
        assert first[1].kind == "reason"


def test_composition_is_deterministic(run, dual, tmp_path):
    again = tmp_path / "again"
    compose([run], "dual", again)
    first = dual[0]
    names = sorted(p.name for p in first.glob("trajectories-*.jsonl"))
    assert names == sorted(p.name for p in again.glob("trajectories-*.jsonl")) and names
    for name in [*names, REPORT_FILE]:
        assert (first / name).read_bytes() == (again / name).read_bytes()


def test_best_keeps_the_cheapest_success_or_the_preferred_teacher(run, tmp_path):
    report = compose([run], "best", tmp_path / "best")
    src = RunStore.open(run).load()
    by_task: dict[str, list[Trajectory]] = {}
    for t in src:
        by_task.setdefault(t.task_id, []).append(t)
    kept = {t.task_id: t for t in RunStore.open(tmp_path / "best").load()}
    assert len(kept) == 20 and report.total.composed == 0
    for task_id, t in kept.items():
        cheapest = min(text_tokens(c) for c in by_task[task_id] if c.outcome.success)
        assert t.outcome.success and text_tokens(t) == cheapest
        assert t.provenance.strategy == "best" and len(t.provenance.composed_from) == 1
    assert set(report.total.won) == set(TEACHERS)  # each teacher is cheaper somewhere

    compose([run], "best", tmp_path / "pref", prefer="expert:coder")
    assert {t.teacher.spec for t in RunStore.open(tmp_path / "pref").load()} == {"expert:coder"}
    with pytest.raises(ValueError, match="--prefer 'expert:nobody' is not a teacher"):
        compose([run], "best", tmp_path / "bad", prefer="expert:nobody")


def _traj(spec, tokens, steps, success=True):
    return Trajectory(task_id="t", env=EnvRef(name="math", version="1"),
                      teacher=Teacher(spec=spec, backend="x", model="m"),
                      messages=[Message(role="user", content="q"), Message(role="assistant", content="a")],
                      outcome=Outcome(success=success), usage=Usage(completion_tokens=tokens, steps=steps))


def test_pick_orders_by_tokens_then_steps_then_teacher():
    a, b, c = _traj("b:x", 10, 3), _traj("a:x", 10, 2), _traj("c:x", 9, 9)
    cost = {t.id: (t.usage.completion_tokens, t.usage.steps) for t in (a, b, c)}
    assert pick([a, b, c], None, cost) is c
    assert pick([a, b], None, cost) is b
    d = _traj("a:y", 10, 2)
    cost[d.id] = (10, 2)
    assert pick([d, b], None, cost) is b  # full tie: the teacher spec decides
    assert pick([a, b, c], "b:x", cost) is a


def test_cut_before_answer_drops_the_line_with_the_wrong_answer():
    text = "Thought: by hand\n12 × 3 = 36\n36 + 5 = 41\nSo the answer is 41."
    assert cut_before_answer(text, "41") == "Thought: by hand\n12 × 3 = 36"
    assert cut_before_answer(text, "4") == text  # only whole numbers count


def test_tasks_nobody_solved_are_dropped_and_counted(run, tmp_path):
    trajs = RunStore.open(run).load()
    broken = sorted({t.task_id for t in trajs})[:2]
    with RunStore.create(tmp_path / "hard", {"env": "math"}) as store:
        for t in trajs:
            if t.task_id in broken:
                t = t.model_copy(update={"outcome": Outcome(success=False, final_answer="0")})
            store.append(t)
    report = compose([tmp_path / "hard"], "dual", tmp_path / "out")
    kept = {t.task_id for t in RunStore.open(tmp_path / "out").load()}
    assert report.total.dropped == 2 and not kept & set(broken) and len(kept) == 18
    doc = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert doc["total"]["dropped"] == 2
    assert sum(g["dropped"] for g in doc["by_category"].values()) == 2
    assert sum(g["dropped"] for g in doc["by_difficulty"].values()) == 2


def test_report_contents(dual):
    out, report = dual
    doc = json.loads((out / REPORT_FILE).read_text())
    assert doc["strategy"] == "dual" and doc["teachers"] == sorted(TEACHERS)
    total = doc["total"]
    assert total["tasks"] == 20 and total["kept"] + total["dropped"] == 20
    assert sum(total["won"].values()) == total["kept"]
    for groups in (doc["by_category"], doc["by_difficulty"]):
        for key in ("tasks", "kept", "composed", "dropped"):
            assert sum(g[key] for g in groups.values()) == total[key]
    assert set(doc["by_difficulty"]) == {"1", "2", "3"}
    assert set(doc["by_category"]) == {"arithmetic", "modular", "combinatorics", "sequences", "word"}
    assert sum(doc["transitions"].values()) == total["composed"] > 0
    assert doc["by_difficulty"]["1"]["composed"] <= doc["by_difficulty"]["3"]["composed"]


def test_several_runs_compose_like_one_run_with_several_teachers(dual, tmp_path):
    a = _collect(tmp_path / "a", ["expert:reasoner"])
    b = _collect(tmp_path / "b", ["expert:coder"])
    report = compose([a, b], "dual", tmp_path / "ab")
    one, two = dual[1].to_dict(), report.to_dict()
    one.pop("runs"), two.pop("runs")
    assert one == two


def test_bad_input(run, tmp_path):
    with pytest.raises(ValueError, match="unknown compose strategy 'worst'; known: best, dual"):
        compose([run], "worst", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a run directory"):
        compose([tmp_path], "dual", tmp_path / "y")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root",
                                            "PYTHONWARNINGS": "ignore"})


def test_cli_compose_prints_the_report_table(run, tmp_path):
    res = _cli("compose", run, "--strategy", "dual", "--out", tmp_path / "c")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "won expert:coder" in res.stdout and "level 3" in res.stdout and "transitions" in res.stdout
    assert (tmp_path / "c" / REPORT_FILE).is_file()
    bad = _cli("compose", run, "--strategy", "nope", "--out", tmp_path / "d")
    assert bad.returncode == 2 and "error:" in bad.stderr and "--strategy" in bad.stderr


# ---- training on a composed run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from trajdistill.agents import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def test_encoder_never_trains_the_failed_prefix_but_trains_the_transition(dual, tiny):
    from transformers import AutoTokenizer

    from trajdistill.train import encode
    from trajdistill.train._encode import render

    tok = AutoTokenizer.from_pretrained(str(tiny))
    checked = 0
    for t in _composed(dual[0]):
        enc = encode(t, tok)
        _, ranges = render(t, tok)
        context = [(ranges[s.message][0] + s.start, ranges[s.message][0] + s.end) for s in t.spans
                   if s.kind == "context"]
        text = t.messages[2].content
        at = min(text.find(p) for p in TO_TOOL if p in text)
        phrase = next(p for p in TO_TOOL if text.find(p) == at)
        switch = (ranges[2][0] + at, ranges[2][0] + at + len(phrase))
        in_context = [i for i, (s, e) in enumerate(enc.offsets) if any(a <= s and e <= b for a, b in context)]
        in_switch = [i for i, (s, e) in enumerate(enc.offsets) if switch[0] <= s and e <= switch[1] and e > s]
        assert in_context and in_switch
        assert all(enc.labels[i] == -100 for i in in_context)
        assert all(enc.labels[i] != -100 for i in in_switch)
        checked += 1
    assert checked


def test_composed_run_trains_through_the_cli(dual, tiny, tmp_path):
    out = tmp_path / "model"
    res = _cli("train", "--data", dual[0], "--student", f"hf:{tiny}", "--out", out, "--max-steps", "2",
               "--batch-size", "2", "--max-length", "512", "--curriculum", "none")
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads(next(out.rglob("trainer_state.json")).read_text())
    assert state["global_step"] == 2
    assert (out / "model.safetensors").is_file()  # full fine-tuning, the default


def test_dual_with_native_tool_calls_switches_inside_the_reasoning(tmp_path):
    from trajdistill.envs import Outcome as O
    from trajdistill.trajectories import FunctionCall, ToolCallMsg

    def native(spec, msgs, ok, answer):
        return Trajectory(task_id="t1", category="arithmetic", difficulty=2, env=EnvRef(name="math", version="1"),
                          teacher=Teacher(spec=spec, backend="openai", model="m"),
                          messages=[Message(role="system", content=f"sys {spec}"), Message(role="user", content="q?"),
                                    *msgs], outcome=O(success=ok, final_answer=answer))

    failed = native("openai:think", [Message(role="assistant", reasoning="12 * 3 = 36\n36 + 5 = 42", content="42")],
                    False, "42")
    call = ToolCallMsg(id="c1", function=FunctionCall(name="python", arguments='{"code": "print(12*3+5)"}'))
    success = native("openai:tools", [
        Message(role="assistant", reasoning="Run it.", content="", tool_calls=[call]),
        Message(role="tool", name="python", tool_call_id="c1", content="41"),
        Message(role="assistant", reasoning="It printed 41.", content="41")], True, "41")
    with RunStore.create(tmp_path / "run", {"env": "math"}) as store:
        store.append(failed)
        store.append(success)
    report = compose([tmp_path / "run"], "dual", tmp_path / "out", transition="Let me check with the tool.")
    (t,) = RunStore.open(tmp_path / "out").load()
    assert report.total.composed == 1 and t.messages[0].content == "sys openai:tools"
    switch = t.messages[2]
    assert switch.reasoning == "12 * 3 = 36\nLet me check with the tool. Run it." and switch.tool_calls
    text = assistant_text(switch)
    spans = sorted((s for s in t.spans if s.message == 2), key=lambda s: s.start)
    assert spans[0].kind == "context" and text[spans[0].end:].startswith("Let me check")
    assert [s.kind for s in spans[1:]] == ["reason", "act"] and spans[-1].end == len(text)
    assert "42" not in text
