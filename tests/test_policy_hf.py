"""HFPolicy on a tiny local Llama (fast) and on the embedded SmolLM2 (slow); vLLM's availability check."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trajdistill.agents import PolicyError, make_policy
from trajdistill.agents import _hf as hf_module
from trajdistill.agents._hf import HFPolicy, render_prompt
from trajdistill.agents import ModelNotFoundError, build_tiny_llama, is_peft_adapter, load_causal_lm
from trajdistill.agents._models import ensure_smollm2
from trajdistill.agents._vllm import vllm_unavailable
from trajdistill.envs import PolicyRequest, Task

from conftest import require

TASK = Task(id="t1", env="test", split="train", prompt="Count.")


def request(text: str) -> PolicyRequest:
    return PolicyRequest(messages=[{"role": "system", "content": "Use ReAct."}, {"role": "user", "content": text}],
                         tools=[], task=TASK)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def count_generate(monkeypatch):
    """Record the batch size of every batched model call (observation only): `generate` without the KV
    cache, the row-dropping `decode` with it."""
    calls: list[int] = []

    def install(model):
        real_generate, real_decode = model.generate, hf_module.decode

        def generate(*args, **kwargs):
            calls.append(kwargs["input_ids"].shape[0])
            return real_generate(*args, **kwargs)

        def decode(model, input_ids, *args, **kwargs):
            calls.append(input_ids.shape[0])
            return real_decode(model, input_ids, *args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)
        monkeypatch.setattr(hf_module, "decode", decode)
        return calls

    return install


async def test_concurrent_requests_share_one_generate_call(tiny, count_generate):
    policy = make_policy(f"hf:{tiny}", max_new_tokens=6, batch_size=8)
    calls = count_generate(await policy.load())
    prompts = ["one", "two two", "three three three", "four four four four"]
    turns = await asyncio.gather(*(policy(request(p)) for p in prompts))
    assert calls == [4]
    assert len(turns) == 4
    tok = policy.tokenizer
    for p, turn in zip(prompts, turns):
        expected_prompt = len(tok(render_prompt(tok, request(p).messages), add_special_tokens=False).input_ids)
        assert turn.usage["prompt_tokens"] == expected_prompt  # padding is not counted
        assert 1 <= turn.usage["completion_tokens"] <= 6
    await policy.close()


async def test_batches_are_capped_at_batch_size(tiny, count_generate):
    policy = HFPolicy(str(tiny), max_new_tokens=2, batch_size=2)
    calls = count_generate(await policy.load())
    await asyncio.gather(*(policy(request(str(i))) for i in range(5)))
    assert sum(calls) == 5 and max(calls) <= 2


async def test_greedy_is_deterministic(tiny):
    policy = HFPolicy(str(tiny), max_new_tokens=12)
    first = await policy(request("hello"))
    second = await policy(request("hello"))
    assert first.content == second.content
    assert first.usage == second.usage
    assert policy.sampling() == {"temperature": 0.0, "max_new_tokens": 12}


def test_sync_callers_with_separate_event_loops(tiny):
    policy = HFPolicy(str(tiny), max_new_tokens=3)
    a = asyncio.run(policy(request("x")))
    b = asyncio.run(policy(request("x")))  # the batch queue follows the new loop
    assert a.content == b.content


def test_tool_messages_render_as_observations(tiny):
    _, tok = load_causal_lm(tiny)
    text = render_prompt(tok, [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "Action: add\nAction Input: {}"},
                               {"role": "tool", "name": "add", "content": "13"}])
    assert "<|im_start|>user\nObservation: 13<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


async def test_peft_adapter_dir_loads_base_plus_adapter(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tok = load_causal_lm(tiny)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: not a no-op
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ids = tok("some text", return_tensors="pt").input_ids
    with torch.no_grad():
        want = peft_model(ids).logits
        plain = load_causal_lm(tiny)[0](ids).logits
    assert is_peft_adapter(adapter) and not is_peft_adapter(tiny)

    policy = make_policy(f"hf:{adapter}", max_new_tokens=4, dtype="float32")  # compared with fp32 logits
    model = await policy.load()
    with torch.no_grad():
        got = model(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)
    assert (await policy(request("hi"))).usage["completion_tokens"] >= 1


def test_missing_model_path_names_the_aliases(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"model path .*nope does not exist; known aliases: smollm2-135m"):
        make_policy(f"hf:{tmp_path / 'nope'}")


def test_vllm_without_gpu_is_a_one_line_policy_error():
    why = vllm_unavailable()
    if why is None:
        pytest.skip("vllm and a CUDA GPU are present; the positive test covers this machine")
    with pytest.raises(PolicyError) as info:
        make_policy("vllm:smollm2-135m")
    message = str(info.value)
    assert "\n" not in message and why in message
    assert "pip install 'trajdistill[vllm]' on a CUDA machine" in message and "openai:MODEL@URL" in message


@pytest.mark.gpu
@pytest.mark.slow
async def test_vllm_generates_on_gpu():
    why = vllm_unavailable()
    require(why is None, f"in-process vLLM needs vllm and a CUDA GPU: {why}")
    policy = make_policy("vllm:smollm2-135m", max_tokens=16)
    turns = await asyncio.gather(*(policy(request(f"What is {i}+1?")) for i in range(3)))
    assert all(t.usage["completion_tokens"] >= 1 for t in turns)


@pytest.mark.slow
async def test_embedded_alias_converts_once_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJDISTILL_CACHE", str(tmp_path))
    policy = make_policy("hf:smollm2-135m", max_new_tokens=8)
    turn = await policy(request("What is the capital of France?"))
    assert turn.content and 1 <= turn.usage["completion_tokens"] <= 8
    weights = tmp_path / "models" / "smollm2-135m" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_smollm2() == weights.parent
    assert weights.stat().st_mtime_ns == stamp  # not converted again
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["smollm2-135m"]  # no tmp left


def test_interrupted_conversion_leaves_no_half_cache(tmp_path):
    from trajdistill.agents._models import _atomic_write

    def crash(out):
        (out / "model.safetensors").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        _atomic_write(tmp_path / "model", crash)
    assert list(tmp_path.iterdir()) == []
