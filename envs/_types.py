"""Data shared by envs, policies and trajectories: tasks, turns, observations, outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

Split = Literal["train", "dev", "test"]
SPLITS: tuple[str, ...] = ("train", "dev", "test")
# Why an observation reports a failure: the tool failed, ran out of time or memory, or the action was malformed.
ErrorKind = Literal["tool_error", "timeout", "out_of_memory", "invalid_action"]


class Task(BaseModel):
    """One task. Its id is stable, so runs can resume and eval sets never leak into training."""

    id: str
    env: str
    split: Split
    prompt: str
    category: str | None = None
    difficulty: int | None = None
    seed: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)  # whatever the verifier needs


class Outcome(BaseModel):
    success: bool = False
    reward: float = 0.0
    final_answer: str | None = None
    detail: str | None = None  # what the verifier saw
    error: str | None = None  # set when the episode ended abnormally


@dataclass
class Observation:
    """What a tool call gives back to the agent."""

    text: str
    done: bool = False
    invalid: bool = False  # the action itself was malformed (unknown tool, bad arguments, parse error)
    outcome: Outcome | None = None
    error_kind: ErrorKind | None = None  # None: the call worked

    def __post_init__(self) -> None:
        if self.invalid and self.error_kind is None:
            self.error_kind = "invalid_action"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class Turn:
    """What a policy says in one step: ReAct text, or native tool calls with reasoning."""

    content: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    latency_s: float = 0.0


@dataclass
class PolicyRequest:
    """Everything a policy may look at to produce its next turn."""

    messages: list[dict[str, Any]]  # OpenAI chat format
    tools: list[Any]  # ToolSpec list
    task: Task
    hints: dict[str, Any] = field(default_factory=dict)  # privileged episode info for scripted experts
    sampling: dict[str, Any] = field(default_factory=dict)
