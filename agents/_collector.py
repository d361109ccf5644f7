"""Trajectory collection: every (task, teacher) pair runs once, concurrently and resumably.

Each finished trajectory is one fsynced line in the run store before the pair
counts as done (trajectories that finish together share an fsync, which runs
while the worker plays its next episode), so a crash at any point loses at most
the episodes in flight, and `--resume` skips exactly the pairs already on disk.
An episode that fails with a library error (endpoint down, bad tool server) is
recorded in errors.jsonl and the run goes on; any other exception is a bug and
stops the run with its traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from trajdistill import __version__
from trajdistill.envs import ConfigError, Env, Task, TrajdistillError, make_env
from trajdistill.envs.sandbox import Limits, SandboxError, SandboxProvider, get_provider
from trajdistill.trajectories import EnvRef, Message, Provenance, RunStore, Teacher, Trajectory, Usage

from ._executor import executors
from ._loop import EpisodeResult, ReActLoop
from ._policy import Policy, PolicyError, make_policy, options_by_spec
from ._rollout import RolloutConfig, config_field, stored_settings


class Mount(Protocol):
    """Mounts skill sources in an env: `trajdistill.skills.mount_skills`, given by the layer above (skills)."""

    def __call__(self, env: Env, sources: Sequence[str], preload: bool = False, *, sandbox: str = "auto",
                 trust: Sequence[str] = (), allow_unsigned: bool = False, top_k: int = 2,
                 examples: int = 0) -> Env: ...


@dataclass(kw_only=True)
class CollectConfig(RolloutConfig):
    """Settings of one collection run; `run.yaml` holds them resolved."""

    teachers: list[str] = field(metadata={"help": "Policy spec; repeat for several teachers (each runs every "
                                                  "task)."})
    out: str = field(metadata={"help": "Run directory to write."})
    resume: bool = config_field(False, "Skip (task, teacher) pairs already finished in OUT.")
    shard: str = config_field("0/1", "I/N: take a deterministic slice of the tasks.")
    teacher_options: dict[str, Any] = config_field({}, "Policy options; each teacher takes its backend's keys.")

    def own_problems(self) -> list[str]:
        problems = []
        if not self.teachers:
            problems.append("give at least one --teacher SPEC")
        if len(set(self.teachers)) != len(self.teachers):
            problems.append("each --teacher may be given once")
        try:
            parse_shard(self.shard)
        except ConfigError as e:
            problems.append(str(e))
        return problems


def parse_shard(shard: str) -> tuple[int, int]:
    i, sep, n = shard.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {shard!r}")
    return int(i), int(n)


def in_shard(task_id: str, shard: tuple[int, int]) -> bool:
    """A stable slice: the same task lands in the same shard for any --tasks."""
    i, n = shard
    return n == 1 or int(hashlib.sha256(task_id.encode()).hexdigest(), 16) % n == i


def mounted(env: Env, cfg: CollectConfig, mount: Mount | None) -> Env:
    """`env` with the skill boxes of `cfg.skills` mounted by `mount`."""
    if not cfg.skills:
        return env
    if mount is None:
        raise ValueError("skills: pass mount=trajdistill.skills.mount_skills to mount skill boxes")
    return mount(env, cfg.skills, cfg.preload_skills, sandbox=cfg.sandbox, trust=cfg.trust,
                 allow_unsigned=cfg.allow_unsigned, top_k=cfg.skills_top_k, examples=cfg.skills_examples)


def to_trajectory(result: EpisodeResult, task: Task, env: Env, policy: Policy,
                  sandbox: str | None, seed: int, skills: Sequence[str] = ()) -> Trajectory:
    """The typed trajectory of one finished episode; `skills`: the boxes mounted for it."""
    usage = result.usage
    return Trajectory(
        task_id=task.id, split=task.split, category=task.category, difficulty=task.difficulty,
        env=EnvRef(name=env.id, version=env.version),
        teacher=Teacher(spec=policy.spec, backend=policy.backend, model=policy.model, sampling=policy.sampling()),
        messages=[Message.model_validate(m) for m in result.messages],
        outcome=result.outcome,
        usage=Usage(
            prompt_tokens=int(usage["prompt_tokens"]), completion_tokens=int(usage["completion_tokens"]),
            total_tokens=int(usage["prompt_tokens"] + usage["completion_tokens"]),
            latency_s=usage["latency_s"], wall_s=result.wall_s, steps=int(usage["steps"]),
            invalid_actions=int(usage["invalid_actions"]),
        ),
        provenance=Provenance(sandbox=sandbox, package_version=__version__, seed=seed, skills=list(skills)),
        created_at=time.time(),
    )


async def play_episode(loop: ReActLoop, task: Task, provider: SandboxProvider | None, store: RunStore,
                       spec: str) -> EpisodeResult | None:
    """One episode, in a sandbox from `provider` when the env needs one. An expected failure (the policy's
    endpoint, a library error) is recorded in the store's errors.jsonl and ends only this episode (None);
    a broken sandbox backend and any other exception (a bug) stop the run."""
    try:
        if provider is None:
            return await loop.run(task)
        async with provider.acquire() as sb:
            return await loop.run(task, sb)
    except SandboxError:
        raise  # a broken backend stops the run; finished trajectories are already on disk
    except PolicyError as e:
        store.record_error(task.id, spec, str(e), "policy")
    except TrajdistillError as e:
        store.record_error(task.id, spec, f"{type(e).__name__}: {e}", "error")
    return None


async def gather_or_cancel(workers: list[asyncio.Task]) -> None:
    """Wait for every worker; when one fails (or this is cancelled), cancel the others before re-raising."""
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


@dataclass
class Progress:
    """Counters the live display reads."""

    total: int
    done: int = 0
    success: int = 0
    errors: int = 0
    steps: int = 0

    def count(self, traj: Trajectory | None) -> None:
        """One episode finished: `traj`, or None when it errored."""
        self.done += 1
        if traj is None:
            self.errors += 1
        else:
            self.success += traj.outcome.success
            self.steps += traj.usage.steps


Listener = Callable[[Progress], None]


class Collector:
    """Runs every (task, teacher) pair of a CollectConfig into a RunStore, on the executor `cfg.executor` names.

    `mount` mounts `cfg.skills`; `policies` (spec -> policy) are teachers built elsewhere, such as the Ray
    executor's model actors; the other teachers are built here."""

    def __init__(self, cfg: CollectConfig, mount: Mount | None = None, *,
                 policies: Mapping[str, Policy] | None = None):
        self.cfg, self.mount = cfg, mount
        self.execute = executors.get(cfg.executor)  # an executor that cannot load fails before any episode
        self.env = mounted(make_env(cfg.env, **cfg.env_params), cfg, mount)
        self.env.check_split(cfg.split)
        options = options_by_spec(cfg.teachers, {"temperature": cfg.temperature, "seed": cfg.seed,
                                                 **cfg.teacher_options})
        given = policies or {}
        self.policies = {spec: given[spec] if spec in given else make_policy(spec, env=self.env, **options[spec])
                         for spec in cfg.teachers}
        self.loops = {spec: ReActLoop(self.env, p, max_steps=cfg.max_steps, engine=cfg.loop,
                                      stop_on_repeat=cfg.stop_on_repeat)
                      for spec, p in self.policies.items()}
        self.provider: SandboxProvider | None = None

    def pairs(self, finished: set[tuple[str, str]]) -> list[tuple[Task, str]]:
        shard = parse_shard(self.cfg.shard)
        tasks = [t for t in self.env.tasks(self.cfg.split, n=self.cfg.tasks) if in_shard(t.id, shard)]
        return [(t, s) for t in tasks for s in self.cfg.teachers if (t.id, s) not in finished]

    async def run(self, store: RunStore, listener: Listener | None = None) -> Progress:
        if self.cfg.resume:
            store.check_holds(split=self.cfg.split, env=self.env.id, env_version=self.env.version)
        todo = self.pairs(store.finished_keys() if self.cfg.resume else set())
        progress = Progress(total=len(todo))
        try:
            await self.execute(self, todo, store, progress, listener)
        finally:
            await self.close()
        return progress

    async def _worker(self, queue, store: RunStore, progress: Progress, listener: Listener | None) -> None:
        finishing: asyncio.Task | None = None  # the last episode's commit: its fsync runs while the next plays
        try:
            while not queue.empty():
                task, spec = queue.get_nowait()
                traj = await self._episode(task, spec, store)
                if finishing is not None:
                    await finishing
                finishing = asyncio.create_task(self._finish(traj, store, progress, listener))
        finally:
            if finishing is not None:
                await finishing

    async def _episode(self, task: Task, spec: str, store: RunStore) -> Trajectory | None:
        result = await play_episode(self.loops[spec], task, self.provider, store, spec)
        if result is None:
            return None
        backend = self.provider.name if self.provider else None
        return to_trajectory(result, task, self.env, self.policies[spec], backend, self.cfg.seed, self.cfg.skills)

    async def _finish(self, traj: Trajectory | None, store: RunStore, progress: Progress,
                      listener: Listener | None) -> None:
        if traj is not None:
            await store.commit(traj)  # written and fsynced (with its group): from here on the pair is finished
        progress.count(traj)
        if listener:
            listener(progress)

    async def close(self) -> None:
        for p in self.policies.values():
            await p.close()
        if self.provider is not None:
            await self.provider.close()
        await self.env.close()


