"""Encoding with the student's chat template: span kinds per token, labels, end-of-turn, truncation."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings

from trajdistill.trajectories import Message, SegmentRules, Span, assistant_text, segment, segment_run
from trajdistill.train import SPAN_KINDS, encode
from trajdistill.train._encode import IGNORE_INDEX, _spans_for, render

from test_spans import call, expert_run, expert_store, make_traj, trajectories  # noqa: F401  (fixtures)

KIND_NAMES = {v: k for k, v in SPAN_KINDS.items()}


@pytest.fixture(scope="module")
def tok():
    from trajdistill.agents._models import smollm2_tokenizer

    return smollm2_tokenizer()


def first_char(text: str, start: int, end: int) -> int:
    """Where a token's first non-space character is (its start when it is all space)."""
    pos = start
    while pos < end and text[pos].isspace():
        pos += 1
    return pos if pos < end else start


def check_encoding(traj, enc, tok) -> None:
    """Every trained token lies in an assistant text (or is the end-of-turn token right after one), in a
    trained span of the kind it carries; everything else is -100."""
    _, ranges = render(traj, tok)
    spans = _spans_for(traj, None)  # the stored spans when they tile the turns, else segment(traj)
    abs_spans = [(ranges[s.message][0] + s.start, ranges[s.message][0] + s.end, s.kind, s.message)
                 for s in spans]
    ends = {end: i for i, (_, end) in ranges.items()}
    special = set(tok.all_special_ids)
    assert len(enc.input_ids) == len(enc.labels) == len(enc.span_kinds) == len(enc.attention_mask)
    for t, (tid, label, kind, (a, b)) in enumerate(zip(enc.input_ids, enc.labels, enc.span_kinds, enc.offsets)):
        assert label == (tid if kind else IGNORE_INDEX)
        if not kind:
            continue
        pos = first_char(enc.text, a, b)
        inside = [s for s in abs_spans if s[0] <= pos < s[1]]
        if inside:
            assert inside[0][2] == KIND_NAMES[kind]  # never context, never a prompt or observation
        else:  # the end-of-turn token after a turn, trained with the kind of the turn's last span
            assert tid in special and a in ends
            last = max((s for s in abs_spans if s[3] == ends[a]), key=lambda s: s[1])
            assert last[2] == KIND_NAMES[kind]
    counts = {name: sum(k == v for k in enc.span_kinds) for name, v in SPAN_KINDS.items()}
    assert enc.n_tokens == counts


def test_react_trajectory_with_smollm2_template(tok):
    traj = make_traj([Message(role="assistant", content='Thought: add\nAction: python\nAction Input: {"code": "1"}'),
                      Message(role="tool", content="2", name="python"),
                      Message(role="assistant", content="Thought: done\nFinal Answer: 2")])
    enc = encode(traj, tok)
    check_encoding(traj, enc, tok)
    # SmolLM2's template does not name a tool role, so observations are user turns (as the hf policy renders them)
    assert "<|im_start|>user\nObservation: 2<|im_end|>" in enc.text
    trained = {k: "".join(enc.text[a:b] for (a, b), kk in zip(enc.offsets, enc.span_kinds) if kk == v)
               for k, v in SPAN_KINDS.items()}
    assert trained["reason"] == "Thought: add\nThought: done\n"
    assert trained["act"] == 'Action: python\nAction Input: {"code": "1"}<|im_end|>'
    assert trained["answer"] == "Final Answer: 2<|im_end|>"
    # nothing of the system prompt, the task or the observation is trained
    assert all(label == IGNORE_INDEX for (a, _), label in zip(enc.offsets, enc.labels)
               if a < enc.text.index("<|im_start|>assistant"))


def test_native_trajectory_and_tool_role_template(tok):
    first = Message(role="assistant", content="", reasoning="use python",
                    tool_calls=[call("python", {"code": "print(2)"}), call("search", {"q": "x"}, 1)])
    traj = make_traj([first, Message(role="tool", content="2", tool_call_id="call_0", name="python"),
                      Message(role="tool", content="none", tool_call_id="call_1", name="search"),
                      Message(role="assistant", content="2")])
    enc = encode(traj, tok)
    check_encoding(traj, enc, tok)
    assert assistant_text(first) in enc.text and enc.n_tokens["act"] > 0 and enc.n_tokens["answer"] == 2  # 2 + eot
    tool_tok = copy.deepcopy(tok)
    tool_tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}<|im_start|>tool\n{{ m['content'] }}"
                              "<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                              "{% endif %}{% endfor %}")
    enc2 = encode(traj, tool_tok)
    check_encoding(traj, enc2, tool_tok)
    assert "<|im_start|>tool\nnone<|im_end|>" in enc2.text and "Observation:" not in enc2.text
    assert enc2.n_tokens == enc.n_tokens


