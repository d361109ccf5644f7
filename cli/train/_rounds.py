"""What the round-based recipes (self-distillation, on-policy distillation) share: their output directory
(settings file, resume check, rounds.json) and the trainer settings they pass through (`--train-*`)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from trajdistill.agents import stored_settings
from trajdistill.envs import ConfigError
from trajdistill.trajectories import OutputError, check_output, setting_difference

from ._config import TrainConfig, student_problems

ROUNDS_FILE = "rounds.json"
TRAIN_PREFIX = "--train-"
# how to run, not what: left out of the stored settings, so a resume may change them
UNSTORED = frozenset({"resume", "skills", "preload_skills", "skills_top_k", "skills_examples"})


def local_model(spec: str) -> list[str]:
    """The student's directory when the spec names one: rounds written over it would replace it."""
    target = spec.partition(":")[2]
    return [target] if target and Path(target).exists() else []


# ---- the trainer's extra arguments ----------------------------------------------------------------


def parse_train_args(args: list[str]) -> dict[str, Any]:
    """Trainer settings from the command line, each with a `--train-` prefix (the self-distill options
    keep their own names, e.g. --max-steps is episode turns): `--train-max-steps 50 --train-lora-r=8
    --train-packing --train-no-only-success` -> {"max_steps": "50", "lora_r": "8", "packing": True,
    "only_success": False}. Values are typed later, by the TrainConfig field."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith(TRAIN_PREFIX) or len(arg) == len(TRAIN_PREFIX):
            raise ConfigError(f"unexpected argument {arg!r}; trainer settings take a {TRAIN_PREFIX} prefix, "
                             f"e.g. {TRAIN_PREFIX}max-steps 50")
        name, eq, value = arg[len(TRAIN_PREFIX):].partition("=")
        name = name.replace("-", "_")
        if eq:
            out[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[name] = args[i + 1]
            i += 1
        elif name.startswith("no_"):
            out[name[3:]] = False
        else:
            out[name] = True
        i += 1
    return out


def _train_fields() -> dict[str, Any]:
    return {f.name: f for f in fields(TrainConfig) if f.name not in ("data", "student", "out")}


def _flag(name: str) -> str:
    return TRAIN_PREFIX + name.replace("_", "-")


def train_arg_problems(args: dict[str, Any]) -> list[str]:
    known = _train_fields()
    unknown = sorted(set(args) - set(known))
    if unknown:
        return [f"unknown trainer setting(s) {', '.join(map(_flag, unknown))}; known: {', '.join(map(_flag, known))}"]
    return []


def typed_train_arg(name: str, value: Any) -> Any:
    """A CLI string as the type of the TrainConfig field's default (YAML rules for the rest)."""
    if not isinstance(value, str):
        return value
    default = _train_fields()[name].default
    if name == "learning_rate":
        default = 0.0  # None means "derived from the method"; a given value is a float
    if isinstance(default, bool) or default is None:
        return yaml.safe_load(value)
    if isinstance(default, (int, float)):
        try:
            return type(default)(float(value)) if isinstance(default, float) else int(value)
        except ValueError:
            raise ConfigError(f"{_flag(name)} must be a number, got {value!r}") from None
    return value




def recipe_problems(cfg: Any, kind: str, runs: list[str], runs_flag: str) -> list[str]:
    """The checks every round-based recipe's config makes: dev tasks, no skill boxes, the run directories it
    trains on (`runs`, given by `runs_flag`), its trainer settings, and an output that overwrites none of them."""
    problems = [f"--dev-tasks must be >= 0, got {cfg.dev_tasks}"] if cfg.dev_tasks < 0 else []
    if cfg.skills:
        problems.append(f"{kind} mounts no skill boxes; give no skills")
    problems += [f"{runs_flag} {r} is not a run directory (no run.yaml)"
                 for r in runs if not (Path(r) / "run.yaml").is_file()]
    problems += train_arg_problems(cfg.train_args)
    try:
        check_output(cfg.out, [*runs, *local_model(cfg.student)], kind="dir")
    except OutputError as e:
        problems.append(str(e))
    return problems


class RoundsDir:
    """The output directory of a round-based recipe: OUT/<config_file> holds its settings (a resume must
    bring the same ones; only --rounds may change) and OUT/rounds.json the finished rounds."""

    config_file = ""  # set by each recipe
    kind = ""  # the command's name, for messages
    round_class: type = dict

    def __init__(self, cfg: Any, listener: Callable[[str, Any], None] | None = None):
        self.cfg = cfg
        self.listener = listener
        self.root = Path(cfg.out)

    def _listen(self, label: str) -> Callable[[Any], None] | None:
        return (lambda p: self.listener(label, p)) if self.listener else None

    def _start(self) -> None:
        problems = student_problems(self.cfg.student)  # checked before hours of rollouts, not after
        if problems:
            raise ConfigError(f"--student: {'; '.join(problems)}")
        if self.root.exists() and any(self.root.iterdir()):
            if not self.cfg.resume:
                raise ConfigError(f"{self.root} is not empty; pass --resume to continue it, or choose a new --out")
            self._check_resumable()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / self.config_file).write_text(yaml.safe_dump(self._settings(), sort_keys=False))

    def _settings(self) -> dict[str, Any]:
        # The skill-box settings are always unset here; left out, a settings file written before they were
        # shared settings still resumes.
        return stored_settings({k: v for k, v in asdict(self.cfg).items() if k not in UNSTORED})

    def _check_resumable(self) -> None:
        path = self.root / self.config_file
        if not path.is_file():
            raise ConfigError(f"--resume: {self.root} holds no {self.config_file}; it is not a {self.kind} directory")
        try:
            old = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"--resume: {path} is corrupt: {e}") from None
        new = json.loads(json.dumps(self._settings()))  # tuples and the like as YAML stored them
        diff = setting_difference(old if isinstance(old, dict) else {}, new, ignore=frozenset({"rounds"}))
        if diff is not None:
            raise ConfigError(f"--resume: settings differ from {path}: {diff}; only --rounds may change")

    def _finished_rounds(self) -> tuple[list[Any], str]:
        path = self.root / ROUNDS_FILE
        if not path.is_file():
            return [], self.cfg.student
        try:
            doc = json.loads(path.read_text())
            stats = [self.round_class(**r) for r in doc["rounds"]]
            student = doc["final_student"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--resume: {path} is corrupt ({e}); delete it to redo every round") from None
        return stats, student

    def _rounds_header(self) -> dict[str, Any]:
        """Keys rounds.json holds before the rounds (a recipe's mode, say)."""
        return {}

    def _write_rounds(self, stats: list[Any], student: str) -> None:
        doc = {**self._rounds_header(), "rounds": [asdict(s) for s in stats], "final_student": student}
        tmp = self.root / (ROUNDS_FILE + ".tmp")  # replaced whole: a crash never leaves half a file
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.root / ROUNDS_FILE)