async def run_here(collector: Collector, todo: list[tuple[Task, str]], store: RunStore, progress: Progress,
                   listener: Listener | None) -> None:
    """The local executor: `concurrency` asyncio workers in this process, sharing one sandbox pool."""
    if collector.env.needs_sandbox:
        collector.provider = get_provider(collector.cfg.sandbox, Limits())
    queue: asyncio.Queue[tuple[Task, str]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    workers = [asyncio.create_task(collector._worker(queue, store, progress, listener))
               for _ in range(min(collector.cfg.concurrency, max(1, len(todo))))]
    await gather_or_cancel(workers)


def resolved_config(cfg: CollectConfig) -> dict[str, Any]:
    d = stored_settings(asdict(cfg))
    d["package_version"] = __version__
    return d


async def collect_async(cfg: CollectConfig, listener: Listener | None = None, *,
                        mount: Mount | None = None) -> tuple[RunStore, Progress]:
    """Library entry point: run the collection described by `cfg` (`mount`: see `Collector`)."""
    collector = Collector(cfg, mount)
    store = RunStore.create(Path(cfg.out), resolved_config(cfg), resume=cfg.resume)
    try:
        progress = await collector.run(store, listener)
    finally:
        store.write_stats()
        store.close()
    return store, progress


def collect(cfg: CollectConfig, listener: Listener | None = None, *,
            mount: Mount | None = None) -> tuple[RunStore, Progress]:
    """Sync wrapper of `collect_async`."""
    return asyncio.run(collect_async(cfg, listener, mount=mount))