def test_context_turns_are_never_trained(tok):
    failed = Message(role="assistant", content="Thought: by hand\nFinal Answer: 5")
    switch = Message(role="assistant", content="Wait, let me verify.\nAction: python\nAction Input: {}")
    traj = make_traj([failed, Message(role="user", content="Wrong."), switch],
                     spans=[Span(message=2, start=0, end=len(failed.content), kind="context")])
    enc = encode(traj, tok)
    check_encoding(traj, enc, tok)
    start, end = enc.text.index(failed.content), enc.text.index(failed.content) + len(failed.content) + 12
    assert all(label == IGNORE_INDEX for (a, _), label in zip(enc.offsets, enc.labels) if start <= a < end)
    assert enc.n_tokens["reason"] > 0 and enc.n_tokens["answer"] == 0


def test_a_short_text_is_found_in_its_own_turn_not_in_the_header(tok):
    # "r" also occurs in "<|im_start|>"; the turn header must not swallow it
    traj = make_traj([Message(role="assistant", content="r"), Message(role="tool", content="x", name="python")])
    enc = encode(traj, tok)
    check_encoding(traj, enc, tok)
    trained = "".join(enc.text[a:b] for (a, b), k in zip(enc.offsets, enc.span_kinds) if k)
    assert trained == "r<|im_end|>"


def test_stored_spans_are_used_and_rules_resegment(tok):
    traj = make_traj([Message(role="assistant", content="Thought: a\nFinal Answer: 1")])
    (filled,) = segment_run([traj], SegmentRules(answer_markers=("Answer:",)))
    assert encode(filled, tok).n_tokens["answer"] == 0  # stored spans win: all of it is stray reason there
    assert encode(filled, tok, rules=SegmentRules()).n_tokens["answer"] > 0


def test_truncation_keeps_the_first_tokens_and_never_trains_a_cut_turn(tok):
    first = Message(role="assistant", content="Thought: look\nAction: python\nAction Input: {}")
    second = Message(role="assistant", content="Thought: " + "word " * 50 + "\nFinal Answer: 1")
    traj = make_traj([first, Message(role="tool", content="2"), second])
    full = encode(traj, tok)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    end_of_first = next(i for i, (t, k) in enumerate(zip(full.input_ids, full.span_kinds)) if k and t == end) + 1
    end_of_second = max(i for i, k in enumerate(full.span_kinds) if k)
    assert full.input_ids[end_of_second] == end
    for at in (end_of_first + 30, end_of_second):  # inside the second turn's text; just before its end-of-turn
        cut = encode(traj, tok, max_length=at)
        assert cut.cut and len(cut) == at and cut.input_ids == full.input_ids[:at]
        assert cut.labels[:end_of_first] == full.labels[:end_of_first]  # the whole first turn is trained
        assert set(cut.labels[end_of_first:]) == {IGNORE_INDEX}  # no token of the cut turn is
        assert cut.n_tokens["answer"] == 0 and 0 < cut.n_tokens["act"] == full.n_tokens["act"]
    whole = encode(traj, tok, max_length=end_of_second + 1)  # only the newline after the last turn is cut
    assert whole.cut and whole.labels == full.labels[:end_of_second + 1]
    assert set(whole.columns()) == {"input_ids", "attention_mask", "labels", "span_kinds"}


def test_slow_tokenizer_and_a_template_that_rewrites_text_are_errors(tok):
    from transformers import ByT5Tokenizer

    traj = make_traj([Message(role="assistant", content="Thought: a \nFinal Answer: 1  ")])
    with pytest.raises(ValueError, match="fast tokenizer"):
        encode(traj, ByT5Tokenizer())
    trimming = copy.deepcopy(tok)
    trimming.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(ValueError, match="cannot be located"):
        encode(traj, trimming)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=trajectories())
def test_property_trained_tokens_lie_in_trained_spans(tok, case):
    traj, _ = case
    enc = encode(traj, tok)
    check_encoding(traj, enc, tok)
    # an assistant turn trains its end-of-turn token unless the turn ends in context or has no text
    last = {s.message: s.kind for s in _spans_for(traj, None) if s.end > s.start}  # the last span wins
    turns = [i for i, kind in last.items() if kind != "context"]
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t, k in zip(enc.input_ids, enc.span_kinds) if k and t == eot) == len(turns)


def test_encode_real_expert_trajectories(tok, expert_run):
    for traj in segment_run(expert_run):
        enc = encode(traj, tok)
        check_encoding(traj, enc, tok)
        assert enc.n_tokens["reason"] > 0 and enc.n_tokens["answer"] > 0
        assert (enc.n_tokens["act"] > 0) == (traj.teacher.spec == "expert:coder")
        answer = "".join(enc.text[a:b] for (a, b), k in zip(enc.offsets, enc.span_kinds) if k == SPAN_KINDS["answer"])
        assert answer == f"Final Answer: {traj.outcome.final_answer}<|im_end|>"
