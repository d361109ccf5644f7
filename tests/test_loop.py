"""The real LangGraph ReAct loop, driven by scripted policies on a small env defined here."""

from __future__ import annotations

import pytest

from trajdistill.agents import PolicyError, ReActLoop
from trajdistill.envs import Env, Episode, Outcome, Task, ToolCall, Turn, tool
from trajdistill.envs._react_text import format_action, format_final
from trajdistill.trajectories import was_cut_off


class AddEpisode(Episode):
    @tool
    def add(self, a: int, b: int) -> str:
        """Add two integers.

        Args:
            a: The first number.
            b: The second number.
        """
        return str(a + b)

    async def finish(self, answer):
        ok = answer is not None and answer.strip() == self.task.data["answer"]
        return Outcome(success=ok, reward=float(ok), final_answer=answer)


class AddEnv(Env):
    name = "add"
    episode_cls = AddEpisode

    def tasks(self, split, n=None, offset=0):
        return [Task(id=f"add-{i}", env="add", split="train", prompt=f"What is {i} + {i}?",
                     data={"answer": str(2 * i)}) for i in range(offset, offset + (n or 3))]

    def split_sizes(self):
        return {"train": 3, "dev": 0, "test": 0}


class Scripted:
    """A policy that replays fixed turns and records what it was shown."""

    backend, model = "scripted", "scripted"

    def __init__(self, turns, action_format="react"):
        self.spec = "scripted:test"
        self.action_format = action_format
        self.turns = list(turns)
        self.seen = []

    async def __call__(self, request):
        self.seen.append(request)
        turn = self.turns.pop(0)
        return turn if isinstance(turn, Turn) else Turn(content=turn, usage={"prompt_tokens": 3,
                                                                            "completion_tokens": 2})

    def sampling(self):
        return {}

    async def close(self):
        pass


async def run(turns, max_steps=5, action_format="react", engine="direct", stop_on_repeat=0):
    env = AddEnv()
    policy = Scripted(turns, action_format)
    loop = ReActLoop(env, policy, max_steps=max_steps, engine=engine, stop_on_repeat=stop_on_repeat)
    return await loop.run(env.tasks("train", 2)[1]), policy


