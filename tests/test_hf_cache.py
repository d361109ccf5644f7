"""HFPolicy's KV reuse (shared prefix + each episode's previous turn) gives the same greedy outputs as none."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trajdistill.agents import make_policy
from trajdistill.agents import bf16_is_fast, build_tiny_llama, load_causal_lm
from trajdistill.agents._decode import Sampling, decode
from trajdistill.agents._hf import HFPolicy, KVStore, pack_batch
from trajdistill.envs import PolicyRequest, Task

# Exact equality is a float32 property: in bf16 (the default on CPUs with bf16 dot products) rounding depends
# on the matmul shapes, so a cached and an uncached run can break a near-tie differently on random weights.
EXACT = "float32"
SYSTEM = "Solve the task. Reply with Thought: then Action: and Action Input: as JSON, or Final Answer:. " * 3


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """A tiny Llama with large random weights: its greedy text varies with the prompt (the default init
    repeats one token), so a wrong cached key would change what it writes."""
    out = build_tiny_llama(tmp_path_factory.mktemp("peaked") / "llama")
    model, tok = load_causal_lm(out)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    model.save_pretrained(out)
    return out


def request(messages: list[dict]) -> PolicyRequest:
    return PolicyRequest(messages=messages, tools=[], task=Task(id="t", env="test", split="test", prompt="x"))


async def episodes(policy: HFPolicy, n: int, turns: int) -> list[list[tuple[str, dict]]]:
    """n concurrent conversations of different lengths, `turns` turns each; the outputs per turn."""
    convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "count " * (3 * i + 1)}]
             for i in range(n)]
    outs = []
    for turn in range(turns):
        got = await asyncio.gather(*(policy(request(c)) for c in convs))
        for i, (conv, t) in enumerate(zip(convs, got)):
            conv += [{"role": "assistant", "content": t.content}, {"role": "tool", "content": "ok " * (i + turn)}]
        outs.append([(t.content, t.usage) for t in got])
    return outs


def record_matches(monkeypatch, policy: HFPolicy) -> list[tuple[int, int]]:
    """(prompt tokens, tokens reused) of every row (observation only)."""
    seen: list[tuple[int, int]] = []
    real = policy.kv.match

    def match(ids):
        entry, n = real(ids)
        seen.append((len(ids), n))
        return entry, n

    monkeypatch.setattr(policy.kv, "match", match)
    return seen


@pytest.mark.parametrize("batch_size", [2, 8])
async def test_greedy_outputs_equal_with_and_without_the_cache(peaked, monkeypatch, batch_size):
    plain = await episodes(HFPolicy(str(peaked), max_new_tokens=10, batch_size=batch_size, kv_cache_tokens=0,
                                    dtype=EXACT), 5, 3)
    cached = HFPolicy(str(peaked), max_new_tokens=10, batch_size=batch_size, dtype=EXACT)
    seen = record_matches(monkeypatch, cached)
    got = await episodes(cached, 5, 3)
    assert got == plain
    assert all(t[0] for turn in got for t in turn)  # real text, not empty completions
    prompts = [u["prompt_tokens"] for turn in got for _, u in turn]
    first, later = seen[:5], seen[5:]
    assert all(n > 0 for _, n in first[batch_size:])  # after the first batch, the system prompt is cached
    for (_, n), (content, usage) in zip(later, [t for turn in got[:-1] for t in turn]):
        assert n >= usage["prompt_tokens"]  # the next turn continues from the episode's own previous turn
    assert len(prompts) == 15


async def test_a_new_episode_reuses_the_pinned_system_prompt(peaked, monkeypatch):
    policy = HFPolicy(str(peaked), max_new_tokens=4, batch_size=4)
    seen = record_matches(monkeypatch, policy)
    await episodes(policy, 2, 1)
    await episodes(policy, 1, 1)
    system_tokens = len(policy.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}], tokenize=True))
    assert seen[-1][1] >= system_tokens


def test_store_keeps_the_longest_match_and_evicts_episodes_before_prefixes():
    def kv(n):
        return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]

    store = KVStore(max_tokens=10)
    store.add(torch.tensor([1, 2, 3]), kv(3), pinned=True)
    store.add(torch.tensor([1, 2, 3, 4, 5]), kv(5))
    entry, n = store.match(torch.tensor([1, 2, 3, 4, 9, 9]))
    assert n == 4 and len(entry.ids) == 5
    assert store.match(torch.tensor([1, 2, 3, 4, 5]))[1] == 4  # one token is left to run
    store.add(torch.tensor([7, 7, 7, 7]), kv(4))  # over budget: the least recently used episode goes
    assert store.has(torch.tensor([1, 2, 3])) and not store.has(torch.tensor([1, 2, 3, 4, 5]))
    assert store.match(torch.tensor([8, 8]))[1] == 0


def test_the_cache_is_an_agent_option(peaked):
    assert make_policy(f"hf:{peaked}", kv_cache_tokens=0).kv is None
    assert make_policy(f"hf:{peaked}").kv is not None
    with pytest.raises(ValueError, match="kv_cache_tokens must be >= 0"):
        make_policy(f"hf:{peaked}", kv_cache_tokens=-1)


def test_decode_drops_finished_rows_and_the_others_write_what_generate_writes(peaked):
    """Rows that end early leave the batch; each row's tokens are generate's, cut after its first end token,
    and the keys and values it hands back are those of a fresh forward over its prompt and tokens."""
    model, tok = load_causal_lm(peaked)
    prompts = [SYSTEM + "count " * (2 * i + 1) for i in range(5)]
    ids_list = [torch.tensor(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    packed = pack_batch(ids_list, [(None, 0)] * len(ids_list), pad_id=0)
    with torch.inference_mode():
        full = model.generate(input_ids=packed.input_ids, attention_mask=packed.attention_mask, do_sample=False,
                              max_new_tokens=12, pad_token_id=0)[:, packed.input_ids.shape[1]:].tolist()
    firsts = {}
    for row in full:
        for pos, t in enumerate(row):
            firsts.setdefault(t, []).append(pos)
    end = max(firsts, key=lambda t: len(set(firsts[t])))  # a token that ends rows at different steps
    with torch.inference_mode():
        rows = decode(model, packed.input_ids, packed.attention_mask, None,
                      Sampling(max_new=12, temperature=0.0, eos={end}, stopped=lambda new: False))
    want = [row[:row.index(end) + 1] if end in row else row for row in full]
    assert [r.tokens for r in rows] == want
    assert len({len(r.tokens) for r in rows}) > 1  # rows really finished at different steps
    for r, ids in zip(rows, ids_list):
        seq = torch.cat([ids, torch.tensor(r.tokens[:-1], dtype=torch.long)]).unsqueeze(0)
        with torch.inference_mode():
            fresh = model(input_ids=seq, use_cache=True).past_key_values
        assert r.kv[0][0].shape[2] == seq.shape[1]
        torch.testing.assert_close(r.kv[0][0], fresh.layers[0].keys, atol=1e-4, rtol=1e-4)


async def test_auto_dtype_is_bf16_where_bf16_is_fast(peaked):
    policy = HFPolicy(str(peaked), max_new_tokens=2)
    await policy.load()
    want = torch.bfloat16 if bf16_is_fast() else torch.float32
    assert next(policy.hf_model.parameters()).dtype == want
    assert (await policy(request([{"role": "user", "content": "hi"}]))).content is not None


def test_a_model_no_policy_holds_is_freed_and_the_last_one_is_kept(peaked, tmp_path):
    import gc
    import shutil
    import weakref

    from trajdistill.agents._hf import load_cached

    other = shutil.copytree(peaked, tmp_path / "other")
    first = weakref.ref(load_cached(str(peaked), "cpu", "float32")[0])
    assert load_cached(str(peaked), "cpu", "float32")[0] is first()  # loaded once while held
    load_cached(str(other), "cpu", "float32")  # now the last one loaded
    gc.collect()
    assert first() is None  # nobody holds the first model: freed
    kept = weakref.ref(load_cached(str(other), "cpu", "float32")[0])
    gc.collect()
    assert kept() is not None  # the last one loaded stays for the next run of the same model
