"""Render a trajectory with the student's chat template and label its tokens by span kind.

No template needs `{% generation %}` markers: the conversation is rendered to a string, each
assistant turn's text (`assistant_text`) is found in it, and the tokenizer's offset mapping
says which characters each token covers. A token belongs to the span holding its first
non-space character. Only reason, act and answer tokens are trained; the prompt, the system
prompt, observations and context spans are not.

The end-of-turn token right after each assistant text (`<|im_end|>` for ChatML) is trained too,
with the kind of the turn's last span, so the student learns to stop. It counts only when it is a
special token of the tokenizer, and never after a context turn.

`max_length` keeps the first tokens, and a turn it cuts (its end-of-turn token is past the cut) is not trained
at all: a turn's head alone teaches the student to run on without acting or stopping.

`labels` are the input ids where trained and -100 elsewhere, unshifted (the model shifts them).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from trajdistill.envs import ConfigError
from trajdistill.trajectories import (Message, SegmentRules, Span, Trajectory, assistant_text, segment,
                                      segment_as_env)

SPAN_KINDS = {"reason": 1, "act": 2, "answer": 3}  # span_kinds ids; 0 is untrained (prompt, context)
IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenized trajectory; every list has one entry per token."""

    input_ids: list[int]
    attention_mask: list[int]
    labels: list[int]
    span_kinds: list[int]
    n_tokens: dict[str, int] = field(default_factory=dict)  # trained tokens per kind: reason, act, answer
    text: str = ""  # the rendered conversation
    offsets: list[tuple[int, int]] = field(default_factory=list)  # char range of each token in `text`
    cut: bool = False  # max_length dropped tokens from the end

    def __len__(self) -> int:
        return len(self.input_ids)

    def columns(self) -> dict[str, list[int]]:
        """The per-token lists a trainer's dataset needs."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                "span_kinds": self.span_kinds}


def encode(traj: Trajectory, tokenizer: Any, *, max_length: int | None = None,
           rules: SegmentRules | None = None) -> Encoded:
    """Tokenize `traj` for SFT with per-token span kinds. Needs a fast tokenizer (offset mapping).

    Spans come from `segment(traj, rules)` when `rules` are given, else from `traj.spans` when they cover the
    assistant turns, else from the segmenter the trajectory's env names.
    With `max_length`, only the first `max_length` tokens are kept, and a turn they cut is not trained.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encode needs a fast tokenizer with offset mapping; {type(tokenizer).__name__} is slow")
    text, ranges = render(traj, tokenizer)
    spans = _spans_for(traj, rules)
    bounds = _absolute_spans(spans, ranges)
    batch = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(batch["input_ids"]), [tuple(o) for o in batch["offset_mapping"]]
    kinds = [_kind_at(text, s, e, bounds) for s, e in offsets]
    _mark_end_of_turn(kinds, ids, offsets, ranges, spans, tokenizer)
    cut = max_length is not None and len(ids) > max_length
    if cut:
        _untrain_cut_turn(kinds, offsets, ranges, max_length)
        ids, offsets, kinds = ids[:max_length], offsets[:max_length], kinds[:max_length]
    labels = [t if k else IGNORE_INDEX for t, k in zip(ids, kinds)]
    counts = {name: sum(k == v for k in kinds) for name, v in SPAN_KINDS.items()}
    return Encoded(input_ids=ids, attention_mask=[1] * len(ids), labels=labels, span_kinds=kinds,
                   n_tokens=counts, text=text, offsets=offsets, cut=cut)


# ---- rendering ----------------------------------------------------------------------------------


def template_knows_tool_role(tokenizer: Any) -> bool:
    """Whether the chat template names a `tool` role; the same test the hf policy uses at inference,
    so a student is trained on the prompt layout it will see."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "'tool'" in template or '"tool"' in template


def chat_dicts(traj: Trajectory, tokenizer: Any) -> list[dict[str, str]]:
    """The messages as the template sees them: assistant turns as their trained text, and tool
    results as user `Observation:` turns unless the template knows a tool role."""
    tool_role = template_knows_tool_role(tokenizer)
    out = []
    for m in traj.messages:
        if m.role == "assistant":
            out.append({"role": "assistant", "content": assistant_text(m)})
        elif m.role == "tool" and not tool_role:
            obs = m.content if m.content.startswith("Observation:") else f"Observation: {m.content}"
            out.append({"role": "user", "content": obs})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def render(traj: Trajectory, tokenizer: Any) -> tuple[str, dict[int, tuple[int, int]]]:
    """The rendered conversation and, per assistant message index, its text's char range in it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the student tokenizer has no chat template; give a tokenizer with one")
    dicts = chat_dicts(traj, tokenizer)
    text = tokenizer.apply_chat_template(dicts, tokenize=False)
    return text, locate(text, traj.messages, dicts, _turn_starts(text, dicts, tokenizer))


