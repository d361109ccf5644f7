"""Typed policy options: one generation config that every backend shares, plus each backend's own fields.

`--agent-option KEY=VALUE` and the `agent_options` of configs land here. A value is converted to its
field's type; a key the backend does not take, or a value out of range, is a ConfigError that names it.
The classes are light (no backend imports), so the registry can hold them next to lazy factories.
"""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from trajdistill.envs import ConfigError, UnknownNameError

O = TypeVar("O", bound="GenerationConfig")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _opt(default: Any, help: str, **limits: float) -> Any:
    """A field with help text and bounds (`min` inclusive, `above` exclusive, `max` inclusive)."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class GenerationConfig:
    """Sampling settings every backend takes, each under one name (an env's expert ignores them)."""

    max_new_tokens: int | None = _opt(None, "Most tokens one turn may generate (backend default when unset).", min=1)
    temperature: float = _opt(0.0, "Sampling temperature; 0 is greedy.", min=0)
    seed: int | None = _opt(None, "Sampling seed.")

    backend: ClassVar[str] = ""
    default_max_new_tokens: ClassVar[int] = 512
    aliases: ClassVar[dict[str, str]] = {"max_tokens": "max_new_tokens"}  # the OpenAI API's name

    def __post_init__(self) -> None:
        if self.max_new_tokens is None:
            self.max_new_tokens = self.default_max_new_tokens
        problems = [p for f in dataclasses.fields(self) if (p := _out_of_range(f, getattr(self, f.name)))]
        if problems:
            raise ConfigError(f"{self.backend} policy options: {'; '.join(problems)}")

    @classmethod
    def names(cls) -> list[str]:
        """The keys this backend takes, aliases included."""
        return [f.name for f in dataclasses.fields(cls)] + sorted(cls.aliases)

    @classmethod
    def parse(cls: type[O], options: Mapping[str, Any]) -> O:
        """Options from a mapping of keys to values (typed, or text from KEY=VALUE); unknown keys are refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields - set(cls.aliases))
        if unknown:
            raise unknown_options([cls], unknown)
        hints = get_type_hints(cls)
        twice = [f"{a} and {n}" for a, n in cls.aliases.items() if a in options and n in options]
        if twice:
            raise ConfigError(f"{cls.backend} policy options {twice[0]} are the same setting; give one")
        values = {cls.aliases.get(k, k): v for k, v in options.items()}
        return cls(**{k: convert(f"{cls.backend} policy option {k}", v, hints[k]) for k, v in values.items()})


def unknown_options(classes: list[type[GenerationConfig]], unknown: list[str]) -> UnknownNameError:
    names = ", ".join(map(repr, unknown))
    if len(classes) == 1:
        return UnknownNameError(f"{classes[0].backend} policy has no option {names}; "
                                f"known: {', '.join(classes[0].names())}")
    known = "; ".join(f"{c.backend}: {', '.join(c.names())}" for c in classes)
    return UnknownNameError(f"no policy of {', '.join(c.backend for c in classes)} has option {names}; known: {known}")


def convert(what: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint`: bool, int, float, str, a Literal, or one of them or None."""
    origin = get_origin(hint)
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise ConfigError(f"{what} must be one of {', '.join(map(str, get_args(hint)))}, got {value!r}")
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        inner = [a for a in get_args(hint) if a is not type(None)]
        return convert(what, value, inner[0])
    if hint is bool:
        return _to_bool(what, value)
    if hint in (int, float):
        return _to_number(what, value, hint)
    return str(value) if hint is str else value


def _to_bool(what: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in _TRUE | _FALSE:
        return str(value).lower() in _TRUE
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def _to_number(what: str, value: Any, kind: type) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value) if kind is float else int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what} must be {'a number' if kind is float else 'an integer'}, got {value!r}") from None
    return number


def _out_of_range(f: dataclasses.Field, value: Any) -> str | None:
    m = f.metadata
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "min" in m and value < m["min"] or "max" in m and value > m["max"] or "above" in m and value <= m["above"]:
        bounds = [f">= {m['min']}" if "min" in m else "", f"> {m['above']}" if "above" in m else "",
                  f"<= {m['max']}" if "max" in m else ""]
        return f"{f.name} must be {' and '.join(b for b in bounds if b)}, got {value}"
    return None


@dataclass
class ExpertOptions(GenerationConfig):
    """An env's scripted expert: no options of its own; it takes the shared ones so one set fits every agent."""

    backend: ClassVar[str] = "expert"


