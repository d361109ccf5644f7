"""Trajectory schema v1 (pydantic). Maps 1:1 to a `datasets.Features` description."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, JsonValue, field_validator, model_validator

from trajdistill.envs import Outcome, TrajdistillError
from trajdistill.envs._types import ErrorKind

SCHEMA_VERSION = 1
SpanKind = Literal["reason", "act", "answer", "context"]


class SchemaVersionError(TrajdistillError, ValueError):
    """A trajectory was written by a schema version this package does not read."""


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON string, as in the OpenAI API


class ToolCallMsg(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message in OpenAI format; assistant turns may carry `reasoning` and `tool_calls`."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCallMsg] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    error_kind: ErrorKind | None = None  # on a tool message: why the call failed (absent in older runs)

    def openai(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            d["reasoning"] = self.reasoning
        if self.tool_calls:
            d["tool_calls"] = [tc.model_dump() for tc in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        return d


class Span(BaseModel):
    """A char range of one message's text (`field` says which: content or reasoning)."""

    message: int
    start: int
    end: int
    kind: SpanKind
    field: Literal["content", "reasoning", "tool_calls"] = "content"

    @model_validator(mode="after")
    def _ordered(self) -> "Span":
        if not 0 <= self.start <= self.end:
            raise ValueError(f"span [{self.start}, {self.end}) is not a valid range")
        return self


class Teacher(BaseModel):
    spec: str
    backend: str
    model: str
    # Any JSON value: sampling params include lists (`stop`) and bools. Stored as a JSON string in
    # `trajectory_features()` because its value types are mixed.
    sampling: dict[str, JsonValue] = Field(default_factory=dict)


class EnvRef(BaseModel):
    name: str
    version: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_s: float = 0.0  # time spent waiting on the policy
    wall_s: float = 0.0  # the whole episode
    steps: int = 0
    invalid_actions: int = 0


class Provenance(BaseModel):
    sandbox: str | None = None
    package_version: str = ""
    seed: int | None = None
    composed_from: list[str] = Field(default_factory=list)
    strategy: str | None = None
    skills: list[str] = Field(default_factory=list)


class Trajectory(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    task_id: str
    split: str | None = None
    category: str | None = None
    difficulty: int | None = None
    env: EnvRef
    teacher: Teacher
    messages: list[Message]
    spans: list[Span] = Field(default_factory=list)
    outcome: Outcome
    usage: Usage = Field(default_factory=Usage)
    provenance: Provenance = Field(default_factory=Provenance)
    created_at: float = 0.0

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        _check_version(v)
        return v

    @property
    def key(self) -> tuple[str, str]:
        """The (task, teacher) pair a collection run finishes once."""
        return (self.task_id, self.teacher.spec)

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        for m in data["messages"]:  # written only where set, so lines without failures read as before
            if m["error_kind"] is None:
                del m["error_kind"]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Trajectory":
        """Parse one JSONL line; raises SchemaVersionError (not a ValidationError) for another version."""
        data = json.loads(line)
        if isinstance(data, dict):
            _check_version(data.get("schema_version", SCHEMA_VERSION))
        return cls.model_validate(data)

    def to_row(self) -> dict[str, Any]:
        """A flat-typed row for `datasets` (see `trajectory_features()`): `teacher.sampling` is a JSON string."""
        row = self.model_dump(mode="json")
        row["teacher"]["sampling"] = json.dumps(row["teacher"]["sampling"], sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Trajectory":
        """Inverse of `to_row`, e.g. for rows read back from the parquet export."""
        _check_version(row.get("schema_version", SCHEMA_VERSION))
        data = dict(row, teacher=dict(row["teacher"]))
        sampling = data["teacher"].get("sampling")
        data["teacher"]["sampling"] = json.loads(sampling) if isinstance(sampling, str) else (sampling or {})
        return cls.model_validate(data)


def _check_version(version: Any) -> None:
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"trajectory schema_version {version} is not supported (this trajdistill reads {SCHEMA_VERSION}); "
            "upgrade trajdistill or re-export the run")
