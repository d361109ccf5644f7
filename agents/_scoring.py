"""Token-level scores of finished episodes under a local model: per-turn entropy and answer confidence.

The gate needs what a black-box run does not record: how sure the student was of its final answer
(the probability of the answer's tokens given the episode so far) and how spread its next-token
distributions were (the mean entropy of each assistant turn, a mode-collapse signal). Both come from
one teacher-forced forward pass per assistant turn over the prompt the policy saw and the text it wrote.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from trajdistill.envs import REACT_MARKERS

from ._hf import _default_device, load_cached, render_prompt

_ANSWER = re.compile(rf"^(?:{'|'.join(map(re.escape, REACT_MARKERS['answer']))})[ \t]*", re.MULTILINE)


@dataclass
class EpisodeScores:
    entropy: list[float] = field(default_factory=list)  # mean next-token entropy (nats) of each assistant turn
    confidence: float | None = None  # P(final answer tokens | everything before them); None: no final answer


def answer_start(text: str) -> int | None:
    """Where the final answer's value starts in an assistant turn (after `Final Answer:`), or None."""
    marks = list(_ANSWER.finditer(text))
    if not marks or not text[marks[-1].end():].strip():
        return None
    return marks[-1].end()


def score_episodes(target: str, trajectories: Iterable[Any], *, dtype: str = "auto",
                   device: str | None = None) -> list[EpisodeScores]:
    """Scores of each trajectory's assistant turns under the local model `target` (an hf path or alias)."""
    import torch

    model, tok = load_cached(target, device or _default_device(), dtype)
    out = []
    with torch.inference_mode():
        for traj in trajectories:
            out.append(_score(model, tok, [m.openai() for m in traj.messages]))
    return out


def _score(model: Any, tok: Any, messages: list[dict[str, Any]]) -> EpisodeScores:
    scores = EpisodeScores()
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m.get("content"):
            continue
        text = m["content"]
        cut = answer_start(text)
        head, answer = (text, "") if cut is None else (text[:cut], text[cut:].strip())
        logp, n_answer = _logprobs(model, tok, render_prompt(tok, messages[:i]), head, answer)
        scores.entropy.append(float(-(logp.exp() * logp).sum(-1).mean()))
        if n_answer:
            picked = logp[-n_answer:].gather(-1, _ids(tok, answer, logp.device).unsqueeze(-1))
            scores.confidence = math.exp(float(picked.sum()))
    return scores


def _logprobs(model: Any, tok: Any, prompt: str, head: str, answer: str) -> tuple[Any, int]:
    """Log-probabilities of every written token (head, then answer) given what precedes it; answer tokens."""
    import torch

    device = next(model.parameters()).device
    p, h, a = (_ids(tok, s, device) for s in (prompt, head, answer))
    ids = torch.cat([p, h, a]).unsqueeze(0)
    logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float()
    return torch.log_softmax(logits, dim=-1), len(a)


def _ids(tok: Any, text: str, device: Any) -> Any:
    import torch

    return torch.tensor(tok(text, add_special_tokens=False).input_ids if text else [], dtype=torch.long,
                        device=device)
