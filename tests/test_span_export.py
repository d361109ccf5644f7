"""Spans travel with the data: stored on collect, carried by every export format, filled for old runs."""

from __future__ import annotations

import json

import pytest
from conftest import collect_math
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_schema import native_traj, react_traj
from test_spans import make_traj, native_turn

from trajdistill.envs._react_text import parse_react
from trajdistill.trajectories import (Message, RunStore, Span, Trajectory, assistant_text, export_run,
                                      import_messages, segment, segment_as_env)
from trajdistill.trajectories._spans import field_spans, spans_from_fields


def _fresh(traj: Trajectory) -> list[Span]:
    """What the env's segmenter says of the trajectory, ignoring anything stored."""
    return segment_as_env(traj.model_copy(update={"spans": []}))


def _shard_rows(run) -> list[dict]:
    return [json.loads(line) for p in sorted(run.glob("trajectories-*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return collect_math(tmp_path_factory.mktemp("runs") / "math", ["expert:coder", "expert:reasoner"], 4)


@pytest.fixture
def old_run(tmp_path):
    """A run as trajdistill wrote it before spans were stored: lines with `spans: []`, ReAct and native."""
    path = tmp_path / "old"
    RunStore.create(path, {"env": "math", "teachers": ["expert:solver"]}).close()
    trajs = [t.model_copy(update={"spans": []}) for t in (react_traj("t0"), native_traj("t1"))]
    (path / "trajectories-0of1-000.jsonl").write_text("".join(t.to_json() + "\n" for t in trajs))
    return path, trajs


def test_a_collected_run_has_the_segmenters_spans_on_disk(run):
    rows = _shard_rows(run)
    assert len(rows) == 8
    for row, traj in zip(rows, RunStore.open(run).load()):
        assert [Span.model_validate(s) for s in row["spans"]] == _fresh(traj)
        assert "answer" in {s["kind"] for s in row["spans"]}
    assert {s["kind"] for row in rows for s in row["spans"]} >= {"reason", "act", "answer"}  # the coder calls tools


@pytest.mark.parametrize("which", ["collected", "old"])
def test_parquet_rows_carry_the_spans(run, old_run, tmp_path, which):
    from datasets import load_dataset

    path, trajs = (run, RunStore.open(run).load()) if which == "collected" else old_run
    export_run(path, "parquet", tmp_path / "x.parquet")
    ds = load_dataset("parquet", data_files=str(tmp_path / "x.parquet"), split="train")
    assert [[Span.model_validate(s) for s in row["spans"]] for row in ds] == [_fresh(t) for t in trajs]


def test_openai_messages_carry_field_offsets(old_run, tmp_path):
    path, (react, native) = old_run
    export_run(path, "openai", tmp_path / "a.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    # ReAct text: offsets into the content, exactly the segmenter's spans
    for i, m in enumerate(rows[0]["messages"]):
        want = [{"kind": s.kind, "field": "content", "start": s.start, "end": s.end}
                for s in _fresh(react) if s.message == i]
        assert m.get("spans", []) == want
        assert ("spans" in m) == (m["role"] == "assistant")
    # native: the reasoning by its own offsets, each call whole
    call_turn, answer_turn = rows[1]["messages"][2], rows[1]["messages"][4]
    reasoning = native.messages[2].reasoning
    assert call_turn["spans"] == [
        {"kind": "reason", "field": "reasoning", "start": 0, "end": len(reasoning)},
        {"kind": "act", "field": "tool_calls", "index": 0, "start": 0,
         "end": len(native.messages[2].tool_calls[0].function.arguments)}]
    assert answer_turn["spans"] == [
        {"kind": "reason", "field": "reasoning", "start": 0, "end": len(native.messages[4].reasoning)},
        {"kind": "answer", "field": "content", "start": 0, "end": len(native.messages[4].content)}]


def test_import_reads_the_spans_back_as_the_segmenter_wrote_them(old_run, tmp_path):
    path, trajs = old_run
    export_run(path, "openai", tmp_path / "a.jsonl")
    import_messages(tmp_path / "a.jsonl", "math", tmp_path / "back")
    back = RunStore.open(tmp_path / "back").load()
    assert [t.spans for t in back] == [_fresh(t) for t in trajs]


def test_an_export_without_spans_imports_as_the_same_traces(old_run, tmp_path):
    """A messages file written before exports carried spans names its conversations as a new one does."""
    path, trajs = old_run
    export_run(path, "openai", tmp_path / "new.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "new.jsonl").read_text().splitlines()]
    for row in rows:
        for m in row["messages"]:
            m.pop("spans", None)
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for name in ("new", "old"):
        import_messages(tmp_path / f"{name}.jsonl", "math", tmp_path / f"back-{name}", teacher="t")
        runs[name] = RunStore.open(tmp_path / f"back-{name}").load()
    assert [t.id for t in runs["new"]] == [t.id for t in runs["old"]]
    assert [t.spans for t in runs["old"]] == [t.spans for t in runs["new"]] == [_fresh(t) for t in trajs]


def test_import_of_a_marked_switch_turn_keeps_its_context(tmp_path):
    """A stored context range inside a native turn (the DualDistill switch) survives export and import."""
    t = native_traj("t1")
    lead = len("<think>\n") + 9
    marks = [Span(message=2, start=0, end=lead, kind="context"),
             Span(message=2, start=lead, end=lead + 1, kind="reason")]
    t = t.model_copy(update={"spans": marks})  # a context range inside the turn, as `compose` marks the switch
    with RunStore.create(tmp_path / "run", {"env": "math"}) as store:
        store.append(t.model_copy(update={"spans": segment_as_env(t)}))
    (stored,) = RunStore.open(tmp_path / "run").load()
    assert stored.spans[0] == Span(message=2, start=0, end=lead, kind="context")
    export_run(tmp_path / "run", "openai", tmp_path / "a.jsonl")
    import_messages(tmp_path / "a.jsonl", "math", tmp_path / "back")
    assert RunStore.open(tmp_path / "back").load()[0].spans == stored.spans


def test_sharegpt_turns_carry_offsets_into_their_value(run, old_run, tmp_path):
    path, (react, _) = old_run
    export_run(path, "sharegpt", tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    gpt = [c for c in rows[0]["conversations"] if c["from"] == "gpt"]
    assert [c["spans"] for c in gpt] == [[{"kind": s.kind, "start": s.start, "end": s.end} for s in _fresh(react)
                                          if s.message == i] for i in (2, 4)]
    assert all(c["spans"] == [] for c in rows[0]["conversations"] if c["from"] != "gpt")
    # a native turn rendered as ReAct text: its spans tile the rendered value
    call, final = [c for c in rows[1]["conversations"] if c["from"] == "gpt"]
    assert [s["kind"] for s in call["spans"]] == ["reason", "act"] and call["spans"][-1]["end"] == len(call["value"])
    act = call["spans"][1]
    assert call["value"][act["start"]:].startswith("Action: calc") and parse_react(call["value"]).tool == "calc"
    assert [s["kind"] for s in final["spans"]] == ["reason", "answer"]
    # a collected run: every gpt turn's spans cover its value
    export_run(run, "sharegpt", tmp_path / "c.jsonl")
    for row in map(json.loads, (tmp_path / "c.jsonl").read_text().splitlines()):
        for c in (c for c in row["conversations"] if c["from"] == "gpt"):
            assert c["spans"][0]["start"] == 0 and c["spans"][-1]["end"] == len(c["value"])


def test_store_keeps_spans_it_is_given_and_fills_missing_ones(tmp_path):
    given = react_traj("t0")
    bare = native_traj("t1").model_copy(update={"spans": []})
    with RunStore.create(tmp_path / "run", {"env": "math"}) as store:
        store.append(given)
        store.append(bare)
    kept, filled = RunStore.open(tmp_path / "run").load()
    assert kept.spans == given.spans
    assert filled.spans == _fresh(bare)
    text = assistant_text(filled.messages[2])
    assert [text[s.start:s.end].startswith(p) for s, p in zip(filled.spans, ("<think>", "<tool_call>"))] == [True, True]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(native_turn(), min_size=1, max_size=3))
def test_property_field_offsets_point_into_the_fields_and_read_back_exactly(turns):
    messages = [m for t in turns for m in (t, Message(role="tool", content="x", name="python", tool_call_id="call_0"))]
    traj = make_traj(messages)
    spans = segment(traj)
    for i, m in enumerate(traj.messages):
        if m.role != "assistant":
            continue
        mine = [s for s in spans if s.message == i]
        entries = field_spans(m, mine)
        for e in entries:
            text = m.tool_calls[e["index"]].function.arguments if e["field"] == "tool_calls" else getattr(m, e["field"])
            assert 0 <= e["start"] < e["end"] <= len(text)
        covered = {e["field"] for e in entries}
        fields = {f for f in ("reasoning", "content") if getattr(m, f)}
        assert covered == fields | ({"tool_calls"} if m.tool_calls else set())
        assert spans_from_fields(m, i, entries) == mine
