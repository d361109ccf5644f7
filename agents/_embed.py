"""Text embeddings from a small causal LM, and the `embedding` method of the curate `near-dup` step.

The embedding of a text is the mean of the model's last hidden states over its tokens (padding left out),
L2-normalized, so an inner product is a cosine. The default model is the embedded SmolLM2-135M-Instruct
(`smollm2-135m`), loaded through `load_causal_lm`: nothing is downloaded. The method lives here rather than
beside the step because it loads a model, which is this layer's job; it registers in `near_dup_methods`
when `trajdistill.agents` is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar

from trajdistill.envs import ConfigError
from trajdistill.trajectories import NearDupMethod, near_dup_methods

from ._models import SMOLLM2, bf16_is_fast, load_causal_lm

Progress = Callable[[int, int], None]  # (texts embedded, texts)


@lru_cache(maxsize=1)
def _encoder(model: str) -> tuple[Any, Any]:
    """(model, tokenizer) once per process: a curate run and a test module embed many batches with one model."""
    import torch

    lm, tokenizer = load_causal_lm(model, dtype=torch.bfloat16 if bf16_is_fast() else torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def embed_texts(texts: list[str], model: str = SMOLLM2, *, batch_size: int = 16, max_tokens: int = 512,
                progress: Progress | None = None) -> Any:
    """An (n, hidden) float32 array: each text's mean-pooled last hidden state, L2-normalized. Texts go in
    batches of similar length (less padding); the first `max_tokens` tokens of a text stand for it."""
    import numpy as np
    import torch

    lm, tokenizer = _encoder(str(model))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), lm.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_tokens)
        with torch.inference_mode():
            hidden = lm.base_model(**batch).last_hidden_state.float()  # the body only: no vocabulary logits
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        if progress:
            progress(min(start + batch_size, len(texts)), len(texts))
    return out


def cosine_neighbours(vectors: Any, threshold: float, skip: set[int] = frozenset()) -> list[dict[int, float]]:
    """Per row of unit `vectors`, the earlier rows whose cosine is at least `threshold`: an exact FAISS
    inner-product range search. Rows in `skip` have no neighbours and are nobody's."""
    import faiss
    import numpy as np

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    lims, sims, ids = index.range_search(vectors, float(threshold) - 1e-6)  # it keeps scores above the radius
    out: list[dict[int, float]] = []
    for i in range(len(vectors)):
        row = zip(ids[lims[i]:lims[i + 1]].tolist(), sims[lims[i]:lims[i + 1]].tolist())
        out.append({} if i in skip else {j: min(1.0, s) for j, s in row if j < i and j not in skip})
    return out


@near_dup_methods.register("embedding")
@dataclass
class EmbeddingSimilarity(NearDupMethod):
    """Cosine similarity of model embeddings of the assistant text (`embed_texts`), searched with FAISS."""

    model: str = SMOLLM2
    batch_size: int = 16
    max_tokens: int = 512
    metric: ClassVar[str] = "cosine"
    default_threshold: ClassVar[float] = 0.995  # bench/RESULTS.md: copies >= 0.997; other categories <= 0.991

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"near-dup batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 8:
            raise ConfigError(f"near-dup max_tokens must be a whole number >= 8, got {self.max_tokens!r}")
        if importlib.util.find_spec("faiss") is None:
            raise ConfigError("near-dup method embedding needs FAISS: pip install faiss-cpu")

    def __call__(self, texts: list[str], threshold: float, progress: Progress | None) -> list[dict[int, float]]:
        import numpy as np

        words = [i for i, t in enumerate(texts) if t.strip()]  # a blank text has no tokens to pool
        vectors = np.zeros((len(texts), 1), dtype=np.float32)
        if words:
            found = embed_texts([texts[i] for i in words], self.model, batch_size=self.batch_size,
                                max_tokens=self.max_tokens, progress=progress)
            vectors = np.zeros((len(texts), found.shape[1]), dtype=np.float32)
            vectors[words] = found
        return cosine_neighbours(vectors, threshold, set(range(len(texts))) - set(words))
