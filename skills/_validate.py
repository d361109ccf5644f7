"""Box validation: does mounting a box make an agent better on held-out dev tasks?

    trajdistill skills validate BOX --env ENV --agent SPEC [--split dev --tasks N] [--ablate]

The agent runs the same tasks without the box and with it (and, with `--ablate`, with the
box minus one skill or tool at a time), through the evaluator. The delta comes with a 95%
interval (Newcombe's hybrid score interval from the two Wilson intervals). The result is
written to the manifest under `validation.dev_eval`. A box that lowers the success rate is
flagged: users have reported that overly broad skills hijack the agent.
"""

from __future__ import annotations

import asyncio
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from trajdistill.agents import EvalConfig, RolloutConfig, config_field, evaluate_async, rollout_default, wilson_ci
from trajdistill.trajectories import Report

from ._box import SkillBox
from ._mount import mount_skills
from ._trust import Trust

VALIDATION_SECTION = "dev_eval"  # manifest key; boxes validated before 2026-12 hold it as "gate"
HARMFUL_NOTE = "harmful: overly broad skills may hijack the agent"


@dataclass(kw_only=True)
class ValidateConfig(RolloutConfig):
    """Settings of one validation run; the with- and without-box runs share every one of them
    (`skills`: boxes mounted in every arm, under the one being validated)."""

    box: str = field(metadata={"help": "Skill box directory to validate."})
    agent: str = field(metadata={"help": "Policy spec that runs with and without the box."})
    split: str = rollout_default("split", "dev")
    tasks: int = rollout_default("tasks", 50)
    concurrency: int = rollout_default("concurrency", 4)
    ablate: bool = config_field(False, "Also run the box without each skill and tool in turn.")
    agent_options: dict[str, Any] = config_field({}, "Policy options of the agent's backend.")


class Arm(Report):
    """One arm of the validation: the agent's success on the dev tasks with one set of skills mounted."""

    success_rate: float
    ci95: list[float]
    n: int
    successes: int
    mean_steps: float
    errors: int


class AblationArm(Arm):
    """The box without one skill or tool, against the full box; `flagged` when it did better without it."""

    delta: float
    delta_ci95: list[float]
    verdict: str
    flagged: bool


class ValidationReport(Report):
    """What `skills validate` finds (with and without the box), as `validation.dev_eval` of the box's manifest holds it."""

    omit_none = ("ablation", "note")
    env: str
    agent: str
    split: str
    tasks: int
    without: Arm
    with_: Arm = Field(alias="with")
    delta: float
    delta_ci95: list[float]
    verdict: str
    ablation: dict[str, AblationArm] | None = None
    flagged: bool
    note: str | None = None
    wall_s: float
    at: str


def rate_diff_ci(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float]:
    """95% interval of rate(a) - rate(b), each given as (successes, n): Newcombe's method 10."""
    (sa, na), (sb, nb) = a, b
    pa, pb = sa / na if na else 0.0, sb / nb if nb else 0.0
    (la, ua), (lb, ub) = wilson_ci(sa, na), wilson_ci(sb, nb)
    d = pa - pb
    return d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)


def verdict(delta: float, ci: tuple[float, float]) -> str:
    if ci[0] > 0:
        return "helps"
    if ci[1] < 0:
        return "harmful"
    if delta < 0:
        return "worse (not significant)"
    return "no clear effect"


def _arm(result: Any) -> Arm:
    return Arm(success_rate=result.success_rate, ci95=list(result.ci95), n=result.n, successes=result.successes,
               mean_steps=result.mean_steps, errors=result.errors)


def _compare(arm: Arm, base: Arm) -> dict[str, Any]:
    delta = arm.success_rate - base.success_rate
    ci = rate_diff_ci((arm.successes, arm.n), (base.successes, base.n))
    return {"delta": delta, "delta_ci95": list(ci), "verdict": verdict(delta, ci)}


def ablation_source(box: Path, without: str, sandbox: str, digest: str) -> str:
    """A stdio command that serves `box` minus one skill or tool; `digest` pins the box the validation verified."""
    return shlex.join([sys.executable, "-m", "trajdistill", "skills", "serve", str(box), "--sandbox", sandbox,
                       "--exclude", without, "--trust", digest])


class BoxValidation:
    """Runs the arms of one validation and assembles the manifest section."""

    def __init__(self, cfg: ValidateConfig, listener: Callable[[str, Any], None] | None = None):
        self.cfg = cfg
        self.box = SkillBox.load(cfg.box, verify=True, trust=Trust())
        self.listener = listener

    async def arm(self, label: str, skills: list[str]) -> Arm:
        c = self.cfg
        eval_cfg = EvalConfig(**{**c.rollout(), "skills": [*c.skills, *skills]}, agents=[c.agent],
                              agent_options=dict(c.agent_options))
        listener = (lambda _spec, p: self.listener(label, p)) if self.listener else None
        results = await evaluate_async(eval_cfg, listener, mount=mount_skills)
        return _arm(results.agents[0])

    async def run(self) -> ValidationReport:
        box_dir = self.box.path.resolve()
        start = time.monotonic()
        base = await self.arm("without box", [])
        full = await self.arm("with box", [str(box_dir)])
        compared = _compare(full, base)
        ablation = await self._ablate(box_dir, full) if self.cfg.ablate else None
        flagged = compared["delta"] < 0
        return ValidationReport(env=self.cfg.env, agent=self.cfg.agent, split=self.cfg.split, tasks=base.n, without=base,
                          with_=full, **compared, ablation=ablation, flagged=flagged,
                          note=HARMFUL_NOTE if flagged else None, wall_s=round(time.monotonic() - start, 1),
                          at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    async def _ablate(self, box_dir: Path, full: Arm) -> dict[str, AblationArm]:
        """Per skill and tool: the box without it. A positive delta means the box is better without it."""
        out = {}
        names = [f"skill:{s.name}" for s in self.box.skills] + [f"tool:{t.name}" for t in self.box.tools]
        for item in names:
            name = item.split(":", 1)[1]
            arm = await self.arm(f"without {item}", [ablation_source(box_dir, name, self.cfg.sandbox, self.box.digest)])
            compared = _compare(arm, full)
            # removing it helped: it pulls the agent the wrong way
            out[item] = AblationArm(**arm.model_dump(), **compared, flagged=compared["delta"] > 0)
        return out


async def validate_async(cfg: ValidateConfig, listener: Callable[[str, Any], None] | None = None) -> ValidationReport:
    """Library entry point: run the validation and write `validation.dev_eval` into the box's manifest."""
    section = await BoxValidation(cfg, listener).run()
    # re-read: the files must still match
    SkillBox.load(cfg.box, verify=True).record_validation(VALIDATION_SECTION, section.doc())
    return section


def validate(cfg: ValidateConfig, listener: Callable[[str, Any], None] | None = None) -> ValidationReport:
    """Sync wrapper of `validate_async`."""
    return asyncio.run(validate_async(cfg, listener))
