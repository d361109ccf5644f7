"""OpenAIPolicy against a real local OpenAI-compatible server that injects faults."""

from __future__ import annotations

import pytest

from trajdistill.agents import PolicyError, make_policy
from trajdistill.agents._openai import OpenAIPolicy, chat_messages, parse_target
from trajdistill.envs import PolicyRequest, Task, tool_spec

from fault_server import NO_CHOICES, Error, FaultServer, Malformed, Reply, Stall, serve_in_subprocess

TASK = Task(id="t1", env="test", split="train", prompt="What is 6*7?")


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first addend
        b: second addend
    """
    return a + b


def request(**sampling) -> PolicyRequest:
    messages = [{"role": "system", "content": "Answer in ReAct format."},
                {"role": "user", "content": TASK.prompt}]
    return PolicyRequest(messages=messages, tools=[tool_spec(add)], task=TASK, sampling=sampling)


def policy(base_url: str, **options) -> OpenAIPolicy:
    options = {"backoff_s": 0.01, "timeout_s": 5, **options}
    return make_policy(f"openai:fault-model@{base_url}", **options)


@pytest.mark.parametrize("fault", [Error(500), Error(503, "overloaded"), Error(429, "slow down", retry_after=0.01),
                                   Stall(10), Malformed(), NO_CHOICES],
                         ids=["500", "503", "429", "stall", "not-json", "no-choices"])
async def test_each_fault_is_retried_then_succeeds(fault):
    server = FaultServer([fault, fault])
    with server as url:
        p = policy(url, timeout_s=0.5)
        turn = await p(request())
        await p.close()
    assert len(server.requests) == 3  # two faults, then the default reply
    assert turn.content == "Thought: I know the answer.\nFinal Answer: 42"
    assert turn.usage == {"prompt_tokens": 11, "completion_tokens": 7}
    assert turn.latency_s > 0


async def test_retries_exhausted_gives_one_line_policy_error():
    server = FaultServer(lambda i, body: Error(500, "boom\nsecond line"))
    with server as url:
        p = policy(url, max_retries=2)
        with pytest.raises(PolicyError) as info:
            await p(request())
    message = str(info.value)
    assert message.startswith(f"openai endpoint {url} failed after 3 attempts: HTTP 500")
    assert "boom" in message and "\n" not in message
    assert len(server.requests) == 3


async def test_client_error_fails_at_once():
    server = FaultServer(lambda i, body: Error(400, "bad model"))
    with server as url:
        with pytest.raises(PolicyError, match="rejected the request: HTTP 400 bad model"):
            await policy(url)(request())
    assert len(server.requests) == 1


async def test_unreachable_endpoint_is_a_policy_error():
    with FaultServer() as url:
        pass  # closed: nothing listens on that port any more
    with pytest.raises(PolicyError, match="failed after 2 attempts: connection error"):
        await policy(url, max_retries=1)(request())


async def test_server_killed_mid_run_is_a_policy_error():
    with serve_in_subprocess() as (url, proc):
        p = policy(url, max_retries=1)
        assert (await p(request())).content.endswith("Final Answer: 42")
        proc.kill()
        proc.join(5)
        with pytest.raises(PolicyError, match="connection error"):
            await p(request())


async def test_react_request_has_stop_sequence_and_sampling_overrides():
    server = FaultServer()
    with server as url:
        await policy(url, temperature=0.7)(request(max_tokens=33, seed=5))
    body = server.requests[0]
    assert body["stop"] == ["\nObservation:"]
    assert "tools" not in body
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.7, 33, 5)


async def test_tools_format_reads_tool_calls_and_reasoning():
    reply = Reply(content="  ", reasoning="6 times 7 is 42", usage=(20, 3),
                  tool_calls=[("add", {"a": 6, "b": 7}), ("add", "{not json")])
    server = FaultServer([reply])
    with server as url:
        turn = await policy(url, action_format="tools")(request())
    assert server.requests[0]["tools"] == [tool_spec(add).openai()]
    assert "stop" not in server.requests[0]
    assert turn.content == "" and turn.reasoning == "6 times 7 is 42"
    assert [(c.name, c.arguments, c.id) for c in turn.tool_calls] == [("add", {"a": 6, "b": 7}, "call_0"),
                                                                     ("add", "{not json", "call_1")]
    assert turn.usage == {"prompt_tokens": 20, "completion_tokens": 3}


async def test_think_block_moves_to_reasoning():
    with FaultServer([Reply(content="<think>multiply</think>\n\nThe answer is 42.")]) as url:
        turn = await policy(url, action_format="tools")(request())
    assert (turn.reasoning, turn.content) == ("multiply", "The answer is 42.")


def test_react_messages_turn_tool_results_into_observations():
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "Thought: t\nAction: add", "reasoning": "r"},
                {"role": "tool", "name": "add", "content": "13"}]
    assert chat_messages(messages, "react") == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "Thought: t\nAction: add"},
        {"role": "user", "content": "Observation: 13"}]


def test_spec_parsing(monkeypatch):
    assert parse_target("qwen/Qwen3-8B@http://10.0.0.1:8000/v1/") == ("qwen/Qwen3-8B", "http://10.0.0.1:8000/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy:1/v1")
    assert parse_target("gpt-x") == ("gpt-x", "http://proxy:1/v1")
    with pytest.raises(PolicyError, match="must be an http"):
        parse_target("m@localhost:8000")
