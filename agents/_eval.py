"""Evaluation: every agent runs the same held-out tasks through the collector, then gets scored.

There is no episode runner here. Each agent is one collection run (the same ReAct loop,
sandbox handling and batched generation as `collect`) into `OUT/runs/<agent>/`, and the
scores are computed from those run directories. A (task, agent) pair that ended in
errors.jsonl counts in n, so a flaky endpoint cannot raise its own success rate, but it is reported as
errored, apart from the episodes that ran and failed: a dead endpoint is not a 0% agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trajdistill.envs import ConfigError, Task
from trajdistill.trajectories import RunStore, Trajectory, failure_counts, read_result

from ._collector import CollectConfig, Collector, Mount, Progress, resolved_config
from ._policy import options_by_spec
from ._rollout import RolloutConfig, config_field, rollout_default

RESULTS_FILE = "results.json"
PLOT_FILE = "success.png"
RUNS_DIR = "runs"
Z95 = 1.959963984540054

EvalListener = Callable[[str, Progress], None]


@dataclass(kw_only=True)
class EvalConfig(RolloutConfig):
    """Settings of one evaluation; every agent gets the same tasks, seeds and limits."""

    agents: list[str] = field(metadata={"help": "Policy spec to evaluate; repeat to compare several agents."})
    split: str = rollout_default("split", "test")
    out: str | None = config_field(None, "Directory for results.json, success.png and runs/; unset: a temp dir "
                                         "that is removed afterwards.")
    agent_options: dict[str, Any] = config_field({}, "Policy options; each agent takes its backend's keys.")
    options_by_agent: dict[str, dict[str, Any]] = config_field({}, "Agent spec -> extra policy options of that agent.")
    resume: bool = config_field(False, "Continue an interrupted --out with the same settings: finished episodes are "
                                  "kept, the rest run.")

    def own_problems(self) -> list[str]:
        problems = []
        if self.resume and self.out is None:
            problems.append("--resume needs the --out of the evaluation to continue")
        if not self.agents:
            problems.append("give at least one --agent SPEC")
        if len(set(self.agents)) != len(self.agents):
            problems.append("each --agent may be given once")
        unknown = sorted(set(self.options_by_agent) - set(self.agents))
        if unknown:
            problems.append(f"options given for agent(s) not evaluated: {', '.join(unknown)}")
        return problems


@dataclass
class AgentResult:
    spec: str
    success_rate: float
    ci95: tuple[float, float]
    n: int
    successes: int
    mean_steps: float
    invalid_action_rate: float
    tokens_per_episode: float
    wall_s: float  # this invocation's; a resumed eval times only the episodes it ran
    errors: int  # episodes that errored (endpoint down, model failed to load): infrastructure, not the agent
    by_difficulty: dict[str, dict[str, Any]]
    by_category: dict[str, dict[str, Any]]
    run: str  # the agent's run directory, relative to OUT
    failed: int = 0  # episodes that ran and did not solve the task
    first_error: str | None = None  # the reason of one errored episode, to say what went wrong
    failures: dict[str, int] = field(default_factory=dict)  # failure kind -> failed episodes (trajectories._taxonomy)

    @property
    def all_errored(self) -> bool:
        """Every episode errored: the numbers say nothing about the agent."""
        return self.n > 0 and self.errors == self.n

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95)
        return d

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "AgentResult":
        """The inverse of `to_dict`; keys this version does not know (the demo's "label") are left out."""
        known = {k: v for k, v in doc.items() if k in AGENT_FIELDS}
        return cls(**{**known, "ci95": tuple(doc["ci95"])})


AGENT_FIELDS = frozenset(f.name for f in dataclasses.fields(AgentResult))


@dataclass
class EvalResults:
    env: str
    split: str
    tasks: int
    agents: list[AgentResult]
    task_ids: list[str]
    out: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "split": self.split, "tasks": self.tasks,
                "agents": [a.to_dict() for a in self.agents], "task_ids": self.task_ids}

    @classmethod
    def read(cls, path: str | Path) -> "EvalResults":
        """A results.json that `write_results` wrote (task_ids may be missing: older evals did not write them);
        a bad file is one RunError line."""
        path = Path(path)

        def build(doc: dict[str, Any]) -> EvalResults:
            return cls(env=doc["env"], split=doc["split"], tasks=doc["tasks"],
                       agents=[AgentResult.from_dict(a) for a in doc["agents"]], task_ids=doc.get("task_ids", []),
                       out=path.parent)

        return read_result(path, build, f"an eval {RESULTS_FILE}")


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: sane at 0% and 100% and for small n, unlike the normal approximation."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def slug(spec: str) -> str:
    """A directory name for an agent spec (paths and URLs included)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-.")
    return s[-80:] or "agent"


def run_dirs(agents: list[str]) -> dict[str, str]:
    """Agent spec -> unique directory name under runs/."""
    out: dict[str, str] = {}
    for spec in agents:
        name, i = slug(spec), 2
        while name in out.values():
            name, i = f"{slug(spec)}-{i}", i + 1
        out[spec] = name
    return out


def collect_config(cfg: EvalConfig, spec: str, out: Path) -> CollectConfig:
    options = {**options_by_spec(cfg.agents, cfg.agent_options)[spec], **cfg.options_by_agent.get(spec, {})}
    return CollectConfig(**cfg.rollout(), teachers=[spec], out=str(out), teacher_options=options,
                         resume=cfg.resume)


# ---- scoring ---------------------------------------------------------------------------------------


def _rate_table(outcomes: list[tuple[Any, bool]]) -> dict[str, dict[str, Any]]:
    """Group key -> n, successes, success rate and CI; tasks without the key are left out."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, ok in outcomes:
        if key is not None:
            groups[str(key)].append(ok)
    table = {}
    for key in sorted(groups):
        oks = groups[key]
        table[key] = {"n": len(oks), "successes": sum(oks), "success_rate": sum(oks) / len(oks),
                      "ci95": list(wilson_ci(sum(oks), len(oks)))}
    return table


