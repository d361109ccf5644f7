"""`hf:<path|alias>`: transformers on the local device, with requests of concurrent episodes batched.

Episodes run as asyncio tasks; each awaits its own turn. A `Batcher` collects the requests that
arrive together (up to batch_size, waiting a few ms to fill), runs ONE batched generate call in a
thread, and hands each caller its own result. The vLLM backend reuses the same Batcher.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from trajdistill.envs import PolicyRequest, ToolSpec, Turn, react_prefix_fits

from ._decode import Sampling, decode, first_chars
from ._models import ALIASES, bf16_is_fast, load_causal_lm, resolve_model
from ._openai import REACT_STOP, chat_messages
from ._options import HFOptions
from ._policy import PolicyError

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Coalesce concurrent `submit` calls into batched calls of `run_batch` (sync, run in a thread).

    `run_batch` gets a list of items and returns one result per item, in order. If it raises,
    every caller in that batch gets the exception.
    """

    def __init__(self, run_batch: Callable[[list[In]], list[Out]], max_batch: int, wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError("batch size must be >= 1")
        self.run_batch, self.max_batch, self.wait_s = run_batch, max_batch, wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()  # queues belong to one event loop
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _work(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if queue.qsize() + 1 < self.max_batch:
                await asyncio.sleep(self.wait_s)  # let the other episodes' requests arrive
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # drop cancelled callers
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[In, asyncio.Future]]) -> None:
        try:
            results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
        except Exception as err:  # handed to every waiting caller, not swallowed
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._worker = None


# ---- prompts ------------------------------------------------------------------------------------

