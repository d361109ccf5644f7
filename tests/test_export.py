"""Exports (parquet, openai, sharegpt) read back by their consumers, and the inspect view."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from test_schema import SYSTEM, native_traj, react_traj

from trajdistill.envs._react_text import ParsedAction, ParsedFinal, parse_react
from trajdistill.trajectories import RunError, RunStore, Trajectory, export_run

TOOLS = [{"type": "function", "function": {"name": "calc", "description": "Evaluate an arithmetic expression.",
                                           "parameters": {"type": "object", "properties": {"expr": {"type": "string"}},
                                                          "required": ["expr"]}}}]


@pytest.fixture
def run(tmp_path):
    store = RunStore.create(tmp_path / "run", {"env": "math", "teachers": ["expert:solver"], "tools": TOOLS})
    trajs = [react_traj("t0"), native_traj("t1"), react_traj("t2", success=False, difficulty=3, category=None)]
    for t in trajs:
        store.append(t)
    store.record_error("t3", "expert:solver", "boom", "exception")
    store.close()
    return tmp_path / "run", trajs


def test_parquet_loads_back_with_nested_fields(run, tmp_path):
    from datasets import load_dataset

    path, trajs = run
    out = tmp_path / "out" / "run.parquet"
    assert export_run(path, "parquet", out) == 3
    ds = load_dataset("parquet", data_files=str(out), split="train")
    assert len(ds) == 3
    native = ds[1]
    call = native["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "calc", "arguments": '{"expr": "2*3"}'}
    assert native["messages"][3]["tool_call_id"] == "call_1"
    assert native["spans"][0]["field"] == "reasoning"
    assert native["provenance"]["composed_from"] == ["runA"]
    assert native["outcome"]["final_answer"] == "6"
    assert [Trajectory.from_row(r) for r in ds] == trajs


def test_only_success(run, tmp_path):
    path, _ = run
    assert export_run(path, "parquet", tmp_path / "ok.parquet", only_success=True) == 1


def test_openai_jsonl_is_trl_conversational(run, tmp_path):
    from datasets import load_dataset
    from trl.data_utils import is_conversational

    path, trajs = run
    out = tmp_path / "sft.jsonl"
    assert export_run(path, "openai", out) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 3 and "messages" in ds.column_names
    for row in ds:
        assert is_conversational(row)
        assert all(m["role"] in {"system", "user", "assistant", "tool"} for m in row["messages"])
    react, native = rows[0], rows[1]
    assert "tools" not in react  # the ReAct prompt lists the tools already
    assert native["tools"] == TOOLS
    calls = native["messages"][2]["tool_calls"]
    assert calls[0]["type"] == "function" and json.loads(calls[0]["function"]["arguments"]) == {"expr": "2*3"}
    assert native["messages"][2]["reasoning"] == "Multiply with the tool."
    assert native["messages"][3] == {"role": "tool", "content": "6", "tool_call_id": "call_1", "name": "calc"}
    assert react["messages"][3] == {"role": "tool", "content": "3", "name": "calc"}
    assert react["messages"][2]["content"] == trajs[0].messages[2].content


def test_sharegpt_mapping(run, tmp_path):
    from datasets import load_dataset

    path, _ = run
    out = tmp_path / "sharegpt.jsonl"
    assert export_run(path, "sharegpt", out) == 3
    ds = load_dataset("json", data_files=str(out), split="train")
    react, native = ds[0], ds[1]
    for row in (react, native):
        assert row["system"] == SYSTEM
        assert [c["from"] for c in row["conversations"]] == ["human", "gpt", "observation", "gpt"]
        assert [c["loss"] for c in row["conversations"]] == [False, True, False, True]
    assert react["conversations"][1]["value"].startswith("Thought: I need to add")
    act = parse_react(native["conversations"][1]["value"])
    assert isinstance(act, ParsedAction)
    assert (act.thought, act.tool, act.arguments) == ("Multiply with the tool.", "calc", {"expr": "2*3"})
    final = parse_react(native["conversations"][3]["value"])
    assert isinstance(final, ParsedFinal) and final.answer == "6" and final.thought == "The tool returned 6."


def test_sharegpt_merges_observations_of_a_multi_call_turn(tmp_path):
    from trajdistill.trajectories import FunctionCall, Message, ToolCallMsg

    from trajdistill.trajectories._export import sharegpt_row

    t = native_traj()
    calls = [ToolCallMsg(id=f"c{i}", function=FunctionCall(name="calc", arguments=f'{{"expr": "{i}"}}'))
             for i in range(2)]
    t.messages[2:4] = [Message(role="assistant", content="two at once", reasoning="Both.", tool_calls=calls),
                       Message(role="tool", name="calc", tool_call_id="c0", content="0"),
                       Message(role="tool", name="calc", tool_call_id="c1", content="1")]
    conv = sharegpt_row(t)["conversations"]
    assert [c["from"] for c in conv] == ["human", "gpt", "observation", "gpt"]
    assert conv[1]["value"].count("Action:") == 2 and conv[1]["value"].startswith("Thought: Both.\ntwo at once\nAction: calc")
    assert conv[2]["value"] == "0\n1"


def test_unknown_format_lists_the_formats(run, tmp_path):
    path, _ = run
    with pytest.raises(ValueError, match="unknown export format 'csv'; known: openai, parquet, sharegpt"):
        export_run(path, "csv", tmp_path / "x.csv")


def test_export_cmd_reports_rows(run, tmp_path):
    from trajdistill._export_cmd import export_cmd

    path, _ = run
    console = Console(record=True, width=200)
    assert export_cmd(console, path, "sharegpt", tmp_path / "s.jsonl") == 3
    assert "wrote 3 rows (sharegpt)" in console.export_text()


# ---- inspect ---------------------------------------------------------------------------------------


def test_inspect_tables(run):
    from trajdistill._inspect_cmd import inspect_run

    path, _ = run
    console = Console(record=True, width=200)
    inspect_run(console, path, None)
    text = console.export_text()
    assert "per teacher" in text and "success per difficulty" in text and "success per category" in text
    solver = next(line for line in text.splitlines() if "expert:solver" in line and "│" in line)
    cells = [c.strip() for c in solver.split("│") if c.strip()]
    assert cells == ["expert:solver", "2", "50.0%", "2.0", "120", "1"]


def test_inspect_show_renders_turns(run):
    from trajdistill._inspect_cmd import inspect_run

    path, trajs = run
    console = Console(record=True, width=200)
    inspect_run(console, path, trajs[1].id[:12])  # a prefix is enough
    text = console.export_text()
    for expected in ("reasoning: Multiply with the tool.", "tool call calc", "observation: calc",
                     "failure", "final answer: 6"):
        assert expected in text
    console = Console(record=True, width=200)
    inspect_run(console, path, trajs[0].id)
    text = console.export_text()
    assert "Action Input:" in text and "Final Answer: 3" in text and "success" in text


def test_inspect_unknown_id_lists_known_ids(run):
    from trajdistill._inspect_cmd import inspect_run

    path, trajs = run
    with pytest.raises(RunError, match=f"no trajectory 'nope' in this run; known ids include: {trajs[0].id}"):
        inspect_run(Console(), path, "nope")
    with pytest.raises(RunError, match="matches 2 trajectories"):
        inspect_run(Console(), path, "react-")
