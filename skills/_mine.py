"""`skills mine`: runs in, a validated skill box out, from the miners `mode` names (see _miners.py)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajdistill import __version__
from trajdistill.agents import config_field, make_policy
from trajdistill.envs import ConfigError
from trajdistill.trajectories import RunStore, Trajectory

from ._box import BoxError, SkillBox, SkillDraft, ToolDraft, spec_from_source
from ._check import CheckReport, check_box_async
from ._mine_docs import DocsMining
from ._mine_tools import Listener, ToolMining
from ._miners import Mined, MineJob, miner_names, miners
from ._trust import load_private_key, local_key


@dataclass
class MineConfig:
    """Settings of one mining run; each field's help is its `skills mine` option's."""

    runs: list[str] = field(metadata={"help": "Run directories to mine (one env)."})
    out: str = field(metadata={"help": "Box directory to write."})
    analyst: str | None = config_field(None, "Policy spec of an analyst LLM; default: deterministic.")
    mode: str = config_field("both", "Miners to run, comma-separated, in order; both is tools,docs; an unknown name "
                                     "lists the known ones. Known miners")
    workers: int = config_field(4, "Analysts and sandboxed tool runs in flight at once.")
    sandbox: str = config_field("auto", "Sandbox backend for tool replay: auto, docker, nsjail, none.")
    name: str | None = config_field(None, "Box name; default: ENV-skills, e.g. math-skills.")
    force: bool = config_field(False, "Replace an existing box at OUT.")
    timeout_s: float = config_field(10.0, "Wall-clock limit of one tool run in the sandbox, in seconds.")
    min_support: int | None = config_field(None, "Distinct source calls a tool must cover to be kept; default: 1 "
                                                 "below 100 code calls, 2 below 1,000, 3 below 10,000 (one per order "
                                                 "of magnitude beyond the first).")
    key: str | None = config_field(None, "PEM file of the Ed25519 key that signs the box; default: this machine's "
                                         "key, made on first use in the user config.")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("give at least one RUN directory to mine")
        if not miner_names(self.mode):  # an unknown name is an UnknownNameError that lists the known ones
            raise ConfigError(f"--mode names no miner; miners: {', '.join(miners.names())}, or both")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.min_support is not None and self.min_support < 1:
            raise ConfigError(f"--min-support must be at least 1, got {self.min_support}")


@dataclass
class MineResult:
    box: SkillBox
    mined: dict[str, Mined]  # miner name -> what it found, in the order they ran
    check: CheckReport

    @property
    def tools(self) -> ToolMining | None:
        return self.mined.get("tools")  # type: ignore[return-value]

    @property
    def docs(self) -> DocsMining | None:
        return self.mined.get("docs")  # type: ignore[return-value]

    def summary(self) -> str:
        parts = [f"{len(self.box.skills)} skills, {len(self.box.tools)} tools"]
        for name, found in self.mined.items():
            if name != "docs" or found.report().get("patches_proposed") or found.report().get("unusable_replies"):
                parts.append(f"{name}: {found.summary()}")
        parts.append("self-check " + ("passed" if self.check.ok else "FAILED"))
        return "; ".join(parts)


def load_runs(runs: list[str]) -> tuple[list[tuple[str, Trajectory]], str]:
    """(run, trajectory) pairs of every run, and the one env they share."""
    pairs = [(str(Path(r).resolve()), t) for r in runs for t in RunStore.open(r).load()]
    if not pairs:
        raise ConfigError(f"the run(s) {', '.join(runs)} hold no trajectories")
    envs = sorted({t.env.name for _, t in pairs})
    if len(envs) > 1:
        raise ConfigError(f"the runs mix envs ({', '.join(envs)}); a box is mined from one env")
    return pairs, envs[0]


async def mine_async(cfg: MineConfig, *, analyst: Any = None, listener: Listener | None = None) -> MineResult:
    """Mine a box as `cfg` says. `analyst` may be a Policy object instead of the `cfg.analyst` spec."""
    key = load_private_key(cfg.key) if cfg.key else local_key()
    trajs, env = load_runs(cfg.runs)
    own_analyst = analyst is None and bool(cfg.analyst)
    if own_analyst:
        analyst = make_policy(cfg.analyst)
    job = MineJob(trajs, env, analyst=analyst, workers=cfg.workers, min_support=cfg.min_support,
                  sandbox=cfg.sandbox, timeout_s=cfg.timeout_s, listener=listener)
    try:
        mined = {name: await miners.get(name)(job) for name in miner_names(cfg.mode)}
        skills = [s for m in mined.values() for s in m.skills]
        tools = [t for m in mined.values() for t in m.tools]
        if skills and tools:
            link_tools(skills, tools)
        box = SkillBox.write(cfg.out, name=cfg.name or _box_name(env), env=env, skills=skills, tools=tools,
                             sources=_sources(trajs), generator=_generator(cfg, mined), overwrite=cfg.force,
                             sign=False)
        if listener:
            listener("self-check", 0, 1)
        check = await check_box_async(box, runner=job.runner if tools else None)
        box.sign(key)  # after the check: the signature covers its result
    finally:
        if own_analyst:
            await analyst.close()
        await job.close()
    return MineResult(box, mined, check)


def mine(cfg: MineConfig, **kwargs: Any) -> MineResult:
    """Sync wrapper of mine_async; raises BoxError when the mined box fails its own validation."""
    result = asyncio.run(mine_async(cfg, **kwargs))
    if not result.check.ok:
        bad = next((f"{n}: {r.first_failure}" for n, r in result.check.tools.items() if r.failed), "")
        raise BoxError(f"the mined box {cfg.out} failed its own validation ({bad})")
    return result


def link_tools(skills: list[SkillDraft], tools: list[ToolDraft]) -> None:
    """Name, in each skill, the box tools mined from the same trajectories."""
    for skill in skills:
        ids = {i for v in skill.sources.values() for i in v}
        lines = []
        for t in tools:
            if ids & {i for v in t.sources.values() for i in v}:
                spec = spec_from_source(t.source, t.name)
                lines.append(f"- `{spec.signature()}`: {spec.description.splitlines()[0]}")
        if lines:
            skill.body += ("\n\n## Tools in this box\n\nThese tools reproduce the programs that solved such "
                           "tasks; call one instead of writing the program again:\n" + "\n".join(lines))


def _box_name(env: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", env.lower()).strip("-") + "-skills"


def _sources(trajs: list[tuple[str, Trajectory]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run, t in trajs:
        s = out.setdefault(run, {"run": run, "trajectories": 0, "successful": 0, "teachers": []})
        s["trajectories"] += 1
        s["successful"] += int(t.outcome.success)
        if t.teacher.spec not in s["teachers"]:
            s["teachers"].append(t.teacher.spec)
    return list(out.values())


def _generator(cfg: MineConfig, mined: dict[str, Mined]) -> dict[str, Any]:
    gen: dict[str, Any] = {"package_version": __version__, "analyst": cfg.analyst, "mode": cfg.mode,
                           "miners": list(mined)}
    for name, found in mined.items():
        gen[f"{name}_mining"] = found.report()  # tool_mining and docs_mining keep their names
    if "tools_mining" in gen:
        gen["tool_mining"] = gen.pop("tools_mining")
        gen["min_support"] = gen["tool_mining"]["min_support"]
    return gen