def score(spec: str, store: RunStore, tasks: list[Task], wall_s: float, run: str) -> AgentResult:
    """One agent's numbers from its run directory; every task counts, errored ones as failures."""
    trajs: dict[str, Trajectory] = {t.task_id: t for t in store.load() if t.teacher.spec == spec}
    reasons = {r.get("task_id"): r.get("reason") for r in store.errors() if r.get("teacher") == spec}
    errored = set(reasons) - set(trajs)
    wanted = [t for t in tasks if t.id in trajs or t.id in errored]
    ok = {t.id: bool(trajs[t.id].outcome.success) if t.id in trajs else False for t in wanted}
    done = list(trajs.values())
    steps = sum(t.usage.steps for t in done)
    n, wins = len(wanted), sum(ok.values())
    return AgentResult(
        spec=spec, success_rate=wins / n if n else 0.0, ci95=wilson_ci(wins, n), n=n, successes=wins,
        mean_steps=steps / len(done) if done else 0.0,
        invalid_action_rate=sum(t.usage.invalid_actions for t in done) / steps if steps else 0.0,
        tokens_per_episode=sum(t.usage.total_tokens for t in done) / len(done) if done else 0.0,
        wall_s=wall_s, errors=len(errored), failed=n - wins - len(errored),
        first_error=next((reasons[t.id] for t in wanted if t.id in errored), None),
        by_difficulty=_rate_table([(t.difficulty, ok[t.id]) for t in wanted]),
        by_category=_rate_table([(t.category, ok[t.id]) for t in wanted]),
        run=run, failures=failure_counts((trajs[t.id], t.data.get("answer")) for t in wanted if t.id in trajs))


# ---- running ---------------------------------------------------------------------------------------


