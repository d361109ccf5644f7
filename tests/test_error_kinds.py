"""Error kinds on observations (tool error, timeout, out of memory, invalid action): set where observations are
made, persisted on tool messages, and what the miners read (issue 12, item 6)."""

from __future__ import annotations

import json

from trajdistill.agents._collector import to_trajectory
from trajdistill.agents._loop import ReActLoop
from trajdistill.envs import Turn, make_env
from trajdistill.envs._react_text import format_action, format_final
from trajdistill.envs.sandbox import ExecResult, Limits, get_provider
from trajdistill.skills._mine_tools import trajectory_steps
from trajdistill.trajectories import Message, Trajectory


class Replay:
    """A policy that replays fixed ReAct turns."""

    backend, model, spec, action_format = "replay", "replay", "replay:test", "react"

    def __init__(self, turns: list[str]):
        self.turns = list(turns)

    async def __call__(self, request) -> Turn:
        return Turn(content=self.turns.pop(0))

    def sampling(self) -> dict:
        return {}

    async def close(self) -> None:
        pass


def test_an_exec_result_says_why_it_failed():
    def result(**kw):
        return ExecResult(**{"exit_code": 0, "stdout": "", "stderr": "", "duration_s": 0.1, **kw})

    assert result().error_kind is None
    assert result(exit_code=1).error_kind == "tool_error"
    assert result(exit_code=-9, timed_out=True).error_kind == "timeout"
    assert result(exit_code=-9, killed=True).error_kind == "out_of_memory"


async def test_the_loop_records_each_observations_error_kind_on_its_tool_message():
    env = make_env("math")
    task = env.tasks("train", n=1)[0]
    turns = ["I will just say something.",  # no action: a parse error
             format_action("try a tool", "nope", {}),  # an unknown tool
             format_action("run", "python", {"code": "raise SystemExit(3)"}),
             format_action("run", "python", {"code": "while True: pass"}),
             format_action("run", "python", {"code": "print(6)"}),
             format_final("done", task.data["answer"])]
    policy = Replay(turns)
    async with get_provider("none", Limits(timeout_s=0.5)) as provider, provider.acquire() as sandbox:
        result = await ReActLoop(env, policy, max_steps=10).run(task, sandbox)
    tools = [m for m in result.messages if m["role"] == "tool"]
    assert [m.get("error_kind") for m in tools] == ["invalid_action", "invalid_action", "tool_error", "timeout", None]
    assert result.usage["invalid_actions"] == 2

    traj = to_trajectory(result, task, env, policy, "none", 0)
    line = json.loads(traj.to_json())
    kinds = [m.get("error_kind", "absent") for m in line["messages"] if m["role"] == "tool"]
    assert kinds == ["invalid_action", "invalid_action", "tool_error", "timeout", "absent"]  # written only where set
    assert all("error_kind" not in m for m in line["messages"] if m["role"] != "tool")
    assert Trajectory.from_json(traj.to_json()) == traj


def test_a_message_without_an_error_kind_still_loads():
    old = {"role": "tool", "name": "python", "content": "[timed out]"}
    assert Message.model_validate(old).error_kind is None


def _run_python(outputs: list[tuple[str, str | None]]) -> Trajectory:
    messages = [Message(role="user", content="What is 6?")]
    for text, kind in outputs:
        messages += [Message(role="assistant", content=format_action("run", "python", {"code": "print(6)"})),
                     Message(role="tool", name="python", content=text, error_kind=kind)]
    messages.append(Message(role="assistant", content=format_final("done", "6")))
    return Trajectory.model_validate({"task_id": "t", "env": {"name": "math", "version": "1"},
                                      "teacher": {"spec": "expert:coder", "backend": "expert", "model": "m"},
                                      "messages": [m.model_dump() for m in messages], "outcome": {}})


def test_miners_read_the_error_kind_not_the_output_text():
    steps = trajectory_steps(_run_python([("6", "timeout"), ("the log says [timed out] and Error: x", None)]))
    assert [s.failed for s in steps if s.tool == "python"] == [True, False]


def test_miners_fall_back_to_the_output_text_for_runs_recorded_before_error_kinds():
    steps = trajectory_steps(_run_python([("[timed out]", None), ("6", None)]))
    assert [s.failed for s in steps if s.tool == "python"] == [True, False]
