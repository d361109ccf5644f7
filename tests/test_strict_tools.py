"""Strict tool calls (`strict_tools`): the ReAct prefix check, and a real tiny model with a bad calling habit decoded
under it."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trajdistill.agents import build_tiny_llama, load_causal_lm
from trajdistill.agents._hf import HFPolicy, render_prompt
from trajdistill.envs import PolicyRequest, Task, ToolSpec, final_answer_spec, react_prefix_fits
from trajdistill.envs._react_text import ParsedAction, parse_react

POWER = ToolSpec("modular_power", "base^exponent mod modulus", {
    "type": "object", "additionalProperties": False, "required": ["base", "exponent", "modulus"],
    "properties": {"base": {"type": "integer"}, "exponent": {"type": "integer"}, "modulus": {"type": "integer"}}})
PYTHON = ToolSpec("python", "run a program", {"type": "object", "properties": {"code": {"type": "string"}},
                                              "required": ["code"]})
TOOLS = [POWER, PYTHON, final_answer_spec()]
CALL = "Thought: use it.\nAction: modular_power\nAction Input: "


@pytest.mark.parametrize("text", [
    "Thought: still thinking, Action Input: is only words here", "Thought: x\nAction: modular_p",
    "Thought: x\nAction: python\nAction Inp", CALL, CALL + '{"ba', CALL + '{"base": -', CALL + '{"base": 3, "exp',
    CALL + '{"base": 3, "exponent": 27, "modulus": 62}', "Thought: x\nFinal Answer: 144 or so",
    'Thought: x\nAction: python\nAction Input: {"code": "print(\\"a\\u00e9', 'Action: final_answer\nAction Input: {"',
])
def test_a_prefix_that_can_still_become_a_valid_call_fits(text):
    assert react_prefix_fits(text, TOOLS)


@pytest.mark.parametrize("text", [
    "Thought: x\nAction: pow", "Thought: x\nAction: python\nObservation:", "Action Input: {}",
    CALL + '{"code', CALL + '{"base": "3', CALL + '{"base": 3.5', CALL + '{"base": 3, "base', CALL + '{"base": 3}',
    CALL + '{"ba\\se', CALL + '{"base":  3', CALL + '\n{', 'Action: python\nAction Input: {"code": "a\nb',
    'Action: python\nAction Input: {"code": "\\q',
])
def test_a_prefix_no_valid_call_begins_with_is_refused(text):
    assert not react_prefix_fits(text, TOOLS)


def test_a_turn_ends_only_outside_a_call_or_after_it():
    assert react_prefix_fits("Thought: x", TOOLS, end=True)
    assert react_prefix_fits(CALL + '{"base": 3, "exponent": 27, "modulus": 62}', TOOLS, end=True)
    assert not react_prefix_fits(CALL + '{"base": 3, "exponent": 27, "modulus": 62', TOOLS, end=True)
    assert not react_prefix_fits("Thought: x\nAction: python", TOOLS, end=True)


HABIT = 'Thought: I call the listed tool.\nAction: modular_power\nAction Input: {"code": "print(pow(32, 27, 62))"}'
MESSAGES = [{"role": "system", "content": "Use ReAct."}, {"role": "user", "content": "Compute 32^27 mod 62."}]
REQUEST = PolicyRequest(messages=MESSAGES, tools=[POWER, final_answer_spec()],
                        task=Task(id="t1", env="test", split="test", prompt="Compute 32^27 mod 62."))


@pytest.fixture(scope="module")
def habit(tmp_path_factory):
    """A tiny Llama taught one reply: the `{"code": ...}` call a small student makes to every tool."""
    path = build_tiny_llama(tmp_path_factory.mktemp("habit") / "llama")
    model, tok = load_causal_lm(path)
    prompt = tok(render_prompt(tok, MESSAGES), add_special_tokens=False).input_ids
    x = torch.tensor([prompt + tok(HABIT, add_special_tokens=False).input_ids + [tok.eos_token_id]])
    labels = x.clone()
    labels[0, :len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    return path


@pytest.mark.slow
def test_strict_tools_turn_a_learned_bad_call_into_one_the_schema_allows(habit):
    plain = asyncio.run(HFPolicy(str(habit), max_new_tokens=60)(REQUEST)).content
    step = parse_react(plain)
    assert isinstance(step, ParsedAction) and step.arguments == {"code": "print(pow(32, 27, 62))"}
    assert POWER.validate(step.arguments) is not None  # the habit, unguided

    strict = asyncio.run(HFPolicy(str(habit), max_new_tokens=60, strict_tools=True)(REQUEST)).content
    head = "Thought: I call the listed tool.\nAction: modular_power\nAction Input: {\""
    assert strict.startswith(head) and strict[len(head):].startswith(("base\"", "exponent\"", "modulus\""))
    assert react_prefix_fits(strict, REQUEST.tools) and "code" not in strict


@pytest.mark.slow
def test_sampled_strict_turns_all_fit_and_finished_calls_validate(habit):
    policy = HFPolicy(str(habit), max_new_tokens=48, strict_tools=True, temperature=1.0, seed=3, batch_size=6)

    async def turns():
        return await asyncio.gather(*(policy(REQUEST) for _ in range(6)))

    texts = [t.content for t in asyncio.run(turns())]
    assert any("Action Input: {" in t for t in texts)  # the habit still acts; the guide shapes the call
    for text in texts:
        assert react_prefix_fits(text, REQUEST.tools)
        step = parse_react(text)
        if isinstance(step, ParsedAction):
            tool = next(t for t in REQUEST.tools if t.name == step.tool)
            assert tool.validate(step.arguments) is None
