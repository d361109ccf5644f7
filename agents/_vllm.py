"""`vllm:<path|alias>`: the offline vLLM engine in this process, for CUDA machines.

vLLM is imported on first use. Concurrent episodes' requests are batched by the same Batcher as
the hf backend, and each batch is one `LLM.generate` call in a thread. A PEFT adapter dir runs as
a LoRA on its base model.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from typing import Any

from trajdistill.envs import PolicyRequest, Turn

from ._hf import Batcher, cut_at_stop, render_prompt
from ._models import is_peft_adapter, resolve_model
from ._openai import REACT_STOP
from ._options import VLLMOptions
from ._policy import PolicyError

FIX = ("pip install 'trajdistill[vllm]' on a CUDA machine, or serve the model with `vllm serve` "
       "and use openai:MODEL@URL")


def vllm_unavailable() -> str | None:
    """Why the in-process engine cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


@dataclass
class _Item:
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]


class VLLMPolicy:
    backend = "vllm"
    holds_model = True  # the Ray executor runs it as one actor that every worker calls
    action_format = "react"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", options: VLLMOptions | None = None,
                 **fields: Any):
        o = options or VLLMOptions.parse(fields)
        why = vllm_unavailable()
        if why:
            raise PolicyError(f"vllm:{target} cannot run: {why}; {FIX}")
        self.options = o
        self.spec = spec or f"vllm:{target}"
        self.model = target
        self.temperature, self.max_tokens, self.seed = o.temperature, o.max_new_tokens, o.seed
        self._engine_options: dict[str, Any] = {"gpu_memory_utilization": o.gpu_memory_utilization}
        if o.max_model_len:
            self._engine_options["max_model_len"] = o.max_model_len
        self._llm: Any = None
        self._lora: Any = None
        self._batcher: Batcher[_Item, Any] = Batcher(self._generate, o.batch_size, o.batch_wait_s)

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def _ensure_engine(self) -> None:
        if self._llm is not None:
            return
        from vllm import LLM

        path = resolve_model(self.model, allow_hub=True)
        if is_peft_adapter(path):
            from vllm.lora.request import LoRARequest

            adapter = json.loads((path / "adapter_config.json").read_text())
            base = resolve_model(adapter["base_model_name_or_path"], allow_hub=True)
            self._llm = LLM(model=str(base), enable_lora=True, max_lora_rank=max(8, int(adapter.get("r", 8))),
                            **self._engine_options)
            self._lora = LoRARequest("adapter", 1, str(path))
        else:
            self._llm = LLM(model=str(path), **self._engine_options)

    async def __call__(self, request: PolicyRequest) -> Turn:
        start = time.monotonic()
        out = await self._batcher.submit(_Item(request.messages, {**self.sampling(), **request.sampling}))
        completion = out.outputs[0]
        return Turn(content=cut_at_stop(completion.text, REACT_STOP), latency_s=time.monotonic() - start,
                    usage={"prompt_tokens": len(out.prompt_token_ids or []),
                           "completion_tokens": len(completion.token_ids)})

    def _generate(self, items: list[_Item]) -> list[Any]:
        from vllm import SamplingParams

        self._ensure_engine()
        tokenizer = self._llm.get_tokenizer()
        prompts = [render_prompt(tokenizer, it.messages) for it in items]
        params = [SamplingParams(temperature=float(it.sampling.get("temperature", 0.0)),
                                 max_tokens=int(it.sampling.get("max_tokens", self.max_tokens)),
                                 seed=it.sampling.get("seed"), stop=REACT_STOP) for it in items]
        return self._llm.generate(prompts, params, lora_request=self._lora, use_tqdm=False)

    async def close(self) -> None:
        await self._batcher.close()
