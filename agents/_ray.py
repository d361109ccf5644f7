"""The Ray executor (`--executor ray`): episodes run on Ray actors across a cluster; this process keeps the run.

    driver (this process)                        Ray cluster
      Collector.run: the pairs still to do         EpisodeWorker actors, one per node by default (1 CPU each):
        up to --concurrency in flight   ──────►      each with its own env, sandbox pool and policy clients,
      store.append: one fsynced line    ◄──────      returns each finished trajectory (spans filled) or the
      progress bar, stats.json                       reason its episode errored
                                                   a ModelActor per hf:/vllm: teacher: its model loaded once,
                                                     the turns of every worker batched together

Only the driver writes, to the same run store the local executor writes, so the store's promises hold
unchanged: a finished trajectory is one fsynced line before its pair counts as done, `--resume` skips
exactly the pairs on disk, and the stats and progress bar are live here. Workers write nothing; every
node needs the same Python environment, and skill boxes given as directories the same path on each.

A node that dies takes its worker with it. The episodes that worker held go back to the queue and run on
another worker, each up to ATTEMPTS times; with no worker left, the pairs still to do are recorded in
errors.jsonl (kind "node") and a later `--resume` runs them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from trajdistill.envs import ConfigError, PolicyRequest, Task, TrajdistillError, Turn
from trajdistill.envs.sandbox import Limits, get_provider
from trajdistill.trajectories import RunStore, Trajectory, with_spans

from ._collector import Collector, Listener, Mount, Progress, gather_or_cancel, play_episode, to_trajectory
from ._policy import PolicyError, make_policy, options_by_spec

log = logging.getLogger(__name__)

ATTEMPTS = 3  # starts of one episode on workers that died under it before it is recorded as errored
CLOSE_TIMEOUT_S = 30.0


# ---- on the cluster ----------------------------------------------------------------------------------


@ray.remote
class ModelActor:
    """One teacher that holds a model (hf:, vllm:): loaded once, every worker's turns come here and batch."""

    def __init__(self, spec: str, options: dict[str, Any]):
        self.spec, self.options = spec, options
        self.policy: Any = None

    async def start(self) -> dict[str, Any]:
        self.policy = make_policy(self.spec, **self.options)
        p = self.policy
        return {"spec": p.spec, "backend": p.backend, "model": p.model, "action_format": p.action_format,
                "sampling": p.sampling()}

    async def turn(self, request: PolicyRequest) -> Turn:
        return await self.policy(request)

    async def close(self) -> None:
        if self.policy is not None:
            await self.policy.close()


class RemotePolicy:
    """A worker's handle on a ModelActor, as a policy: each turn is one call to the actor."""

    def __init__(self, actor: Any, info: dict[str, Any]):
        self.actor = actor
        self.spec, self.backend, self.model = info["spec"], info["backend"], info["model"]
        self.action_format = info["action_format"]
        self._sampling = info["sampling"]

    async def __call__(self, request: PolicyRequest) -> Turn:
        try:
            return await self.actor.turn.remote(request)
        except RayTaskError as e:
            raise _cause(e) from None
        except RayActorError as e:  # the model's node died: this episode errors, --resume reruns it
            raise PolicyError(f"the model actor of {self.spec} is gone: {_first_line(e)}") from None

    def sampling(self) -> dict[str, Any]:
        return dict(self._sampling)

    async def close(self) -> None:
        pass  # the actor is the driver's to stop


class _ErrorNote:
    """Stands in for the run store in a worker: keeps why an episode errored, for the driver to record."""

    def __init__(self) -> None:
        self.error: tuple[str, str] | None = None

    def record_error(self, task_id: str, teacher: str, reason: str, kind: str = "error") -> None:
        self.error = (reason, kind)


@ray.remote
class EpisodeWorker:
    """Plays the episodes it is given with its own env, sandbox pool and policy clients; writes nothing."""

    def __init__(self, cfg: Any, mount: Mount | None, models: dict[str, tuple[Any, dict[str, Any]]]):
        self.cfg, self.mount, self.models = cfg, mount, models
        self.collector: Collector | None = None

    async def start(self) -> None:
        remote = {spec: RemotePolicy(actor, info) for spec, (actor, info) in self.models.items()}
        cfg = replace(self.cfg, executor="local", ray_address=None, ray_workers=0)
        self.collector = c = Collector(cfg, self.mount, policies=remote)
        if c.env.needs_sandbox:
            c.provider = get_provider(cfg.sandbox, Limits())

    async def play(self, task: Task, spec: str) -> Trajectory | tuple[str, str]:
        """The finished trajectory, or (reason, kind) of an episode that errored."""
        c = self.collector
        note = _ErrorNote()
        result = await play_episode(c.loops[spec], task, c.provider, note, spec)  # type: ignore[arg-type]
        if result is None:
            return note.error or ("episode ended without a trajectory", "error")
        backend = c.provider.name if c.provider else None
        return with_spans(to_trajectory(result, task, c.env, c.policies[spec], backend, c.cfg.seed, c.cfg.skills))

    async def close(self) -> None:
        if self.collector is not None:
            await self.collector.close()


# ---- on the driver -----------------------------------------------------------------------------------


