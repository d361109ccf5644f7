"""Span segmentation: ReAct text and native tool calls, env rules, context prefixes, property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajdistill.envs import Outcome
from trajdistill.trajectories import (EnvRef, FunctionCall, Message, SegmentRules, Span, Teacher, ToolCallMsg,
                                      Trajectory, assistant_text, segment, segment_run)
from trajdistill.trajectories._spans import react_spans

# ---- builders -----------------------------------------------------------------------------------


def make_traj(messages: list[Message], spans: list[Span] | None = None) -> Trajectory:
    return Trajectory(task_id="t-0", env=EnvRef(name="math", version="1"),
                      teacher=Teacher(spec="expert:x", backend="expert", model="x"),
                      messages=[Message(role="system", content="Solve it."), Message(role="user", content="1+1?"),
                                *messages],
                      spans=spans or [], outcome=Outcome(success=True, reward=1.0))


def call(name: str, args: dict, i: int = 0) -> ToolCallMsg:
    return ToolCallMsg(id=f"call_{i}", function=FunctionCall(name=name, arguments=json.dumps(args)))


def by_kind(traj: Trajectory, spans: list[Span]) -> list[tuple[str, str]]:
    return [(s.kind, assistant_text(traj.messages[s.message])[s.start:s.end]) for s in spans]


def check_invariants(traj: Trajectory, spans: list[Span]) -> None:
    """Sorted, non-overlapping, assistant-only, and every assistant character covered exactly once."""
    assert spans == sorted(spans, key=lambda s: (s.message, s.start))
    for s in spans:
        assert traj.messages[s.message].role == "assistant" and s.field == "content" and s.end > s.start
    for i, m in enumerate(traj.messages):
        if m.role != "assistant":
            continue
        covered = [0] * len(assistant_text(m))
        for s in (s for s in spans if s.message == i):
            for c in range(s.start, s.end):
                covered[c] += 1
        assert covered == [1] * len(covered)


# ---- ReAct text ---------------------------------------------------------------------------------


def test_react_action_turn():
    text = 'Thought: add them\nAction: python\nAction Input: {"code": "print(1+1)"}\n'
    traj = make_traj([Message(role="assistant", content=text)])
    assert by_kind(traj, segment(traj)) == [
        ("reason", "Thought: add them\n"), ("act", 'Action: python\nAction Input: {"code": "print(1+1)"}\n')]


def test_react_final_answer_and_hallucinated_observation_is_context():
    text = "Thought: easy\nFinal Answer: 2\nObservation: the user is happy\nThought: done"
    traj = make_traj([Message(role="assistant", content=text)])
    assert by_kind(traj, segment(traj)) == [
        ("reason", "Thought: easy\n"), ("answer", "Final Answer: 2\n"),
        ("context", "Observation: the user is happy\nThought: done")]


def test_text_after_the_action_json_is_context():
    text = 'Thought: x\nAction: python\nAction Input: {"code": "1"}  \nthe result will be 1\nAction: python'
    kinds = [(k, text[s:e]) for k, s, e in react_spans(text)]
    assert kinds == [("reason", "Thought: x\n"), ("act", 'Action: python\nAction Input: {"code": "1"}  \n'),
                     ("context", "the result will be 1\nAction: python")]


def test_fenced_and_malformed_action_input():
    fenced = 'Action: python\nAction Input: ```json\n{"code": "1"}\n```\nmore'
    assert [(k, fenced[s:e]) for k, s, e in react_spans(fenced)][-1] == ("context", "more")
    broken = 'Thought: t\nAction: python\nAction Input: {"code": \nThought: oops'
    assert [k for k, _, _ in react_spans(broken)] == ["reason", "act", "context"]


def test_stray_text_and_marker_rules():
    text = "Let me think.\nThought: x\nAction: f\nAction Input: {}"
    assert [k for k, _, _ in react_spans(text)] == ["reason", "act"]
    stray_context = SegmentRules(stray="context")
    assert [(k, text[s:e]) for k, s, e in react_spans(text, stray_context)][:2] == [
        ("context", "Let me think.\n"), ("reason", "Thought: x\n")]
    reasoning_only = SegmentRules(thought_markers=("Reasoning:",), stray="context")
    text2 = "Reasoning: a\nThought: b\nFinal Answer: 3"
    # with only `Reasoning:` a marker, the `Thought:` line is part of the reasoning section
    assert [(k, text2[s:e]) for k, s, e in react_spans(text2, reasoning_only)] == [
        ("reason", "Reasoning: a\nThought: b\n"), ("answer", "Final Answer: 3")]
    text3 = "Thought: b\nFinal Answer: 3"
    assert [k for k, _, _ in react_spans(text3, reasoning_only)] == ["context", "answer"]


def test_custom_markers_and_space_before_colon():
    rules = SegmentRules(thought_markers=("Think:",), action_markers=("Act:",), input_markers=("Args:",),
                         answer_markers=("Answer:",))
    text = 'Think: a\nAct: go\nArgs: {"to": "north"}\nObservation: dark'
    assert [k for k, _, _ in react_spans(text, rules)] == ["reason", "act", "context"]
    assert [k for k, _, _ in react_spans("Thought : a\nFinal Answer : 1")] == ["reason", "answer"]


def test_text_without_markers_is_stray():
    assert react_spans("just words") == [("reason", 0, 10)]
    assert react_spans("just words", SegmentRules(stray="context")) == [("context", 0, 10)]
    assert react_spans("") == []


# ---- native tool calls --------------------------------------------------------------------------


def test_native_turns():
    first = Message(role="assistant", content="Let me compute.", reasoning="1+1 needs python",
                    tool_calls=[call("python", {"code": "print(1+1)"}), call("python", {"code": "print(2)"}, 1)])
    final = Message(role="assistant", content="2")
    traj = make_traj([first, Message(role="tool", content="2", tool_call_id="call_0", name="python"),
                      Message(role="tool", content="2", tool_call_id="call_1", name="python"), final])
    text = assistant_text(first)
    assert text == ("<think>\n1+1 needs python\n</think>\nLet me compute.\n"
                    '<tool_call>\n{"name": "python", "arguments": {"code": "print(1+1)"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "python", "arguments": {"code": "print(2)"}}\n</tool_call>')
    spans = segment(traj)
    check_invariants(traj, spans)
    assert [k for k, _ in by_kind(traj, spans)] == ["reason", "act", "answer"]
    assert by_kind(traj, spans)[1][1].startswith("<tool_call>") and by_kind(traj, spans)[2] == ("answer", "2")


def test_native_final_answer_tool_and_bad_arguments():
    msg = Message(role="assistant", content="", reasoning="",
                  tool_calls=[call("python", {}), ToolCallMsg(id="c", function=FunctionCall(
                      name="final_answer", arguments='{"answer": '))])
    traj = make_traj([msg])
    assert assistant_text(msg).endswith('"arguments": "{\\"answer\\": "}\n</tool_call>')
    spans = segment(traj)
    check_invariants(traj, spans)
    assert [s.kind for s in spans] == ["act", "answer"]


def test_a_plain_turn_in_a_native_trajectory_is_the_answer_and_rules_can_force_the_format():
    traj = make_traj([Message(role="assistant", content="", tool_calls=[call("python", {})]),
                      Message(role="tool", content="ok", tool_call_id="call_0"),
                      Message(role="assistant", content="Thought: x\nFinal Answer: 4")])
    assert segment(traj)[-1].kind == "answer" and segment(traj)[-1].end == len("Thought: x\nFinal Answer: 4")
    forced = segment(traj, SegmentRules(action_format="react"))
    assert [s.kind for s in forced if s.message == 4] == ["reason", "answer"]


# ---- context prefixes and segment_run ------------------------------------------------------------


def test_context_turns_stay_context_and_stale_spans_are_replaced():
    failed = Message(role="assistant", content="Thought: by hand\nFinal Answer: 5")
    switch = Message(role="assistant", content="Wait, let me check with the tool.\nAction: python\nAction Input: {}")
    spans = [Span(message=2, start=0, end=3, kind="context"), Span(message=3, start=0, end=5, kind="answer"),
             Span(message=1, start=0, end=2, kind="context")]
    traj = make_traj([failed, Message(role="user", content="Observation: wrong"), switch], spans=spans)
    out = segment(traj)
    check_invariants(traj, out)
    assert [(s.message, s.kind) for s in out] == [(2, "context"), (4, "reason"), (4, "act")]
    assert out[0].end == len(failed.content)


def test_a_context_range_inside_a_turn_is_kept():
    # the composer's switch turn: the failed teacher's last thought is context, the rest is trained
    text = "Thought: by hand it is 5\nWait, let me verify. Thought: use python\nAction: python\nAction Input: {}"
    cut = text.index("Wait")
    stored = [Span(message=2, start=0, end=cut, kind="context"), Span(message=2, start=cut, end=len(text),
                                                                     kind="reason"),
              Span(message=2, start=3, end=8, kind="context")]  # overlapping stored ranges are fine
    traj = make_traj([Message(role="assistant", content=text)], spans=stored)
    out = segment(traj)
    check_invariants(traj, out)
    assert by_kind(traj, out) == [("context", text[:cut]), ("reason", "Wait, let me verify. Thought: use python\n"),
                                  ("act", "Action: python\nAction Input: {}")]
    assert segment(traj.model_copy(update={"spans": out})) == out  # segmenting again changes nothing


def test_segment_run_returns_filled_copies():
    traj = make_traj([Message(role="assistant", content="Thought: a\nFinal Answer: 1")])
    (filled,) = segment_run([traj])
    assert traj.spans == [] and [s.kind for s in filled.spans] == ["reason", "answer"]
    assert filled.id == traj.id


# ---- property tests ------------------------------------------------------------------------------

# no newlines inside a section, so a section never starts a marker line by accident
line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30)
MARKER_HEADS = ("Thought", "Reasoning", "Action", "Final Answer", "Observation")
json_args = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), line, st.booleans()), max_size=3)


@st.composite
def react_turn(draw) -> tuple[str, list[tuple[str, str]]]:
    """A ReAct text turn and the (kind, text) pieces `segment` must find in it."""
    pieces: list[tuple[str, str]] = []
    stray = draw(line)
    if stray and not stray.startswith(MARKER_HEADS):
        pieces.append(("reason", stray + "\n"))
    for _ in range(draw(st.integers(0, 2))):
        pieces.append(("reason", f"{draw(st.sampled_from(['Thought:', 'Reasoning:']))} {draw(line)}\n"))
    if draw(st.booleans()):
        args = json.dumps(draw(json_args), ensure_ascii=False)
        pieces.append(("act", f"Action: {draw(st.sampled_from(['python', 'search']))}\nAction Input: {args}\n"))
    else:
        pieces.append(("answer", f"Final Answer: {draw(line)}\n"))
    if draw(st.booleans()):
        pieces.append(("context", f"Observation: {draw(line)}"))
    merged: list[tuple[str, str]] = []
    for kind, text in pieces:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return "".join(t for _, t in merged), merged


@st.composite
def native_turn(draw) -> Message:
    calls = [call(draw(st.sampled_from(["python", "search", "final_answer"])), draw(json_args), i)
             for i in range(draw(st.integers(0, 3)))]
    return Message(role="assistant", content=draw(st.text(max_size=40)),
                   reasoning=draw(st.one_of(st.none(), st.just(""), st.text(max_size=40))), tool_calls=calls or None)


@st.composite
def trajectories(draw) -> tuple[Trajectory, dict[int, list[tuple[str, str]]]]:
    """A random trajectory in either format, maybe with a context prefix, and the expected ReAct pieces."""
    native = draw(st.booleans())
    messages: list[Message] = []
    expected: dict[int, list[tuple[str, str]]] = {}
    for turn in range(draw(st.integers(1, 4))):
        if native:
            msg = draw(native_turn())
        else:
            text, pieces = draw(react_turn())
            msg = Message(role="assistant", content=text)
            expected[2 + len(messages)] = pieces
        messages.append(msg)
        messages.append(Message(role="tool", content=draw(st.text(max_size=20)), name="python",
                                tool_call_id="call_0" if native else None))
    n_context = draw(st.integers(0, len(messages) // 2))
    spans = [Span(message=2 + 2 * k, start=0, end=1, kind="context") for k in range(n_context)]
    if n_context < len(messages) // 2 and draw(st.booleans()):  # a switch turn: context, then trained text
        i = 2 + 2 * n_context
        n = len(assistant_text(messages[i - 2]))
        cut = draw(st.integers(0, n))
        spans += [Span(message=i, start=0, end=cut, kind="context"), Span(message=i, start=cut, end=n, kind="reason")]
        expected.pop(i, None)
    return make_traj(messages, spans), expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories())
def test_property_spans_tile_assistant_text(case):
    traj, expected = case
    spans = segment(traj)
    check_invariants(traj, spans)
    partial = {s.message for s in traj.spans if s.kind != "context"}  # the switch turn
    whole = {s.message for s in traj.spans} - partial
    for i, m in enumerate(traj.messages):
        mine = [s for s in spans if s.message == i]
        if i in whole:
            assert [s.kind for s in mine] == (["context"] if assistant_text(m) else [])
        elif i in expected:
            assert by_kind(traj, mine) == expected[i]
    for stored in (s for s in traj.spans if s.kind == "context" and s.message in partial):
        assert all(s.kind == "context" for s in spans if s.message == stored.message and s.start < stored.end)


@settings(max_examples=150, deadline=None)
@given(native_turn())
def test_property_native_kinds(msg):
    traj = make_traj([msg])
    spans = segment(traj, SegmentRules(action_format="tools"))  # a lone plain turn looks like ReAct text
    check_invariants(traj, spans)
    texts = by_kind(traj, spans)
    n_calls = len(msg.tool_calls or [])
    assert sum(t.count("<tool_call>\n") for k, t in texts if k in ("act", "answer")) >= n_calls
    if msg.reasoning:
        assert texts[0] == ("reason", texts[0][1]) and texts[0][1].startswith("<think>\n" + msg.reasoning)
    if not n_calls and msg.content:
        assert texts[-1][0] == "answer" and texts[-1][1].endswith(msg.content)


# ---- real expert trajectories --------------------------------------------------------------------


@pytest.fixture(scope="module")
def expert_store(tmp_path_factory):
    from trajdistill.agents import CollectConfig, collect

    out = tmp_path_factory.mktemp("spans") / "run"
    with pytest.warns(Warning):  # the `none` sandbox warns that it does not confine anything
        store, _ = collect(CollectConfig(env="math", teachers=["expert:coder", "expert:reasoner"], tasks=4,
                                         out=str(out), sandbox="none", concurrency=2))
    return store


@pytest.fixture(scope="module")
def expert_run(expert_store):
    return expert_store.load()


def test_segment_real_expert_trajectories(expert_run):
    assert {t.teacher.spec for t in expert_run} == {"expert:coder", "expert:reasoner"}
    for traj in segment_run(expert_run):
        check_invariants(traj, traj.spans)
        kinds = [s.kind for s in traj.spans]
        assert kinds[-1] == "answer" and "context" not in kinds
        last = traj.spans[-1]
        answer = assistant_text(traj.messages[last.message])[last.start:last.end]
        assert answer.startswith("Final Answer:") and answer.split(":", 1)[1].strip() == traj.outcome.final_answer
        if traj.teacher.spec == "expert:coder":
            acts = [s for s in traj.spans if s.kind == "act"]
            assert acts and all(assistant_text(traj.messages[s.message])[s.start:s.end].startswith("Action: ")
                                for s in acts)


def test_inspect_spans_colours_each_kind(expert_store, expert_run):
    from rich.console import Console

    from trajdistill._inspect_cmd import SPAN_STYLE, inspect_run, spans_text

    coder = next(t for t in expert_run if t.teacher.spec == "expert:coder")
    console = Console(record=True, width=200, color_system="standard", force_terminal=True)
    inspect_run(console, expert_store.path, coder.id, spans=True)
    ansi = console.export_text(styles=True)
    assert len(set(SPAN_STYLE.values())) == 4  # a distinct style per kind
    # reason cyan, act bold magenta, answer bold green; the prompt is dim
    assert "\x1b[36mThought: Plan:" in ansi and "\x1b[1;35mAction: python" in ansi
    assert "\x1b[1;32mFinal Answer: " in ansi and "\x1b[2mSolve the math problem" in ansi
    context = spans_text("old try", [Span(message=2, start=0, end=7, kind="context")])
    assert [str(x.style) for x in context.spans] == [SPAN_STYLE["context"]]
    with pytest.raises(ValueError, match="--spans needs --show"):
        inspect_run(Console(), expert_store.path, None, spans=True)
