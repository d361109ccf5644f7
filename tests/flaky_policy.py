"""A test policy: an env's expert:coder, except on the tasks named in $TRAJDISTILL_TEST_FAIL, where its turn
raises. `bug` raises ZeroDivisionError (a programming error); `expected` raises a library error."""

from __future__ import annotations

import os
from typing import Any

from trajdistill.agents import make_policy, policies
from trajdistill.agents._options import ExpertOptions
from trajdistill.envs import PolicyRequest, ToolError, Turn


class FlakyPolicy:
    backend = "flaky"
    action_format = "react"
    uses_hints = True

    def __init__(self, target: str, *, env: Any = None, spec: str = "", options: ExpertOptions | None = None):
        self.spec, self.model, self.mode = spec, f"flaky/{target}", target
        self._expert = make_policy("expert:coder", env=env)

    async def __call__(self, request: PolicyRequest) -> Turn:
        if request.task.id in os.environ.get("TRAJDISTILL_TEST_FAIL", "").split(","):
            if self.mode == "bug":
                return Turn(content=str(1 / 0))
            raise ToolError(f"the tool server for {request.task.id} went away")
        return await self._expert(request)

    def sampling(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


def register() -> None:
    policies.register("flaky", FlakyPolicy, options=ExpertOptions)