def connect(address: str | None) -> None:
    """Join the cluster at `address` (else $RAY_ADDRESS), or start Ray on this machine; a Ray already
    joined by this process is used as it is."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--ray-address {address or 'local'}: cannot join the Ray cluster: "
                          f"{_first_line(e)}") from None


@dataclass(eq=False)
class _Worker:
    handle: Any
    inflight: int = 0


class Workers:
    """The run's episode workers; a worker whose node died is dropped, and episodes go to the least busy."""

    def __init__(self, handles: list[Any]):
        self.alive = [_Worker(h) for h in handles]

    def pick(self) -> _Worker | None:
        return min(self.alive, key=lambda w: w.inflight, default=None)

    def drop(self, worker: _Worker) -> None:
        if worker in self.alive:
            self.alive.remove(worker)
            log.warning("a Ray episode worker was lost (its node died?); %d left", len(self.alive))


@dataclass
class _Lost:
    reason: str


async def run_on_ray(collector: Collector, todo: list[tuple[Task, str]], store: RunStore, progress: Progress,
                     listener: Listener | None) -> None:
    """The Ray executor (see the module docstring): the episodes of `todo` on Ray actors, recorded here."""
    if not todo:
        return
    cfg = collector.cfg
    connect(cfg.ray_address)
    actors: list[Any] = []
    try:
        models = await _start_models(collector, actors)
        workers = await _start_workers(collector, models, actors)
        queue: asyncio.Queue[tuple[Task, str, int]] = asyncio.Queue()
        for task, spec in todo:
            queue.put_nowait((task, spec, 0))
        slots = [asyncio.create_task(_slot(queue, workers, store, progress, listener))
                 for _ in range(min(cfg.concurrency, len(todo)))]
        await gather_or_cancel(slots)
    finally:
        await _stop(actors)


async def _slot(queue: asyncio.Queue, workers: Workers, store: RunStore, progress: Progress,
                listener: Listener | None) -> None:
    while not queue.empty():
        task, spec, tries = queue.get_nowait()
        result = await _play(workers, task, spec)
        if isinstance(result, _Lost):
            if tries + 1 < ATTEMPTS and workers.alive:
                queue.put_nowait((task, spec, tries + 1))  # retried on another worker
                continue
            result = (f"Ray worker lost: {result.reason}", "node")
        if isinstance(result, Trajectory):
            store.append(result)  # one fsynced line: from here on the pair is finished
            progress.count(result)
        else:
            store.record_error(task.id, spec, *result)
            progress.count(None)
        if listener:
            listener(progress)


async def _play(workers: Workers, task: Task, spec: str) -> Trajectory | tuple[str, str] | _Lost:
    worker = workers.pick()
    if worker is None:
        return _Lost("no episode worker is left; their nodes died")
    worker.inflight += 1
    try:
        return await worker.handle.play.remote(task, spec)
    except RayActorError as e:
        workers.drop(worker)
        return _Lost(_first_line(e))
    except RayTaskError as e:  # a broken sandbox backend, or a bug: it stops the run, as it does locally
        raise _cause(e) from None
    finally:
        worker.inflight -= 1


async def _start_models(collector: Collector, actors: list[Any]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """A ModelActor per teacher whose policy holds a model; spec -> (actor, what the policy says of itself)."""
    cfg = collector.cfg
    specs = [s for s, p in collector.policies.items() if getattr(p, "holds_model", False)]
    if not specs:
        return {}
    options = options_by_spec(cfg.teachers, {"temperature": cfg.temperature, "seed": cfg.seed,
                                             **cfg.teacher_options})
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    handles = [ModelActor.options(num_cpus=1, num_gpus=gpus).remote(s, options[s]) for s in specs]
    actors += handles
    infos = await _started([h.start.remote() for h in handles])
    return {s: (h, info) for s, h, info in zip(specs, handles, infos)}


async def _start_workers(collector: Collector, models: dict[str, tuple[Any, dict[str, Any]]],
                         actors: list[Any]) -> Workers:
    n = worker_count(collector.cfg.ray_workers, len(models))
    handles = [EpisodeWorker.options(num_cpus=1, scheduling_strategy="SPREAD")
               .remote(collector.cfg, collector.mount, models) for _ in range(n)]
    actors += handles
    await _started([h.start.remote() for h in handles])
    return Workers(handles)


def worker_count(wanted: int, models: int) -> int:
    """`wanted` episode workers, or with 0 one per live node with a CPU; each takes a CPU the models leave."""
    free = int(ray.cluster_resources().get("CPU", 0)) - models
    if wanted:
        if wanted > free:
            raise ConfigError(f"--ray-workers {wanted} needs {wanted} CPUs, but the Ray cluster has {max(free, 0)} "
                              f"left{' after the model actors' if models else ''}")
        return wanted
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1)
    if min(nodes, free) < 1:
        raise ConfigError("the Ray cluster has no CPU left for an episode worker; add a node or free a CPU")
    return min(nodes, free)


async def _started(refs: list[Any]) -> list[Any]:
    """Await the actors' start calls; a setup error of ours (bad box, no sandbox backend) is raised as itself."""
    try:
        return await asyncio.gather(*refs)
    except RayTaskError as e:
        raise _cause(e) from None


async def _stop(actors: list[Any]) -> None:
    """Close each actor (its sandbox pool, its model), then end it; one already gone is skipped."""
    done = await asyncio.gather(*(asyncio.wait_for(_await(a.close.remote()), CLOSE_TIMEOUT_S) for a in actors),
                                return_exceptions=True)
    for actor, result in zip(actors, done):
        if isinstance(result, BaseException) and not isinstance(result, RayActorError):
            log.warning("closing a Ray actor failed: %s", _first_line(result))
        ray.kill(actor)


async def _await(ref: Any) -> Any:
    return await ref


def _cause(e: RayTaskError) -> BaseException:
    """What a remote call raised: our own errors as themselves (one line for the user), anything else, a bug,
    with its remote traceback."""
    return e.cause if isinstance(e.cause, TrajdistillError) else e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