def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The generation prompt for chat messages. Tool results become user `Observation:` turns
    unless the chat template knows a tool role."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "'tool'" in template or '"tool"' in template:
        msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    else:
        msgs = chat_messages(messages, "react")
    if not template:
        lines = [f"{m['role']}: {m['content']}" for m in msgs]
        return "\n".join(lines) + "\nassistant: "
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def shared_prefix(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The rendered leading system messages (system prompt, tool list) that many episodes share, or ''."""
    template = getattr(tokenizer, "chat_template", None) or ""
    n = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    if not template or n == 0:
        return ""
    msgs = [{"role": "system", "content": m.get("content") or ""} for m in messages[:n]]
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut].strip()


# ---- KV reuse -----------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: entries are removed by `is`, and tensors have no truth value
class _Entry:
    ids: Any  # 1-D LongTensor: the tokens whose keys and values are held
    kv: list[tuple[Any, Any]]  # per layer (keys, values), each [1, kv_heads, len(ids), head_dim]
    pinned: bool  # a shared prefix: evicted only after every episode's entry
    used: int  # LRU clock


class KVStore:
    """Keys and values of token sequences already run, so that a prompt starting with one skips their prefill.

    Entries are shared prefixes (system prompt and tool list; pinned) and each episode's last sequence
    (prompt + completion), which its next turn extends. A match is the longest common token prefix, so
    reuse is exact whichever entry it comes from: a key at position j depends only on tokens 0..j.
    Bounded by `max_tokens` in all; least recently used episode entries go first.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self._entries: list[_Entry] = []
        self._clock = 0

    def match(self, ids: Any) -> tuple[_Entry | None, int]:
        """The entry sharing the longest token prefix with `ids`, and its length; below len(ids),
        since at least one token must run to give the next token's logits."""
        best, best_n = None, 0
        for e in self._entries:
            m = min(len(e.ids), len(ids) - 1)
            if m <= best_n:
                continue
            diff = (e.ids[:m] != ids[:m]).nonzero()
            n = int(diff[0]) if len(diff) else m
            if n > best_n:
                best, best_n = e, n
        if best is not None:
            self._clock += 1
            best.used = self._clock
        return best, best_n

    def has(self, ids: Any) -> bool:
        return any(len(e.ids) == len(ids) and bool((e.ids == ids).all()) for e in self._entries)

    def add(self, ids: Any, kv: list[tuple[Any, Any]], pinned: bool = False) -> None:
        if len(ids) > self.max_tokens:
            return
        self._clock += 1
        self._entries.append(_Entry(ids, kv, pinned, self._clock))
        total = sum(len(e.ids) for e in self._entries)
        for e in sorted(self._entries, key=lambda e: (e.pinned, e.used)):
            if total <= self.max_tokens:
                break
            self._entries.remove(e)
            total -= len(e.ids)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Packed:
    """A batch laid out as [cached part | hole | uncached suffix] per row; the hole is masked out."""
    input_ids: Any
    attention_mask: Any
    cache: Any  # DynamicCache holding each row's cached part, or None when no row has one


def pack_batch(ids_list: list[Any], matches: list[tuple[_Entry | None, int]], pad_id: int) -> _Packed:
    """Rows whose cached lengths differ share one rectangular cache: each row's cached keys sit at
    the left, zeros fill up to the longest, and the suffixes are right-aligned so that generation
    continues from one edge. Position ids come from the mask's cumulative sum, so they stay contiguous."""
    import torch
    from transformers import DynamicCache

    c = max(n for _, n in matches)
    s = max(len(ids) - n for ids, (_, n) in zip(ids_list, matches))
    b = len(ids_list)
    input_ids = torch.full((b, c + s), pad_id, dtype=torch.long)
    mask = torch.zeros((b, c + s), dtype=torch.long)
    for i, (ids, (_, n)) in enumerate(zip(ids_list, matches)):
        input_ids[i, :n], mask[i, :n] = ids[:n], 1
        input_ids[i, c + s - (len(ids) - n):], mask[i, c + s - (len(ids) - n):] = ids[n:], 1
    if c == 0:
        return _Packed(input_ids, mask, None)
    layers = []
    for layer, (k0, v0) in enumerate(next(e for e, n in matches if n).kv):
        k = k0.new_zeros((b, k0.shape[1], c, k0.shape[3]))
        v = v0.new_zeros((b, v0.shape[1], c, v0.shape[3]))
        for i, (e, n) in enumerate(matches):
            if n:
                k[i, :, :n], v[i, :, :n] = e.kv[layer][0][0, :, :n], e.kv[layer][1][0, :, :n]
        layers.append((k, v))
    return _Packed(input_ids, mask, DynamicCache(ddp_cache_data=layers))


# ---- the policy ---------------------------------------------------------------------------------

@dataclass
class _Item:
    messages: list[dict[str, Any]]
    temperature: float
    max_new_tokens: int
    seed: int | None
    tools: list[ToolSpec] | None = None  # strict tool calls: the listed tools the turn's action must fit


@dataclass
class _ToolGuide:
    """Strict tool calls for one batch: each row's turn stays a valid call of its listed tools."""

    pieces: list[str]
    firsts: Any
    tools: list[list[ToolSpec]]

    def fits(self, row: int, text: str, end: bool) -> bool:
        return react_prefix_fits(text, self.tools[row], end)


@dataclass
class _Gen:
    text: str
    prompt_tokens: int
    completion_tokens: int


# (path, device, dtype) -> model, held weakly: policies alive at once share one copy, and a model no policy
# holds any more is freed (a bench that evaluates several students in one process held them all: 12 GB);
# the last one loaded stays, so runs of the same model one after another load it once
_models: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()
_tokenizers: dict[tuple[str, str, str], Any] = {}
_last_loaded: list[Any] = []
_models_lock = threading.Lock()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_cached(target: str, device: str, dtype: str = "auto") -> tuple[Any, Any]:
    """Load a model once while any policy holds it; `auto` dtype is bfloat16 where it is fast (CUDA, or a CPU with bf16
    dot products: greedy episodes of the distilled student were identical to fp32's, 1.7x faster), else float32."""
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if bf16_is_fast() and device.split(":")[0] in ("cuda", "cpu") else "float32"
    with _models_lock:
        key = (str(resolve_model(target, allow_hub=True)), device, dtype)
        model = _models.get(key)
        if model is None:
            model, _tokenizers[key] = load_causal_lm(key[0], device=device, dtype=getattr(torch, dtype))
            _models[key] = model
            _last_loaded[:] = [model]
        return model, _tokenizers[key]


class HFPolicy:
    backend = "hf"
    holds_model = True  # the Ray executor runs it as one actor that every worker calls
    action_format = "react"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", options: HFOptions | None = None,
                 **fields: Any):
        o = options or HFOptions.parse(fields)
        if target not in ALIASES:  # aliases convert lazily, on first use; a bad path fails now
            resolve_model(target, allow_hub=True)
        self.options = o
        self.spec = spec or f"hf:{target}"
        self.model = target
        self.temperature, self.max_new_tokens, self.seed = o.temperature, o.max_new_tokens, o.seed
        self.batch_size = o.batch_size
        self.device = o.device
        self.hf_model: Any = None  # loaded on first call
        self.tokenizer: Any = None
        self._batcher: Batcher[_Item, _Gen] = Batcher(self._generate, o.batch_size, o.batch_wait_s)
        self.kv = KVStore(o.kv_cache_tokens) if o.kv_cache_tokens else None  # only the worker thread touches it
        self._scoring = threading.Lock()  # one scoring forward at a time: concurrent ones only fight for the cores
        self._piece_cache: tuple[Any, list[str], Any] = (None, [], None)  # tokenizer, pieces, firsts: strict tools

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    async def load(self) -> Any:
        """Load the model now (it otherwise loads with the first batch) and return it."""
        if self.hf_model is None:
            await asyncio.to_thread(self._ensure_loaded)
        return self.hf_model

    def _ensure_loaded(self) -> None:
        if self.hf_model is None:
            try:
                self.hf_model, self.tokenizer = load_cached(self.model, self.device or _default_device(),
                                                            self.options.dtype)
            except (OSError, ValueError) as err:
                raise PolicyError(f"hf policy could not load {self.model}: {' '.join(str(err).split())}") from err

    async def __call__(self, request: PolicyRequest) -> Turn:
        start = time.monotonic()
        s = {**self.sampling(), **request.sampling}
        item = _Item(request.messages, float(s.get("temperature", 0.0)),
                     int(s.get("max_tokens", s.get("max_new_tokens", self.max_new_tokens))), s.get("seed"),
                     list(request.tools) if self.options.strict_tools else None)
        gen = await self._batcher.submit(item)
        return Turn(content=gen.text, latency_s=time.monotonic() - start,
                    usage={"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens})

    async def prompt_logprobs(self, token_ids: list[int]) -> list[dict[str, Any] | None]:
        """The model's log-probability of each token given the ones before it, as `{"id", "logprob", "token"}`;
        None for the first: what a vLLM server answers through prompt_logprobs (OpenAIPolicy's)."""
        return await asyncio.to_thread(self._prompt_logprobs, list(token_ids))

    def _prompt_logprobs(self, ids: list[int]) -> list[dict[str, Any] | None]:
        import torch

        self._ensure_loaded()
        x = torch.tensor([ids], device=self.hf_model.device)
        with self._scoring, torch.no_grad():
            logits = self.hf_model(x).logits[0, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0].tolist()
        return [None, *({"id": t, "logprob": v, "token": self.tokenizer.decode([t])} for t, v in zip(ids[1:], logp))]

    def _generate(self, items: list[_Item]) -> list[_Gen]:
        """One batch, in the worker thread; items with different sampling settings run as separate groups.

        The first batch loads the model, so requests that arrive meanwhile queue up for the next one."""
        self._ensure_loaded()
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.temperature, it.max_new_tokens, it.seed), []).append(i)
        out: list[_Gen | None] = [None] * len(items)
        for (temperature, max_new, seed), idx in groups.items():
            prompts = [render_prompt(self.tokenizer, items[i].messages) for i in idx]
            if self.kv is not None or self.options.strict_tools:
                prefixes = [shared_prefix(self.tokenizer, items[i].messages) for i in idx]
                guide = (_ToolGuide(*self._pieces(), [items[i].tools or [] for i in idx])
                         if self.options.strict_tools else None)
                gens = self._generate_cached(prompts, prefixes, temperature, max_new, seed, guide)
            else:
                gens = self._generate_group(prompts, temperature, max_new, seed)
            for i, gen in zip(idx, gens):
                out[i] = gen
        return out  # type: ignore[return-value]

    def _generate_group(self, prompts: list[str], temperature: float, max_new: int, seed: int | None) -> list[_Gen]:
        import torch

        tok, model = self.tokenizer, self.hf_model
        tok.padding_side = "left"  # generation continues from the right edge
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            ids = model.generate(**enc, **sample, max_new_tokens=max_new, pad_token_id=pad_id,
                                 stop_strings=REACT_STOP, tokenizer=tok)
        new = ids[:, enc["input_ids"].shape[1]:].tolist()
        eos = _eos_ids(model, tok)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return [self._decode(row, eos, pad_id, int(n)) for row, n in zip(new, prompt_lens)]

    def _generate_cached(self, prompts: list[str], prefixes: list[str], temperature: float, max_new: int,
                         seed: int | None, guide: _ToolGuide | None = None) -> list[_Gen]:
        """`_generate_group` through `decode`: each row starts from the longest token prefix the KV store holds
        (when there is one), and `guide` keeps each row's turn a strict tool call."""
        import torch

        tok, model = self.tokenizer, self.hf_model
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids_list = [torch.tensor(tok(p, add_special_tokens=False).input_ids, dtype=torch.long) for p in prompts]
        matches = [self.kv.match(ids) if self.kv is not None else (None, 0) for ids in ids_list]
        packed = pack_batch(ids_list, matches, pad_id)
        if seed is not None:
            torch.manual_seed(seed)
        eos = _eos_ids(model, tok)
        sampling = Sampling(max_new, temperature, eos, self._stopped, guide)
        with torch.inference_mode():
            rows = decode(model, packed.input_ids.to(model.device), packed.attention_mask.to(model.device),
                          packed.cache, sampling)
        gens = [self._decode(r.tokens, eos, pad_id, len(ids)) for r, ids in zip(rows, ids_list)]
        for r, ids, prefix in zip(rows, ids_list, prefixes):
            if self.kv is not None:
                self._keep(ids, r, prefix)
        return gens

    def _pieces(self) -> tuple[list[str], Any]:
        """Each token id's text and its first character's code, for the strict-tools guide (once per tokenizer)."""
        if self._piece_cache[0] is not self.tokenizer:
            tok, n = self.tokenizer, len(self.tokenizer)
            pieces = tok.batch_decode([[t] for t in range(n)], clean_up_tokenization_spaces=False)
            # special tokens (decoded as nothing) and embedding rows past the vocabulary: text that no guide takes
            # where it constrains, else a row could write them forever inside a call
            pieces += [""] * max(0, self.hf_model.config.vocab_size - n)
            for t in [*tok.all_special_ids, *range(n, len(pieces))]:
                pieces[t] = "\ufffd"
            self._piece_cache = (tok, pieces, first_chars(pieces))
        return self._piece_cache[1], self._piece_cache[2]

    def _stopped(self, new: list[int]) -> bool:
        text = self.tokenizer.decode(new[-8:], skip_special_tokens=True)  # a stop string spans a few tokens
        return any(stop in text for stop in REACT_STOP)

    def _keep(self, ids: Any, row: Any, prefix: str) -> None:
        """Store the row's prompt + completion for its next turn, and pin a shared prefix seen first here."""
        import torch

        tokens = torch.cat([ids, torch.tensor(row.tokens[:-1], dtype=torch.long)])  # the last one was never run
        self.kv.add(tokens, row.kv)
        pre = self._prefix_ids(prefix, ids)
        if pre is not None and not self.kv.has(pre):
            self.kv.add(pre, [(k[:, :, :len(pre)].clone(), v[:, :, :len(pre)].clone()) for k, v in row.kv],
                        pinned=True)

    def _prefix_ids(self, prefix: str, ids: Any) -> Any:
        """The shared prefix's tokens if the prompt's tokens start with them (tokenization can merge
        across the boundary; then the prefix is not shared at token level)."""
        import torch

        if not prefix:
            return None
        pre = torch.tensor(self.tokenizer(prefix, add_special_tokens=False).input_ids, dtype=torch.long)
        if len(pre) >= len(ids) or not bool((ids[:len(pre)] == pre).all()):
            return None
        return pre

    def _decode(self, row: list[int], eos: set[int], pad_id: int, prompt_tokens: int) -> _Gen:
        end = len(row)
        for i, t in enumerate(row):  # a finished row is padded to the batch's length
            if t in eos or t == pad_id:
                end = i + 1 if t in eos else i
                break
        text = self.tokenizer.decode(row[:end], skip_special_tokens=True)
        return _Gen(cut_at_stop(text, REACT_STOP), prompt_tokens, end)

    async def close(self) -> None:
        await self._batcher.close()


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids
