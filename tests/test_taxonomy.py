"""The failure taxonomy, on episodes of the real ReAct loop in the real `math` env (scripted student turns)."""

from __future__ import annotations

import warnings

import pytest

from trajdistill.agents._collector import to_trajectory
from trajdistill.agents import ReActLoop
from trajdistill.envs import Turn, make_env
from trajdistill.envs._react_text import format_action, format_final
from trajdistill.envs.sandbox import Limits, get_provider
from trajdistill.envs.sandbox._host import UnsandboxedWarning
from trajdistill.trajectories import FAILURE_KINDS, failure_counts, failure_kind

pytestmark = pytest.mark.filterwarnings("ignore::trajdistill.envs.sandbox._host.UnsandboxedWarning")


class Scripted:
    backend, model, spec, action_format = "scripted", "scripted", "scripted:test", "react"

    def __init__(self, turns):
        self.turns = list(turns)

    async def __call__(self, request):
        return Turn(content=self.turns.pop(0) if self.turns else "I am not sure.")

    def sampling(self):
        return {}

    async def close(self):
        pass


@pytest.fixture(scope="module")
def task():
    env = make_env("math")
    return next(t for t in env.tasks("test", n=40) if t.data["kind"] == "powmod")  # "... 71^9 mod 69 ..."


async def episode(task, turns, max_steps=3):
    env = make_env("math")
    policy = Scripted(turns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsandboxedWarning)
        async with get_provider("none", Limits(timeout_s=5)) as provider, provider.acquire() as sandbox:
            result = await ReActLoop(env, policy, max_steps=max_steps).run(task, sandbox)
    return to_trajectory(result, task, env, policy, "none", 0)


def program(task, a=None):
    p = task.data["params"]
    return f"print(pow({a or p['a']}, {p['b']}, {p['m']}))"


CASES = {
    None: lambda t: [format_action("run it", "python", {"code": program(t)}), format_final("ok", t.data["answer"])],
    "bad_format": lambda t: ["The answer is probably small.", "Action: python\nAction Input: not json"],
    "tool_misuse": lambda t: [format_action("run it", "calculator", {"x": "1+1"}), "no idea"],
    "numbers_copied_wrong": lambda t: [format_action("run it", "python", {"code": program(t, a=987654)}),
                                       format_final("ok", "3")],
    "wrong_program": lambda t: [format_action("run it", "python", {"code": program(t).replace("pow(", "max(")}),
                                format_final("ok", "0")],
    "wrong_final_answer": lambda t: [format_action("run it", "python", {"code": program(t)}),
                                     format_final("ok", str(int(t.data["answer"]) + 1))],
}


@pytest.mark.parametrize("kind", list(CASES))
async def test_each_failure_kind_is_told_apart(task, kind):
    traj = await episode(task, CASES[kind](task))
    assert traj.outcome.success is (kind is None)
    assert failure_kind(traj, task.data["answer"]) == kind


async def test_a_wrong_answer_by_hand_and_a_crashing_program(task):
    by_hand = await episode(task, [format_final("I think", "12345")])
    assert failure_kind(by_hand, task.data["answer"]) == "wrong_final_answer"
    crash = await episode(task, [format_action("run", "python", {"code": program(task) + ")"}), "hmm"])
    assert task.data["answer"] in crash.messages[3].content  # the traceback echoes the code, not an output
    assert failure_kind(crash, task.data["answer"]) == "wrong_program"
    counts = failure_counts([(by_hand, task.data["answer"]), (crash, task.data["answer"])])
    assert list(counts) == list(FAILURE_KINDS) and sum(counts.values()) == 2


async def test_a_game_that_runs_out_of_turns_is_out_of_turns():
    """twx:coin has no answer to check outputs against (the game's state decides): a student that looks around
    until the turn limit ran out of turns; one that answers instead of playing gave a wrong final answer."""
    env = make_env("twx:coin")
    task = env.tasks("test", 1)[0]
    looking = format_action("look first", "act", {"command": "look around"})

    async def play(turns):
        async with get_provider("none", Limits(timeout_s=5)) as provider, provider.acquire() as sandbox:
            result = await ReActLoop(env, Scripted(turns), max_steps=3).run(task, sandbox)
        return to_trajectory(result, task, env, Scripted([]), "none", 0)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsandboxedWarning)
            looped, answered = await play([looking] * 3), await play([looking, format_final("done", "coin")])
    finally:
        await env.close()
    assert not looped.outcome.success and looped.outcome.final_answer is None
    assert failure_kind(looped) == "out_of_turns"
    assert not answered.outcome.success and failure_kind(answered) == "wrong_final_answer"
    assert failure_counts([(looped, None), (answered, None)])["out_of_turns"] == 1
