"""Batched decoding that drops each row as it finishes.

`model.generate` decodes a batch in lockstep: a row that stopped after 40 tokens is still run, as
padding, until the longest row reaches its limit. Here a finished row leaves the batch (its keys and
values are handed to `on_done` first), so every decode step runs only live rows. Greedy, or
temperature sampling; the generation config's other logits processors are not applied. A `Guide` (strict tool
calls) keeps each row's text a valid prefix: a token it refuses is replaced by the likeliest one it takes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Protocol


@dataclass
class Finished:
    """One row's result: the tokens it wrote, and the keys and values of every token that was run."""

    row: int
    tokens: list[int]
    kv: list[tuple[Any, Any]]  # per layer, [1, kv_heads, prompt + len(tokens) - 1, head_dim]


class Guide(Protocol):
    pieces: list[str]  # each token id's text (special tokens: text no constrained place takes)
    firsts: Any  # `first_chars(pieces)`, computed once with the pieces

    def fits(self, row: int, text: str, end: bool) -> bool:
        """Whether `text`, row `row`'s new text so far, may be written (`end`: and stop there)."""


@dataclass
class Sampling:
    max_new: int
    temperature: float
    eos: set[int]
    stopped: Callable[[list[int]], bool]  # True once the row's new tokens hold a stop string
    guide: Guide | None = None


def decode(model: Any, input_ids: Any, mask: Any, cache: Any, s: Sampling) -> list[Finished]:
    """Run the uncached columns of `input_ids` (those past the cache's length), then decode; one
    `Finished` per row, in row order. `mask` marks the real tokens (0 in holes and padding)."""
    import torch  # heavy: loaded only once a model runs
    from transformers import DynamicCache

    cache = cache if cache is not None else DynamicCache()
    done = cache.get_seq_length()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids[:, done:], attention_mask=mask, position_ids=positions[:, done:],
                   cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    live = list(range(input_ids.shape[0]))
    written: list[list[int]] = [[] for _ in live]
    texts = [""] * len(live)
    out: list[Finished] = []
    while live:
        nxt = _pick(logits, s.temperature)
        if s.guide is not None:
            nxt = _guided(nxt, logits, live, texts, s)
        for i, tok in zip(live, nxt.tolist()):
            written[i].append(tok)
        ended = [j for j, i in enumerate(live) if _ended(written[i], s)]
        for j in ended:  # the last token was sampled, never run: it has no keys
            keep = mask[j].nonzero().squeeze(1)
            out.append(Finished(live[j], written[live[j]], row_kv(cache, j, keep)))
        if ended:
            gone = set(ended)
            stay = [j for j in range(len(live)) if j not in gone]
            if not stay:
                break
            index = torch.tensor(stay)
            cache.batch_select_indices(index)
            mask, nxt, live = mask[index], nxt[index], [live[j] for j in stay]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        logits = model(input_ids=nxt.view(-1, 1), attention_mask=mask,
                       position_ids=(mask.sum(-1, keepdim=True) - 1), cache=cache,
                       use_cache=True).logits[:, -1]
    return sorted(out, key=lambda f: f.row)


def _pick(logits: Any, temperature: float) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(1)


def _guided(nxt: Any, logits: Any, live: list[int], texts: list[str], s: Sampling) -> Any:
    """`nxt` with each token the guide refuses replaced by the guide's pick; each row's text extended by its token."""
    g = s.guide
    for j, (i, tok) in enumerate(zip(live, nxt.tolist())):
        if not g.fits(i, texts[i] + g.pieces[tok], tok in s.eos):
            tok = nxt[j] = _fitting(logits[j], i, texts[i], s)
        texts[i] += g.pieces[tok]
    return nxt


_ASCII = [chr(c) for c in range(128)]
_OTHER, _EMPTY = 128, 129  # first-character codes of a token that starts past ASCII, and of an empty one


def first_chars(pieces: list[str]) -> Any:
    """Each token's first character as a code (ASCII, or `_OTHER` / `_EMPTY`): the guide's first-character mask."""
    import torch

    return torch.tensor([ord(p[0]) if p and p[0] < "\x80" else _OTHER if p else _EMPTY for p in pieces])


def _fitting(logits: Any, row: int, text: str, s: Sampling, top: int = 256) -> int:
    """The likeliest token the guide takes (greedy), or one sampled among the `top` likeliest it takes; the
    likeliest token when it takes none (the row's turn then fails to parse, as it would unguided).

    Only tokens whose first character may follow `text` (and end-of-sequence tokens) are tried whole: one
    vectorised mask instead of a scan of the vocabulary."""
    import torch

    g = s.guide
    codes = [ord(c) for c in _ASCII if g.fits(row, text + c, False)]
    if g.fits(row, text + "\u00e9", False):  # a non-ASCII character fits only where any text does
        codes.append(_OTHER)
    firsts = g.firsts[: logits.shape[0]].to(logits.device)
    maybe = torch.isin(firsts, torch.tensor(codes, device=firsts.device, dtype=firsts.dtype))
    for t in s.eos:
        if t < len(maybe):
            maybe[t] = True
    ids = maybe.nonzero().squeeze(1)
    ranked = ids[logits[ids].argsort(descending=True)].tolist()
    fit = (t for t in ranked if g.fits(row, text + g.pieces[t], t in s.eos))
    if s.temperature <= 0:
        return next(fit, int(logits.argmax()))
    picks = list(itertools.islice(fit, top)) or [int(logits.argmax())]
    probs = torch.softmax(logits[picks].float() / s.temperature, dim=-1)
    return picks[int(torch.multinomial(probs, 1))]


def _ended(tokens: list[int], s: Sampling) -> bool:
    return tokens[-1] in s.eos or len(tokens) >= s.max_new or s.stopped(tokens)


def row_kv(cache: Any, row: int, positions: Any) -> list[tuple[Any, Any]]:
    """One row's keys and values at `positions` (its unmasked ones), contiguous: [1, heads, n, dim]."""
    return [(layer.keys[row:row + 1, :, positions].clone(), layer.values[row:row + 1, :, positions].clone())
            for layer in cache.layers]
