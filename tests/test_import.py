"""`import`: OpenAI messages JSONL back into a run; round trips through `export --format openai`, metadata,
the common message variants, and bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import yaml
from conftest import cli, one_line_error
from test_export import TOOLS
from test_schema import native_traj, react_traj

from trajdistill.agents._collector import CollectConfig, collect
from trajdistill.trajectories import RunStore, export_run, import_messages
from trajdistill.trajectories._import import NO_VERIFIER


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "math"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` sandbox warns that it is unconfined
        collect(CollectConfig(env="math", teachers=["expert:reasoner", "expert:coder"], out=str(out), tasks=8,
                              split="train", sandbox="none", concurrency=4))
    return out


def _messages(path):
    return [[m.openai() for m in t.messages] for t in RunStore.open(path).load()]


def test_export_then_import_gives_the_same_messages(run, tmp_path):
    export_run(run, "openai", tmp_path / "a.jsonl")
    assert import_messages(tmp_path / "a.jsonl", "math", tmp_path / "back", teacher="traces") == 16
    assert _messages(tmp_path / "back") == _messages(run)
    back = RunStore.open(tmp_path / "back").load()
    assert {t.teacher.spec for t in back} == {"traces"} and {t.env.name for t in back} == {"math"}
    assert all(not t.outcome.success and t.outcome.detail == NO_VERIFIER for t in back)
    # both teachers did each task: same prompt, same task, the second numbered as a further sample
    assert len({t.task_id for t in back}) == 8
    assert len({(t.task_id, t.teacher.sampling.get("sample")) for t in back}) == 16
    export_run(tmp_path / "back", "openai", tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_native_tool_calls_and_tools_survive_the_round_trip(tmp_path):
    with RunStore.create(tmp_path / "run", {"env": "math", "tools": TOOLS}) as store:
        for t in (native_traj("t1"), react_traj("t2")):
            store.append(t)
    export_run(tmp_path / "run", "openai", tmp_path / "a.jsonl")
    import_messages(tmp_path / "a.jsonl", "math", tmp_path / "back")
    assert _messages(tmp_path / "back") == _messages(tmp_path / "run")
    back = RunStore.open(tmp_path / "back")
    assert back.config["tools"] == TOOLS and back.load()[0].messages[2].tool_calls[0].function.name == "calc"
    export_run(tmp_path / "back", "openai", tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_metadata_and_common_message_variants(tmp_path):
    rows = [
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                      {"role": "user", "content": "2*3?"},
                      {"role": "assistant", "content": None, "reasoning_content": "multiply",
                       "tool_calls": [{"id": "c1", "type": "function",
                                       "function": {"name": "calc", "arguments": {"expr": "2*3"}}}]},
                      {"role": "function", "name": "calc", "tool_call_id": "c1", "content": "6"},
                      {"role": "assistant", "content": "6"}],
         "metadata": {"id": "u-1", "task_id": "math-train-00003", "category": "arithmetic", "difficulty": 2,
                      "split": "train", "outcome": {"success": True, "final_answer": "6"}}},
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_messages(tmp_path / "t.jsonl", "math", tmp_path / "run")
    (t,) = RunStore.open(tmp_path / "run").load()
    assert (t.id, t.task_id, t.category, t.difficulty) == ("u-1", "math-train-00003", "arithmetic", 2)
    assert t.split == "train"
    assert t.outcome.success and t.outcome.final_answer == "6"
    assert [m.role for m in t.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert t.messages[0].content == "Be brief." and t.messages[2].content == "" and t.messages[2].reasoning == "multiply"
    assert json.loads(t.messages[2].tool_calls[0].function.arguments) == {"expr": "2*3"}
    assert t.teacher.spec == "import:t" and t.usage.steps == 2


def test_import_cli_writes_a_run(run, tmp_path):
    export_run(run, "openai", tmp_path / "a.jsonl")
    res = cli("import", tmp_path / "a.jsonl", "--env", "math", "--out", tmp_path / "back", "--teacher", "real")
    assert res.returncode == 0, res.stderr
    assert "imported 16 conversations" in res.stdout
    config = yaml.safe_load((tmp_path / "back" / "run.yaml").read_text())
    assert config["command"] == "import" and config["teachers"] == ["real"] and config["env"] == "math"


GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize("lines, fragments", [
    ([GOOD, '{"messages": [', GOOD], ["t.jsonl:2: not valid JSON"]),
    ([GOOD, '{"conversations": []}'], ["t.jsonl:2: expected an object with a non-empty `messages` list"]),
    ([json.dumps({"messages": [{"role": "robot", "content": "x"}]})], ["t.jsonl:1: not a conversation", "role"]),
])
def test_a_corrupt_line_is_one_line_with_its_number_and_nothing_is_written(tmp_path, lines, fragments):
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    one_line_error(cli("import", tmp_path / "t.jsonl", "--env", "math", "--out", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()


def test_a_missing_file_or_an_unknown_env_is_one_line(tmp_path):
    one_line_error(cli("import", tmp_path / "none.jsonl", "--env", "math", "--out", tmp_path / "out"),
                   "none.jsonl does not exist")
    (tmp_path / "t.jsonl").write_text(GOOD + "\n")
    one_line_error(cli("import", tmp_path / "t.jsonl", "--env", "nosuch", "--out", tmp_path / "out"),
                   "unknown env 'nosuch'; known: math, mcp, twx")
    assert not (tmp_path / "out").exists()