async def _run_agent(collector: Collector, total: int, listener: EvalListener | None) -> tuple[RunStore, float]:
    cfg = collector.cfg
    try:
        store = RunStore.create(Path(cfg.out), resolved_config(cfg), resume=cfg.resume)
    except BaseException:
        await collector.close()
        raise
    spec = cfg.teachers[0]
    if listener:
        listener(spec, Progress(total=total))  # tells a display that this agent starts now
    start = time.monotonic()
    try:
        await collector.run(store, (lambda p: listener(spec, p)) if listener else None)
    finally:
        store.write_stats()
        store.close()
    return store, time.monotonic() - start


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; pass --resume to continue it, or choose a new "
                         "directory")


async def _evaluate_in(cfg: EvalConfig, root: Path, listener: EvalListener | None,
                       mount: Mount | None) -> EvalResults:
    names = run_dirs(cfg.agents)
    collectors: list[Collector] = []
    try:
        # Build every agent first, so a bad spec fails before any episode runs.
        for spec in cfg.agents:
            collectors.append(Collector(collect_config(cfg, spec, root / RUNS_DIR / names[spec]), mount))
        tasks = [t for t, _ in collectors[0].pairs(set())]
    except BaseException:
        for c in collectors:
            await c.close()
        raise
    results = []
    for i, collector in enumerate(collectors):
        try:
            store, wall_s = await _run_agent(collector, len(tasks), listener)
        except BaseException:
            for c in collectors[i + 1:]:
                await c.close()
            raise
        spec = collector.cfg.teachers[0]
        results.append(score(spec, store, tasks, wall_s, f"{RUNS_DIR}/{names[spec]}"))
    return EvalResults(env=cfg.env, split=cfg.split, tasks=len(tasks), agents=results,
                       task_ids=[t.id for t in tasks], out=None)


async def evaluate_async(cfg: EvalConfig, listener: EvalListener | None = None, *,
                         mount: Mount | None = None) -> EvalResults:
    """Library entry point: run every agent of `cfg` on the same tasks and score them.

    With `cfg.out`, writes results.json, success.png and one run directory per agent there.
    `listener(agent_spec, progress)` is called once as each agent starts, then after every episode.
    `mount` mounts `cfg.skills` (`trajdistill.skills.mount_skills`).
    """
    if cfg.out is None:
        with tempfile.TemporaryDirectory(prefix="trajdistill-eval-") as tmp:
            return await _evaluate_in(cfg, Path(tmp), listener, mount)
    out = Path(cfg.out)
    if not cfg.resume:
        _prepare_out(out)
    results = await _evaluate_in(cfg, out, listener, mount)
    results.out = out
    write_results(results, out)
    return results


def evaluate(cfg: EvalConfig, listener: EvalListener | None = None, *,
             mount: Mount | None = None) -> EvalResults:
    """Sync wrapper of `evaluate_async`."""
    return asyncio.run(evaluate_async(cfg, listener, mount=mount))


# ---- output ----------------------------------------------------------------------------------------


def write_results(results: EvalResults, out: Path) -> None:
    (out / RESULTS_FILE).write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    plot_success(results, out / PLOT_FILE)


def plot_success(results: EvalResults, path: Path) -> None:
    """Bar chart of success rate per agent with 95% Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = results.agents
    rates = [a.success_rate for a in agents]
    # clamped: at 100% the Wilson upper bound can round to just below the rate, and matplotlib refuses yerr < 0
    err = [[max(0.0, a.success_rate - a.ci95[0]) for a in agents],
           [max(0.0, a.ci95[1] - a.success_rate) for a in agents]]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(agents) + 2), 4))
    try:
        ax.bar(range(len(agents)), rates, yerr=err, capsize=6, color="#4c72b0")
        ax.set_xticks(range(len(agents)), [_short(a.spec) for a in agents], rotation=15, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate (95% Wilson CI)")
        ax.set_title(f"{results.env} / {results.split}: {results.tasks} tasks")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _short(spec: str, width: int = 28) -> str:
    return spec if len(spec) <= width else "…" + spec[-(width - 1):]
