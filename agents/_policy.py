"""Policies: teachers and students are both agents, named by a spec string.

    expert:<name>                 an env's scripted expert
    openai:<model>@<base_url>     any OpenAI-compatible server (vllm serve first of all)
    vllm:<path>                   the offline vLLM engine (GPU machines)
    vllm-serve:<path|alias>       a `vllm serve` subprocess started for the run (vLLM's CPU build in its own venv)
    hf:<path|alias>               transformers on the local device; may be a PEFT adapter dir
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from trajdistill.envs import Env, PolicyRequest, Registry, TrajdistillError, Turn, UnknownNameError

from ._options import (ExpertOptions, GenerationConfig, HFOptions, OpenAIOptions, VLLMOptions, VLLMServeOptions,
                       unknown_options)

ActionFormat = Literal["react", "tools"]


class PolicyError(TrajdistillError, RuntimeError):
    """The policy could not produce a turn (endpoint down after retries, model failed to load).

    The episode is recorded as errored with this reason; other episodes go on.
    """


@runtime_checkable
class Policy(Protocol):
    spec: str
    backend: str
    model: str
    action_format: ActionFormat
    # optional `uses_hints = True`: the policy reads PolicyRequest.hints (an env's scripted experts do)
    # optional `holds_model = True`: it keeps model weights in its process (the Ray executor gives it one actor)

    async def __call__(self, request: PolicyRequest) -> Turn: ...

    async def close(self) -> None: ...

    def sampling(self) -> dict[str, Any]: ...


PolicyFactory = Callable[..., Policy]
policies: Registry[PolicyFactory] = Registry("policy backend", "trajdistill.policies")
policies.register_lazy("expert", "trajdistill.agents._expert:make_expert", options=ExpertOptions)
policies.register_lazy("openai", "trajdistill.agents._openai:OpenAIPolicy", install_hint="pip install httpx",
                       options=OpenAIOptions)
policies.register_lazy("hf", "trajdistill.agents._hf:HFPolicy", install_hint="pip install transformers peft",
                       options=HFOptions)
policies.register_lazy("vllm", "trajdistill.agents._vllm:VLLMPolicy", install_hint="pip install 'trajdistill[vllm]'",
                       options=VLLMOptions)
policies.register_lazy("vllm-serve", "trajdistill.agents._vllm_serve:VLLMServePolicy",
                       install_hint="a venv with vLLM (.ci/vllm.sh builds the CPU one)", options=VLLMServeOptions)


def split_spec(spec: str) -> tuple[str, str]:
    backend, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise UnknownNameError(
            f"policy spec {spec!r} must look like BACKEND:TARGET, e.g. expert:coder, "
            f"openai:MODEL@http://127.0.0.1:8000/v1, hf:smollm2-135m; backends: {', '.join(policies.names())}")
    return backend, rest


def make_policy(spec: str, *, env: Env | None = None, **options: Any) -> Policy:
    """Build the policy a spec string names. `env` is needed for `expert:` specs. `options` are the fields of
    the backend's options class (see `policies.options(backend)`), as values or as text."""
    backend, target = split_spec(spec)
    factory = policies.get(backend)
    typed = policies.options(backend)
    if typed is None:  # a plug-in backend without an options class
        check_options(backend, factory, options)
        return factory(target, env=env, spec=spec, **options)
    return factory(target, env=env, spec=spec, options=typed.parse(options))


def options_by_spec(specs: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Options given for several agents at once: each agent gets the keys its backend takes, and a key that
    none of them takes is a ConfigError listing the keys each one does."""
    classes = {spec: policies.options(split_spec(spec)[0]) for spec in specs}
    if any(c is None for c in classes.values()):  # a plug-in backend checks its own keys
        return {spec: dict(options) for spec in specs}
    known = {spec: set(c.names()) for spec, c in classes.items()}
    unknown = sorted(set(options).difference(*known.values()))
    if unknown:
        raise unknown_options(list(dict.fromkeys(classes.values())), unknown)
    return {spec: {k: v for k, v in options.items() if k in known[spec]} for spec in specs}


def option_help() -> str:
    """One line per backend with the option keys it takes, for --help texts."""
    shared = GenerationConfig.names()
    own = {name: [k for k in cls.names() if k not in shared] for name, cls in policies.registered_options().items()}
    aliases = ", ".join(f"{a} = {n}" for a, n in GenerationConfig.aliases.items())
    return "; ".join([f"Every backend: {', '.join(k for k in shared if k not in GenerationConfig.aliases)} "
                      f"({aliases})"] + [f"{n}: {', '.join(keys)}" for n, keys in own.items() if keys])


def check_options(backend: str, factory: PolicyFactory, options: dict[str, Any]) -> None:
    """Refuse an option the backend's factory does not take, naming the ones it does (read from its signature,
    so no second list can drift); a factory with **kwargs takes anything."""
    params = list(inspect.signature(factory).parameters.values())[1:]  # the first takes the target
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in ("env", "spec")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UnknownNameError(f"{backend} policy has no option {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(known)}")