@dataclass
class HFOptions(GenerationConfig):
    """`hf:`: transformers on the local device, with concurrent episodes' requests batched."""

    batch_size: int = _opt(8, "Requests of concurrent episodes generated together.", min=1)
    batch_wait_s: float = _opt(0.005, "How long a batch waits to fill, in seconds.", min=0)
    kv_cache_tokens: int = _opt(32768, "Tokens of keys and values kept for prefix reuse; 0 turns the cache off.",
                                min=0)
    device: str | None = _opt(None, "torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _opt(
        "auto", "Weights' dtype; auto is bfloat16 on CUDA and on CPUs with bf16 dot products (avx512_bf16, "
        "AMX), else float32.")
    strict_tools: bool = _opt(False, "Strict tool calls: each Action names a listed tool and its Action Input has "
                                     "the tool's parameters and value types (OpenAI's strict function calling, "
                                     "for ReAct text); Thought and Final Answer stay free.")

    backend: ClassVar[str] = "hf"
    default_max_new_tokens: ClassVar[int] = 256


@dataclass
class OpenAIOptions(GenerationConfig):
    """`openai:`: any OpenAI-compatible chat-completions server."""

    action_format: Literal["react", "tools"] = _opt("react", "ReAct text, or native tool calls.")
    base_url: str | None = _opt(None, "Server URL when the spec has no @URL (default: $OPENAI_BASE_URL, else "
                                      "OpenAI).")
    api_key: str | None = _opt(None, "API key (default: read from api_key_env).")
    api_key_env: str = _opt("OPENAI_API_KEY", "Environment variable that holds the API key.")
    concurrency: int = _opt(32, "Requests in flight at once.", min=1)
    timeout_s: float = _opt(60.0, "Seconds one request may take.", above=0)
    max_retries: int = _opt(4, "Retries of a failed request (429, 5xx, timeouts), with backoff.", min=0)
    backoff_s: float = _opt(0.5, "First retry's backoff in seconds; it doubles each time.", min=0)

    backend: ClassVar[str] = "openai"


@dataclass
class VLLMOptions(GenerationConfig):
    """`vllm:`: the offline vLLM engine in this process."""

    batch_size: int = _opt(64, "Requests of concurrent episodes generated together.", min=1)
    batch_wait_s: float = _opt(0.005, "How long a batch waits to fill, in seconds.", min=0)
    gpu_memory_utilization: float = _opt(0.85, "Share of GPU memory vLLM may take.", above=0, max=1)
    max_model_len: int | None = _opt(None, "Context length (default: the model's).", min=1)

    backend: ClassVar[str] = "vllm"


@dataclass
class VLLMServeOptions(GenerationConfig):
    """`vllm-serve:`: a `vllm serve` subprocess started for this run (a CPU or GPU build of vLLM in its own venv),
    queried like `openai:` and stopped when the run ends."""

    python: str | None = _opt(None, "The vLLM venv's python (default: $TRAJDISTILL_VLLM_VENV/bin/python, else "
                                    "~/.cache/trajdistill/vllm-venv/bin/python, made by .ci/vllm.sh).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _opt(
        "auto", "Weights' dtype; auto is bfloat16 where it is fast (as for hf:), else float32.")
    max_model_len: int = _opt(4096, "Context length the server allows.", min=16)
    kv_cache_gb: int = _opt(2, "KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE on CPU, a whole number).", min=1)
    cpu_cores: str = _opt("all", "Cores the CPU engine's OpenMP threads run on: all (every physical core this "
                                 "process may use, one thread each), auto (vLLM's own choice: one NUMA node, and one "
                                 "core kept for its scheduler) or a list such as 0-3 (VLLM_CPU_OMP_THREADS_BIND); "
                                 "a GPU build ignores it.")
    preload: Literal["auto", "none"] = _opt(
        "none", "LD_PRELOAD of the CPU engine: auto preloads tcmalloc (Debian's libtcmalloc-minimal4) and the "
                "venv's Intel OpenMP (libiomp5) where each is found, as vLLM's CPU guide advises; none (the default: "
                "no faster on 2 cores, bench/RESULTS.md) preloads neither.")
    concurrency: int = _opt(64, "Requests in flight at once.", min=1)
    timeout_s: float = _opt(300.0, "Seconds one request may take.", above=0)
    startup_timeout_s: float = _opt(900.0, "Seconds the server may take to come up.", above=0)
    extra_args: str = _opt("", "More `vllm serve` flags, as one shell-quoted string.")

    backend: ClassVar[str] = "vllm-serve"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cpu_cores not in ("all", "auto") and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", self.cpu_cores):
            raise ConfigError(f"vllm-serve policy option cpu_cores must be all, auto or a core list such as 0-3 or "
                              f"0,2, got {self.cpu_cores!r}")

