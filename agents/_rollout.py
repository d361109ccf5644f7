"""The settings every rollout shares: which tasks, how long an episode may run, where tools run.

Collect, eval, the skill-box gate and self-distillation all run agents on an env's tasks. Their
configs inherit `RolloutConfig`, so each shared setting has one name, one help text and one check;
the fields stay flat, so `run.yaml`, `--config` files and constructor keywords keep their keys.
A stage changes a default by `rollout_default(name, value)` and adds checks in `own_problems`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from trajdistill.envs import ConfigError

from ._executor import executors
from ._loop import LOOP_ENGINES


def config_field(default: Any, help: str) -> Any:
    """A field with help text; lists and dicts get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class RolloutConfig:
    """Settings of running agents on an env's tasks; the stages' configs inherit them."""

    env: str = field(metadata={"help": "Env name, e.g. math, twx:coin, mcp."})
    split: str = config_field("train", "train, dev or test.")
    tasks: int = config_field(100, "Number of tasks from the split.")
    max_steps: int = config_field(20, "Policy turns per episode before it is cut off.")
    stop_on_repeat: int = config_field(0, "End an episode once its last K turns were one turn with one observation, "
                                          "over and over (a greedy student's loop; stopping it can only turn a late "
                                          "success into a failure, and saves the rest of its turns); 0: never.")
    concurrency: int = config_field(8, "Episodes in flight at once.")
    seed: int = config_field(0, "Sampling seed passed to model policies.")
    temperature: float = config_field(0.0, "Sampling temperature for model policies.")
    sandbox: str = config_field("auto", "Sandbox backend: auto, docker, nsjail, none.")
    env_params: dict[str, Any] = config_field({}, "KEY=VALUE env parameter; repeatable.")
    skills: list[str] = config_field([], "Skill box to mount over MCP: a box directory, an http(s) URL or a stdio "
                                    "command; repeatable.")
    preload_skills: bool = config_field(False, "Put whole SKILL.md texts in the system prompt, not just the skill "
                                          "names (for agents that will not call read_skill).")
    skills_top_k: int = config_field(2, "Box tools and skills listed per task: the k most relevant to it (BM25 over "
                                        "their names, descriptions and source tasks); read_skill still reads any "
                                        "skill; 0 lists them all.")
    skills_examples: int = config_field(0, "Example calls shown with each listed box tool: the calls that solved "
                                           "the source tasks nearest the task (BM25), as `\"task\" -> {arguments}`; "
                                           "0: none.")
    # how this invocation checks boxes and runs episodes, not what a run holds (INVOCATION_KEYS: left out of run.yaml)
    executor: str = config_field("local", "Where episodes run: local (async, in this process) or ray (Ray actors "
                                          "across a cluster, each with its own sandbox pool; this process writes "
                                          "the run).")
    ray_address: str | None = config_field(None, "With --executor ray: the cluster to join, HOST:PORT of `ray start "
                                                 "--head` or ray://HOST:10001; unset: $RAY_ADDRESS, else Ray starts on "
                                                 "this machine.")
    ray_workers: int = config_field(0, "With --executor ray: episode workers (1 CPU each); 0: one per node with a "
                                       "free CPU.")
    loop: str = config_field("direct", "How an episode steps through the ReAct graph: direct (its node in a plain "
                                       "async loop) or langgraph (the compiled StateGraph's ainvoke; same turns, "
                                       "~0.75 ms more CPU a step).")
    trust: list[str] = config_field([], "Extra trusted box signers (ed25519:...) or pinned digests (sha256:...).")
    allow_unsigned: bool = config_field(False, "Mount boxes that no trusted key signed (development only).")

    def __post_init__(self) -> None:
        problems = [*self.rollout_problems(), *self.own_problems()]
        if problems:
            raise ConfigError("; ".join(problems))

    def rollout_problems(self) -> list[str]:
        out = [f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
               for name in ("tasks", "concurrency", "max_steps") if getattr(self, name) < 1]
        if self.temperature < 0:
            out.append(f"--temperature must be >= 0, got {self.temperature}")
        if self.stop_on_repeat == 1 or self.stop_on_repeat < 0:
            out.append(f"--stop-on-repeat must be 0 (never) or at least 2, got {self.stop_on_repeat}")
        if self.loop not in LOOP_ENGINES:
            out.append(f"--loop must be one of {', '.join(LOOP_ENGINES)}, got {self.loop!r}")
        if self.skills_top_k < 0:
            out.append(f"--skills-top-k must be 0 (list every tool and skill) or more, got {self.skills_top_k}")
        if self.skills_examples < 0:
            out.append(f"--skills-examples must be 0 (none) or more, got {self.skills_examples}")
        return out + self.executor_problems()

    def executor_problems(self) -> list[str]:
        if self.executor not in executors.names():
            return [f"--executor must be one of {', '.join(executors.names())}, got {self.executor!r}"]
        out = [f"--{name.replace('_', '-')} needs --executor ray" for name in ("ray_address", "ray_workers")
               if getattr(self, name) and self.executor != "ray"]
        if self.ray_workers < 0:
            out.append(f"--ray-workers must be 0 (one per node) or more, got {self.ray_workers}")
        return out

    def own_problems(self) -> list[str]:
        """A stage's checks of its own settings; all problems are reported together."""
        return []

    def rollout(self) -> dict[str, Any]:
        """The shared settings as keywords for another stage's config (lists and dicts copied)."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields(RolloutConfig)}


# Settings of how one invocation runs, not of what a run holds: a run resumes under other values of them.
INVOCATION_KEYS = frozenset({"trust", "allow_unsigned", "executor", "ray_address", "ray_workers", "loop"})


def stored_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A config's settings as a run or round directory stores them: the invocation's keys left out, and the
    settings added later left out at their off value, so that a directory written before them still resumes."""
    out = {k: v for k, v in settings.items() if k not in INVOCATION_KEYS}
    if not out.get("skills"):
        out.pop("skills_top_k", None)
    if not out.get("skills") or not out.get("skills_examples"):
        out.pop("skills_examples", None)
    if not out.get("stop_on_repeat"):
        out.pop("stop_on_repeat", None)
    return out


def rollout_default(name: str, default: Any) -> Any:
    """The field `name` of RolloutConfig with another default (for a stage whose usual value differs)."""
    return config_field(default, RolloutConfig.__dataclass_fields__[name].metadata["help"])


def _copy(value: Any) -> Any:
    return type(value)(value) if isinstance(value, (list, dict)) else value