def _turn_starts(text: str, dicts: list[dict[str, str]], tokenizer: Any) -> dict[int, int]:
    """Where each assistant turn's text may start: after the conversation so far plus the generation
    prompt, when the template renders that as a prefix of the whole. Without it a short text like
    "r" would be found inside the turn header (`<|im_start|>`)."""
    starts = {}
    for i, d in enumerate(dicts):
        if d["role"] != "assistant" or i == 0:
            continue
        head = tokenizer.apply_chat_template(dicts[:i], tokenize=False, add_generation_prompt=True)
        if text.startswith(head):
            starts[i] = len(head)
    return starts


def locate(text: str, messages: list[Message], dicts: list[dict[str, str]],
           turn_starts: dict[int, int] | None = None) -> dict[int, tuple[int, int]]:
    """Find each message's content in the rendered text, in order. Other messages are located too
    (when the template shows them verbatim) so that an assistant text is never matched inside an
    earlier prompt or observation; `turn_starts` pins where an assistant text may begin."""
    ranges: dict[int, tuple[int, int]] = {}
    turn_starts = turn_starts or {}
    cursor = 0
    for i, (m, d) in enumerate(zip(messages, dicts)):
        content = d["content"]
        if m.role == "assistant":
            cursor = max(cursor, turn_starts.get(i, 0))
        at = text.find(content, cursor)
        if m.role != "assistant":
            if content and at >= 0:
                cursor = at + len(content)
            continue
        if at < 0:
            raise ConfigError(f"message {i}: the chat template changed the assistant text, so it cannot be "
                             "located in the rendered conversation")
        ranges[i] = (at, at + len(content))
        cursor = at + len(content)
    return ranges


# ---- labelling ----------------------------------------------------------------------------------


def _spans_for(traj: Trajectory, rules: SegmentRules | None) -> list[Span]:
    if rules is not None:
        return segment(traj, rules)
    return traj.spans if _covers(traj) else segment_as_env(traj)


def _covers(traj: Trajectory) -> bool:
    """Whether the stored spans tile every assistant text exactly (as `segment` leaves them)."""
    by_msg: dict[int, list[Span]] = {}
    for s in traj.spans:
        if s.message >= len(traj.messages) or traj.messages[s.message].role != "assistant":
            return False
        by_msg.setdefault(s.message, []).append(s)
    for i, m in enumerate(traj.messages):
        if m.role != "assistant":
            continue
        pos = 0
        for s in sorted(by_msg.get(i, []), key=lambda s: s.start):
            if s.start != pos:
                return False
            pos = s.end
        if pos != len(assistant_text(m)):
            return False
    return bool(traj.spans)


Bounds = tuple[list[int], list[tuple[int, int, int]]]


def _absolute_spans(spans: list[Span], ranges: dict[int, tuple[int, int]]) -> Bounds:
    """Span (start, end, kind id) rows sorted by start, in rendered-text coordinates (context is 0)."""
    rows = sorted((ranges[s.message][0] + s.start, ranges[s.message][0] + s.end, SPAN_KINDS.get(s.kind, 0))
                  for s in spans if s.message in ranges and s.end > s.start)
    return [r[0] for r in rows], rows


def _kind_at(text: str, start: int, end: int, bounds: Bounds) -> int:
    """The kind of the span holding the token's first non-space character (or its first character)."""
    starts, rows = bounds
    pos = start
    while pos < end and text[pos].isspace():
        pos += 1
    if pos == end:
        pos = start
    k = bisect_right(starts, pos) - 1
    if k >= 0 and rows[k][0] <= pos < rows[k][1]:
        return rows[k][2]
    return 0


def _mark_end_of_turn(kinds: list[int], ids: list[int], offsets: list[tuple[int, int]],
                      ranges: dict[int, tuple[int, int]], spans: list[Span], tokenizer: Any) -> None:
    last: dict[int, Span] = {}
    for s in spans:
        if s.end > s.start and (s.message not in last or s.end > last[s.message].end):
            last[s.message] = s
    special = set(tokenizer.all_special_ids)
    starts = [o[0] for o in offsets]
    for i, (_, end) in ranges.items():
        t = _first_token_from(starts, end)
        if t is not None and i in last and ids[t] in special and kinds[t] == 0:
            kinds[t] = SPAN_KINDS.get(last[i].kind, 0)


def _untrain_cut_turn(kinds: list[int], offsets: list[tuple[int, int]], ranges: dict[int, tuple[int, int]],
                      cut: int) -> None:
    """Zero the kinds of the assistant turn whose tokens start before `cut` and whose end-of-turn token (or
    last token) is at or after it."""
    starts = [o[0] for o in offsets]
    for begin, end in ranges.values():
        first, last = max(0, bisect_right(starts, begin) - 1), _first_token_from(starts, end)
        if first < cut <= (len(starts) - 1 if last is None else last):
            kinds[first:cut] = [0] * (cut - first)


def _first_token_from(starts: list[int], pos: int) -> int | None:
    """The first token that starts at or after `pos`."""
    k = bisect_left(starts, pos)
    return k if k < len(starts) else None
