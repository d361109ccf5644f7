"""Executors: where a collector's episodes run. The driver's run store records every one either way.

    local   asyncio workers in this process share one sandbox pool (`_collector.run_here`)
    ray     Ray actors across a cluster, each with its own sandbox pool and policy clients (`_ray.run_on_ray`)

An executor is called once per collection run with the pairs still to do. Whatever runs the episodes,
each finished trajectory is appended (one fsynced line) to the driver's `RunStore` and counted in
`progress` before `listener` sees it, and an episode that ended without one is in errors.jsonl: the
store's promises (nothing finished is lost, `--resume` never reruns a finished pair) hold for every
executor. Plug-ins register more under the entry-point group `trajdistill.executors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from trajdistill.envs import Registry, Task
from trajdistill.trajectories import RunStore

if TYPE_CHECKING:
    from ._collector import Collector, Progress


class Executor(Protocol):
    async def __call__(self, collector: "Collector", todo: list[tuple[Task, str]], store: RunStore,
                       progress: "Progress", listener: Callable[["Progress"], None] | None) -> None: ...


executors: Registry[Executor] = Registry("executor", "trajdistill.executors")
executors.register_lazy("local", "trajdistill.agents._collector:run_here")
executors.register_lazy("ray", "trajdistill.agents._ray:run_on_ray", install_hint="pip install 'trajdistill[ray]'")
