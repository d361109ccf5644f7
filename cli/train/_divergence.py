"""Per-token teacher-student divergence on trajectories: the signal on-policy distillation trains on.

For every token a trajectory trains (its assistant spans, as `encode` labels them), the KL between the
student's and the teacher's next-token distributions at that position, at temperature 1. `onpolicy --mode
reverse-kl` writes it for each round's rollouts as `token_kl.jsonl` beside them (one line per trajectory:
per assistant message, `[start, end, kl]` char ranges of its text, and the mean per assistant turn), which
`trajdistill view` overlays on the text and rounds.json sums up per turn position.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from trajdistill.agents import load_causal_lm
from trajdistill.trajectories import RunError, Trajectory

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
    """Write `token_kl.jsonl` into `run` whole (temp file, then rename): a cut-off write leaves none."""
    path = Path(run) / TOKEN_KL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_token_kl(run: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Trajectory id -> its record; {} when the run has no token_kl.jsonl."""
    path = Path(run) / TOKEN_KL_FILE
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            out[record["id"]] = record
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{path}: line {n} is not a token KL record; delete the file or rerun the round") from None
    return out


def kl_by_turn(records: list[dict[str, Any]]) -> list[float | None]:
    """Mean token KL at the k-th assistant turn of an episode (k = 1, 2, ...), over the records."""
    per: list[list[float]] = []
    for r in records:
        for k, v in enumerate(r["turns"]):
            per.extend([] for _ in range(k + 1 - len(per)))
            if v is not None:
                per[k].append(v)
    return [sum(v) / len(v) if v else None for v in per]
