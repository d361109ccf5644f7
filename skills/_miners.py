"""Miners: what turns trajectories into a box's skills and tools, registered by name in `miners`.

A miner is an async callable that takes a `MineJob` and returns a `Mined` (its skills and tools, a one-line
summary, and a report that goes into the manifest's `generator`). The built-ins are `tools` (AgentDistill's
MCP-Box, _mine_tools.py) and `docs` (Trace2Skill, _mine_docs.py); `skills mine --mode NAME[,NAME...]` runs
the ones named, in order. Third parties register with `@miners.register("name")` or through the
`trajdistill.miners` entry-point group. A miner that runs mined code does it through `job.runner`, a
sandboxed ToolRunner, never on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from trajdistill.envs import Registry
from trajdistill.envs.sandbox import Limits, SandboxProvider, get_provider
from trajdistill.trajectories import Trajectory

from ._box import SkillDraft, ToolDraft, ToolRunner

Listener = Callable[[str, int, int], None]  # (stage, done, total)


class Mined(Protocol):
    """What a miner found. ToolMining and DocsMining are two."""

    @property
    def skills(self) -> list[SkillDraft]: ...

    @property
    def tools(self) -> list[ToolDraft]: ...

    def summary(self) -> str: ...

    def report(self) -> dict[str, Any]: ...


@dataclass
class MineJob:
    """Everything a miner may use; the sandbox starts only when a miner asks for `runner`."""

    trajs: list[tuple[str, Trajectory]]  # (run directory, trajectory)
    env: str
    analyst: Any = None  # a Policy, or None for the deterministic miners
    workers: int = 4
    min_support: int | None = None  # None: the miner's own default
    sandbox: str = "auto"
    timeout_s: float = 10.0
    listener: Listener | None = None
    _provider: SandboxProvider | None = field(default=None, repr=False)
    _runner: ToolRunner | None = field(default=None, repr=False)

    @property
    def runner(self) -> ToolRunner:
        """The sandboxed runner for mined code (started on first use, closed by `close`)."""
        if self._runner is None:
            self._provider = get_provider(self.sandbox, Limits(timeout_s=self.timeout_s))
            self._runner = ToolRunner(self._provider, self.workers, timeout=self.timeout_s)
        return self._runner

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.close()
        if self._provider is not None:
            await self._provider.close()


Miner = Callable[[MineJob], Awaitable[Mined]]

miners: Registry[Miner] = Registry("miner", "trajdistill.miners")
miners.register_lazy("tools", "trajdistill.skills._mine_tools:tools_miner")
miners.register_lazy("docs", "trajdistill.skills._mine_docs:docs_miner")
BOTH = ("tools", "docs")  # `--mode both`


def miner_names(mode: str) -> list[str]:
    """The miners `--mode` names, each checked against the registry (UnknownNameError lists the known ones)."""
    names = list(BOTH) if mode == "both" else [n.strip() for n in mode.split(",") if n.strip()]
    for name in names:
        miners.get(name)
    return names
