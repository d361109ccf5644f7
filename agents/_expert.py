"""`expert:<name>`: an env's scripted expert wrapped as a policy."""

from __future__ import annotations

from typing import Any

from trajdistill.envs import Env, PolicyRequest, Turn, UnknownNameError

from ._options import ExpertOptions


class ExpertPolicy:
    backend = "expert"
    action_format = "react"
    uses_hints = True  # the loop hands privileged episode hints only to policies that say so

    def __init__(self, name: str, env: Env, spec: str):
        experts = env.experts()
        if name not in experts:
            raise UnknownNameError(f"env {env.id!r} has no expert {name!r}; known: {', '.join(experts) or '(none)'}")
        self.spec = spec
        self.model = f"{env.id}/{name}"
        self._impl = experts[name]()

    async def __call__(self, request: PolicyRequest) -> Turn:
        turn = self._impl(request)
        if hasattr(turn, "__await__"):
            turn = await turn
        return turn

    def sampling(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


def make_expert(target: str, *, env: Env | None = None, spec: str = "", options: ExpertOptions | None = None
                ) -> ExpertPolicy:
    """The expert reads no option; `options` (shared sampling settings) are accepted so one set fits every agent."""
    if env is None:
        raise UnknownNameError(f"policy {spec!r} is an env's expert and needs --env")
    return ExpertPolicy(target, env, spec or f"expert:{target}")