async def test_action_then_final_answer_succeeds():
    result, policy = await run([format_action("add them", "add", {"a": 1, "b": 1}), format_final("done", "2")])
    assert result.outcome.success
    roles = [m["role"] for m in result.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert result.messages[3]["content"] == "2"
    assert result.usage["steps"] == 2 and result.usage["prompt_tokens"] == 6
    assert "add(a: integer, b: integer)" in result.messages[0]["content"]
    assert policy.seen[1].messages[-1]["role"] == "tool"


@pytest.mark.parametrize("bad, expect", [
    ("I am not sure what to do", "no `Action:` or `Final Answer:`"),
    (format_action("t", "multiply", {"a": 1}), "unknown tool 'multiply'"),
    (format_action("t", "add", {"a": "one", "b": 2}), "bad arguments for 'add'"),
    ("Thought: t\nAction: add\nAction Input: {a: 1}", "not valid JSON"),
])
async def test_malformed_actions_become_observations_listing_tools(bad, expect):
    result, _ = await run([bad, format_final("ok", "2")])
    obs = result.messages[3]
    assert obs["role"] == "tool" and expect in obs["content"]
    assert "Valid tools: add, final_answer" in obs["content"]
    assert result.usage["invalid_actions"] == 1
    assert result.outcome.success  # the episode went on after the bad action


async def test_max_steps_cuts_the_episode_off():
    result, policy = await run([format_action("again", "add", {"a": 1, "b": 1})] * 3, max_steps=3)
    assert not result.outcome.success
    assert "max steps (3)" in result.outcome.detail
    assert len(policy.seen) == 3


@pytest.mark.parametrize("engine", ["direct", "langgraph"])
async def test_stop_on_repeat_ends_a_loop_of_one_turn_and_one_observation(engine):
    same = format_action("again", "add", {"a": 1, "b": 1})
    result, policy = await run([same] * 9, max_steps=9, engine=engine, stop_on_repeat=3)
    assert len(policy.seen) == 3 and not result.outcome.success
    assert result.outcome.detail.startswith("stopped in a loop: the same turn and observation 3 times in a row")
    assert was_cut_off(result.outcome.detail)  # a game's taxonomy counts it out_of_turns, like the turn limit


async def test_stop_on_repeat_lets_a_changing_episode_run_on():
    same, other = (format_action("t", "add", {"a": 1, "b": b}) for b in (1, 2))
    result, policy = await run([same, same, other, same, same, format_final("ok", "2")], max_steps=9,
                               stop_on_repeat=3)
    assert result.outcome.success and len(policy.seen) == 6
    # off (the default), the same loop runs to the turn limit
    result, policy = await run([same] * 5, max_steps=5)
    assert len(policy.seen) == 5 and "max steps (5)" in result.outcome.detail


async def test_native_tool_calls_with_reasoning():
    turns = [
        Turn(content="", reasoning="I should add.", tool_calls=[ToolCall("add", {"a": 1, "b": 1}, "c1")]),
        Turn(content="", tool_calls=[ToolCall("final_answer", {"answer": "2"}, "c2")]),
    ]
    result, _ = await run(turns, action_format="tools")
    assert result.outcome.success
    assistant = result.messages[1]
    assert assistant["reasoning"] == "I should add."
    assert assistant["tool_calls"][0]["function"]["name"] == "add"
    assert result.messages[2] == {"role": "tool", "name": "add", "content": "2", "tool_call_id": "c1"}


async def test_final_answer_tool_with_bad_arguments_is_an_observation():
    turns = [Turn(tool_calls=[ToolCall("final_answer", {"reply": "2"}, "c1")]),
             Turn(tool_calls=[ToolCall("final_answer", {"answer": "2"}, "c2")])]
    result, _ = await run(turns, action_format="tools")
    assert "bad arguments for 'final_answer'" in result.messages[2]["content"]
    assert result.outcome.success


async def test_policy_error_propagates_to_the_caller():
    class Failing(Scripted):
        async def __call__(self, request):
            raise PolicyError("endpoint down")

    env = AddEnv()
    with pytest.raises(PolicyError, match="endpoint down"):
        await ReActLoop(env, Failing([])).run(env.tasks("train", 1)[0])


ENGINE_CASES = {
    "action then answer": ([format_action("add them", "add", {"a": 1, "b": 1}), format_final("done", "2")], 5),
    "bad action, then a wrong answer": (["no action here", format_action("t", "add", {"a": 1, "b": 2}),
                                        format_final("done", "3")], 5),
    "cut off at max steps": ([format_action("again", "add", {"a": 1, "b": 1})] * 3, 3),
}


@pytest.mark.parametrize("case", ENGINE_CASES)
async def test_the_direct_engine_runs_the_same_episode_as_the_langgraph_graph(case):
    turns, max_steps = ENGINE_CASES[case]
    direct, direct_policy = await run(list(turns), max_steps=max_steps, engine="direct")
    graph, graph_policy = await run(list(turns), max_steps=max_steps, engine="langgraph")
    assert direct.messages == graph.messages
    assert direct.outcome == graph.outcome and direct.usage == graph.usage
    assert [r.messages for r in direct_policy.seen] == [r.messages for r in graph_policy.seen]


def test_the_loop_still_is_a_compiled_langgraph_graph_and_an_unknown_engine_is_refused():
    from langgraph.graph.state import CompiledStateGraph

    loop = ReActLoop(AddEnv(), Scripted([]))
    assert isinstance(loop.graph, CompiledStateGraph) and "step" in loop.graph.nodes
    with pytest.raises(ValueError, match="loop engine must be one of direct, langgraph, got 'fast'"):
        ReActLoop(AddEnv(), Scripted([]), engine="fast")
