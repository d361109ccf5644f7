"""Per-token teacher-student divergence on trajectories: the signal on-policy distillation trains on.

For every token a trajectory trains (its assistant spans, as `encode` labels them), the KL between the
student's and the teacher's next-token distributions at that position, at temperature 1. `onpolicy --mode
reverse-kl` writes it for each round's rollouts as `token_kl.jsonl` beside them (one line per trajectory:
per assistant message, `[start, end, kl]` char ranges of its text, and the mean per assistant turn), which
`trajdistill view` overlays on the text and rounds.json sums up per turn position. With a served teacher,
which gives the log-probability of each sampled token only, a token's value is the one-sample estimate
log p_student - log p_teacher of its reverse KL (its mean over samples is the KL; one value can be < 0).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterable

from trajdistill.agents import load_causal_lm
from trajdistill.envs import ConfigError
from trajdistill.trajectories import Trajectory

from ._data import read_records, write_records
from ._encode import encode, render
from ._trainer import kd_divergence

TOKEN_KL_FILE = "token_kl.jsonl"


def token_kl(trajectories: Iterable[Trajectory], student: str, teacher: str, kl: str = "reverse") -> list[dict[str, Any]]:
    """One record per trajectory: {"id", "messages": {index: [[start, end, kl], ...]}, "turns": [mean kl, ...]}."""
    import torch

    s_model, tokenizer = load_causal_lm(student)
    t_model, _ = load_causal_lm(teacher)
    out = []
    for traj in trajectories:
        enc = encode(traj, tokenizer)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            values = kd_divergence(s_model(ids).logits[0, :-1].float(), t_model(ids).logits[0, :-1].float(), kl, 1.0)
        trained = [i for i in range(1, len(enc.labels)) if enc.labels[i] != -100]  # position i-1 predicts token i
        out.append(_record(traj, tokenizer, enc.offsets, [(i, float(values[i - 1])) for i in trained]))
    return out


async def served_token_logprobs(trajectories: list[Trajectory], student: str,
                                teacher: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score every trained token of the trajectories under a served teacher (a policy with `prompt_logprobs`,
    e.g. `vllm-serve:` or an `openai:` vLLM server) and under the local student. Returns the records of
    `teacher_logprobs.jsonl` (what the trainer trains on) and the token KL records, where a token's value is
    the sampled-token estimate log p_student - log p_teacher of its reverse KL."""
    import torch

    model, tokenizer = load_causal_lm(student)
    encoded = [encode(t, tokenizer) for t in trajectories]
    served = await asyncio.gather(*(teacher.prompt_logprobs(list(e.input_ids)) for e in encoded))
    stored, kl = [], []
    if served:  # one trajectory's tokens show a tokenizer mismatch; checking every one only repeats the decode
        _check_tokenizer(tokenizer, served[0], teacher)
    for traj, enc, lps in zip(trajectories, encoded, served):
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            own = model(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        trained = [i for i in range(1, len(enc.labels)) if enc.labels[i] != -100]
        stored.append({"id": traj.id, "tokens": len(enc.input_ids),
                       "logprobs": [[i, round(lps[i]["logprob"], 6)] for i in trained]})
        kl.append(_record(traj, tokenizer, enc.offsets, [(i, float(own[i - 1]) - lps[i]["logprob"]) for i in trained]))
    return stored, kl


def _check_tokenizer(tokenizer: Any, scored: list[dict[str, Any] | None], teacher: Any) -> None:
    """The server decodes our token ids as we do, or its log-probabilities are of other tokens."""
    for entry in scored[1:]:
        ours = tokenizer.decode([entry["id"]])
        if entry["token"] is not None and "\ufffd" not in ours + entry["token"] and entry["token"] != ours:
            raise ConfigError(f"teacher {teacher.spec} has another tokenizer than the student: token id "
                              f"{entry['id']} is {entry['token']!r} there and {ours!r} here; a white-box teacher "
                              "needs the student's tokenizer")


def _record(traj: Trajectory, tokenizer: Any, offsets: list[tuple[int, int]],
            values: list[tuple[int, float]]) -> dict[str, Any]:
    """Token KLs as char ranges of each assistant message's own text."""
    _, ranges = render(traj, tokenizer)
    messages: dict[str, list[list[float]]] = {}
    for token, value in values:
        start, end = offsets[token]
        for index, (a, b) in ranges.items():
            if a <= start < b:  # the end-of-turn token lies past its text: it is in no message's range
                messages.setdefault(str(index), []).append([start - a, min(end, b) - a, round(value, 5)])
                break
    turns = [sum(v for *_, v in messages[k]) / len(messages[k]) if k in messages else None
             for k in map(str, sorted(ranges))]
    return {"id": traj.id, "messages": messages, "turns": turns}


def write_token_kl(run: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    """Write `token_kl.jsonl` into `run` whole: a cut-off write leaves none."""
    return write_records(run, TOKEN_KL_FILE, records)


def read_token_kl(run: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Trajectory id -> its record; {} when the run has no token_kl.jsonl."""
    path = Path(run) / TOKEN_KL_FILE
    if not path.is_file():
        return {}
    return read_records(path, lambda r: r, "token KL", "delete the file or rerun the round")


def kl_by_turn(records: list[dict[str, Any]]) -> list[float | None]:
    """Mean token KL at the k-th assistant turn of an episode (k = 1, 2, ...), over the records."""
    per: list[list[float]] = []
    for r in records:
        for k, v in enumerate(r["turns"]):
            per.extend([] for _ in range(k + 1 - len(per)))
            if v is not None:
                per[k].append(v)
    return [sum(v) / len(v) if v else None for v in per]
