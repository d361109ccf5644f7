"""Trajectory schema v1: JSON and row round trips, version refusal, the datasets Features mapping.

The builders here (`react_traj`, `native_traj`) are shared by test_store.py and test_export.py.
"""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import BaseModel, ValidationError

from trajdistill.envs import Outcome
from trajdistill.envs._react_text import format_action, format_final
from trajdistill.trajectories import (
    SCHEMA_VERSION,
    EnvRef,
    FunctionCall,
    Message,
    Provenance,
    SchemaVersionError,
    Span,
    Teacher,
    ToolCallMsg,
    Trajectory,
    Usage,
    trajectory_features,
)

SYSTEM = "You are a calculator agent."


def react_traj(task_id: str = "arith-1", teacher: str = "expert:solver", *, success: bool = True,
               difficulty: int | None = 1, category: str | None = "add", id: str | None = None) -> Trajectory:
    """A ReAct-text trajectory: the call lives in the assistant's text."""
    act = format_action("I need to add the numbers.", "calc", {"expr": "1+2"})
    final = format_final("The tool said 3.", "3")
    return Trajectory(
        id=id or f"react-{task_id}-{teacher}",
        task_id=task_id, split="train", category=category, difficulty=difficulty,
        env=EnvRef(name="math", version="1"),
        teacher=Teacher(spec=teacher, backend="expert", model="math/solver"),
        messages=[
            Message(role="system", content=SYSTEM),
            Message(role="user", content="What is 1+2?"),
            Message(role="assistant", content=act),
            Message(role="tool", name="calc", content="3"),
            Message(role="assistant", content=final),
        ],
        spans=[Span(message=2, start=0, end=act.index("\nAction:"), kind="reason"),
               Span(message=2, start=act.index("Action:"), end=len(act), kind="act"),
               Span(message=4, start=final.index("Final"), end=len(final), kind="answer")],
        outcome=Outcome(success=success, reward=float(success), final_answer="3", detail="expected 3"),
        usage=Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120, steps=2, wall_s=0.5),
        provenance=Provenance(sandbox=None, package_version="0.1.0", seed=0),
        created_at=1.0,
    )


def native_traj(task_id: str = "arith-2", teacher: str = "openai:big@http://x/v1", *, success: bool = False,
                id: str | None = None) -> Trajectory:
    """A native tool-call trajectory with `reasoning`."""
    call = ToolCallMsg(id="call_1", function=FunctionCall(name="calc", arguments='{"expr": "2*3"}'))
    return Trajectory(
        id=id or f"native-{task_id}-{teacher}",
        task_id=task_id, split="train", category="mul", difficulty=2,
        env=EnvRef(name="math", version="1"),
        teacher=Teacher(spec=teacher, backend="openai", model="big",
                        sampling={"temperature": 0.7, "stop": ["\n\n"], "seed": 3, "logprobs": True, "x": None}),
        messages=[
            Message(role="system", content=SYSTEM),
            Message(role="user", content="What is 2*3?"),
            Message(role="assistant", content="", reasoning="Multiply with the tool.", tool_calls=[call]),
            Message(role="tool", name="calc", tool_call_id="call_1", content="6"),
            Message(role="assistant", content="6", reasoning="The tool returned 6."),
        ],
        spans=[Span(message=2, start=0, end=23, kind="reason", field="reasoning"),
               Span(message=2, start=0, end=0, kind="act", field="tool_calls")],
        outcome=Outcome(success=success, reward=0.0, final_answer="6", error=None),
        usage=Usage(prompt_tokens=300, completion_tokens=40, total_tokens=340, latency_s=1.5, steps=2),
        provenance=Provenance(sandbox="docker", package_version="0.1.0", composed_from=["runA"], skills=["box"]),
        created_at=2.0,
    )


@pytest.fixture(params=["react", "native"])
def traj(request) -> Trajectory:
    return react_traj() if request.param == "react" else native_traj()


def test_json_round_trip(traj):
    line = traj.to_json()
    assert "\n" not in line
    back = Trajectory.from_json(line)
    assert back == traj
    assert back.messages[2].model_dump() == traj.messages[2].model_dump()


def test_row_round_trip_keeps_mixed_sampling_values():
    t = native_traj()
    row = t.to_row()
    assert isinstance(row["teacher"]["sampling"], str)
    assert json.loads(row["teacher"]["sampling"])["stop"] == ["\n\n"]
    back = Trajectory.from_row(row)
    assert back == t
    assert back.teacher.sampling["logprobs"] is True


@pytest.mark.parametrize("reader", ["from_json", "from_row"])
def test_unknown_schema_version_is_refused(reader):
    row = react_traj().to_row()
    row["schema_version"] = SCHEMA_VERSION + 1
    arg = json.dumps(row) if reader == "from_json" else row
    with pytest.raises(SchemaVersionError, match=rf"schema_version {SCHEMA_VERSION + 1} is not supported"):
        getattr(Trajectory, reader)(arg)


def test_constructing_another_version_fails():
    data = react_traj().model_dump()
    data["schema_version"] = 0
    with pytest.raises(ValidationError, match="schema_version 0 is not supported"):
        Trajectory.model_validate(data)


def test_bad_span_range_is_refused():
    with pytest.raises(ValidationError, match="not a valid range"):
        Span(message=0, start=5, end=2, kind="reason")


def _model_shape(model: type[BaseModel]) -> dict:
    """Field names, recursing into nested models and lists of models."""
    shape = {}
    for name, field in model.model_fields.items():
        inner = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
        inner = [typing.get_args(a)[0] if typing.get_origin(a) is list else a for a in inner]
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        shape[name] = _model_shape(sub) if sub else None
    return shape


def _feature_shape(feature) -> dict | None:
    from datasets import List

    if isinstance(feature, List):
        feature = feature.feature
    if isinstance(feature, dict):
        return {k: _feature_shape(v) for k, v in feature.items()}
    return None


def test_features_map_the_schema_one_to_one():
    assert _feature_shape(dict(trajectory_features())) == _model_shape(Trajectory)


def test_dataset_from_list_with_features():
    from datasets import Dataset

    ds = Dataset.from_list([react_traj().to_row(), native_traj().to_row()], features=trajectory_features())
    assert ds.features == trajectory_features()
    assert len(ds) == 2
    assert ds[1]["messages"][2]["tool_calls"][0]["function"]["name"] == "calc"
    assert ds[0]["messages"][2]["tool_calls"] is None
    assert [Trajectory.from_row(r) for r in ds] == [react_traj(), native_traj()]
