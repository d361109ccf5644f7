"""`curate`: named steps applied in order to the trajectories of one or more runs; the result is a run.

    OUT/
      run.yaml, trajectories-*.jsonl, stats.json   a normal run: train, export and inspect read it;
                                                   run.yaml lists the runs and every step with its settings
      curate_report.json                           per step: in, out, removed, reasons and examples;
                                                   reasoning length per category before and after
      curate_lengths.png                           those length distributions

A step is `NAME`, `NAME:KEY=VALUE,...` (values read as YAML scalars) or, in YAML, `{NAME: {KEY: VALUE}}`.
A run is `PATH` (labelled by its directory name) or `LABEL=PATH`. `mix` (`--mix LABEL=WEIGHT`) gives the
`blend` step its weights, and adds one at the end when none is listed. Kept trajectories are written as they
were, ids included, so each can be traced to its source run.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from contextlib import suppress
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from trajdistill import __version__
from trajdistill.envs import ConfigError

from ._curate_steps import Blend, Drop, Item, Step, curate_steps, make_step
from ._schema import Trajectory
from ._store import OutputError, RunError, RunStore, check_output, run_key

REPORT_FILE = "curate_report.json"
PLOT_FILE = "curate_lengths.png"
CONFIG_KEYS = ("steps", "mix", "seed")
EXAMPLES = 3  # removed trajectories shown per step and reason
SNIPPET = 160
BINS = 20
_LABEL = re.compile(r"[A-Za-z0-9_.-]+")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class CurateConfig:
    """What `curate` does; `from_mapping` reads the YAML form."""

    runs: list[str] = field(metadata={"help": "Runs to curate: PATH, or LABEL=PATH to name it for --mix (default "
                                              "label: the directory name)."})
    out: str = field(metadata={"help": "Run directory to write (new or empty)."})
    steps: list[Any] = field(default_factory=list, metadata={"help": (
        "A step, applied in the order given; repeatable: NAME or NAME:KEY=VALUE,... e.g. verified, dedupe, "
        "near-dup:threshold=0.85, near-dup:method=embedding, length-balance:k=3, balance:cap=50, blend:size=1000. "
        "Replaces the config's steps.")})
    mix: dict[str, float] = field(default_factory=dict, metadata={"help": (
        "LABEL=WEIGHT: blend the runs by weight (adds a blend step at the end when none is given); repeatable.")})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling steps (balance, blend); default 0."})

    def __post_init__(self) -> None:
        self.runs = [str(r) for r in self.runs]
        if not self.runs:
            raise ConfigError("give at least one RUN to curate")
        if not isinstance(self.steps, list):
            raise ConfigError(f"steps must be a list of steps, got {self.steps!r}")
        if not isinstance(self.mix, dict):
            raise ConfigError(f"mix must be a mapping of run label: weight, got {self.mix!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be a whole number, got {self.seed!r}")

    @classmethod
    def from_mapping(cls, runs: list[str], out: str, data: dict[str, Any]) -> "CurateConfig":
        unknown = sorted(set(data) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"unknown curate setting(s) {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(CONFIG_KEYS)}")
        return cls(runs=runs, out=out, **data)

    def labelled_runs(self) -> dict[str, str]:
        return parse_runs(self.runs)

    def pipeline(self) -> list[tuple[str, Step]]:
        specs = [parse_step(s) for s in self.steps]
        if self.mix:
            if all(name != "blend" for name, _ in specs):
                specs.append(("blend", {}))
            specs = [(n, {**p, "mix": self.mix} if n == "blend" else p) for n, p in specs]
        if not specs:
            raise ConfigError(f"give at least one step (--step NAME); steps: {', '.join(curate_steps.names())}")
        return [(name, make_step(name, params)) for name, params in specs]


def parse_step(entry: Any) -> tuple[str, dict[str, Any]]:
    """(name, settings) of `NAME`, `NAME:KEY=VALUE,...` or `{NAME: {KEY: VALUE}}`."""
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
        if not isinstance(params, (dict, type(None))):
            raise ConfigError(f"step {name!r}: its settings must be a mapping, got {params!r}")
        return str(name), {str(k).replace("-", "_"): v for k, v in (params or {}).items()}
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"a step is NAME, NAME:KEY=VALUE,... or {{NAME: {{KEY: VALUE}}}}; got {entry!r}")
    name, _, rest = entry.strip().partition(":")
    params = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"step {entry!r}: {pair!r} is not KEY=VALUE")
        params[key.strip().replace("-", "_")] = _scalar(value.strip())
    return name.strip(), params


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_mix(pairs: list[str]) -> dict[str, float]:
    """`LABEL=WEIGHT` pairs as a mapping."""
    out = {}
    for pair in pairs:
        label, sep, weight = pair.partition("=")
        try:
            out[label.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"--mix must be LABEL=WEIGHT with a number, got {pair!r}") from None
        if not sep or not label.strip():
            raise ConfigError(f"--mix must be LABEL=WEIGHT, got {pair!r}")
    return out


def parse_runs(runs: list[str]) -> dict[str, str]:
    """Label -> path: `LABEL=PATH`, or a path labelled by its directory name."""
    out: dict[str, str] = {}
    for run in runs:
        label, sep, path = run.partition("=")
        if not sep or not _LABEL.fullmatch(label) or Path(run).exists():
            label, path = Path(run).resolve().name, run
        if label in out:
            raise ConfigError(f"two runs are labelled {label!r}; name them LABEL=PATH")
        out[label] = path
    return out


# ---- the report ---------------------------------------------------------------------------------


@dataclass
class StepReport:
    name: str
    settings: dict[str, Any]
    inputs: int
    kept: int
    reasons: dict[str, int]
    examples: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings, "in": self.inputs, "out": self.kept,
                "removed": self.inputs - self.kept, "reasons": self.reasons, "examples": self.examples}


@dataclass
class CurateReport:
    runs: dict[str, dict[str, Any]]
    seed: int
    steps: list[StepReport] = field(default_factory=list)
    kept_by_run: dict[str, int] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_in(self) -> int:
        return sum(r["trajectories"] - r["repeated"] for r in self.runs.values())

    @property
    def total_out(self) -> int:
        return sum(self.kept_by_run.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; no output path and no times, so equal inputs give equal bytes."""
        return {"runs": self.runs, "seed": self.seed, "steps": [s.to_dict() for s in self.steps],
                "total": {"in": self.total_in, "out": self.total_out, "out_by_run": self.kept_by_run},
                "lengths": self.lengths, "warnings": self.warnings}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def settings(step: Step) -> dict[str, Any]:
    """A step's settings: its own `settings()` (those that apply) when it has one, else all its fields."""
    own = getattr(step, "settings", None)
    if callable(own):
        return own()
    return asdict(step) if is_dataclass(step) else {}


def apply_step(name: str, step: Step, items: list[Item], seed: int) -> tuple[list[Item], StepReport]:
    verdicts = step(items, seed)
    if len(verdicts) != len(items):
        raise ValueError(f"step {name!r} gave {len(verdicts)} verdicts for {len(items)} trajectories")
    kept = [it for it, v in zip(items, verdicts) if v is None]
    dropped = [(it, v) for it, v in zip(items, verdicts) if v is not None]
    reasons = Counter(v.reason for _, v in dropped)
    return kept, StepReport(name, settings(step), len(items), len(kept), dict(sorted(reasons.items())),
                            _examples(dropped))


def _examples(dropped: list[tuple[Item, Drop]]) -> list[dict[str, Any]]:
    shown: Counter[str] = Counter()
    out = []
    for it, drop in dropped:
        if shown[drop.reason] < EXAMPLES:
            shown[drop.reason] += 1
            out.append({"id": it.traj.id, "task_id": it.traj.task_id, "run": it.label, "reason": drop.reason,
                        "detail": drop.detail, "snippet": it.text[:SNIPPET]})
    return out


def length_distributions(before: list[Item], after: list[Item]) -> dict[str, Any]:
    """Reasoning characters per category, before and after: summary statistics on shared histogram bins."""
    top = max((it.reasoning for it in before), default=0)
    step = max(1, -(-top // BINS))
    edges = [i * step for i in range(BINS + 1)]
    return {"unit": "characters of [REASON] spans", "bins": edges,
            "before": _by_category(before, step), "after": _by_category(after, step)}


def lengths_by_category(items: list[Item]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for it in items:
        out.setdefault(str(it.traj.category), []).append(it.reasoning)
    return dict(sorted(out.items()))


def _by_category(items: list[Item], step: int) -> dict[str, dict[str, Any]]:
    out = {}
    for cat, xs in lengths_by_category(items).items():
        hist = [0] * BINS
        for x in xs:
            hist[min(BINS - 1, x // step)] += 1
        xs = sorted(xs)
        out[cat] = {"n": len(xs), "mean": round(statistics.fmean(xs), 1), "median": statistics.median(xs),
                    "p90": xs[min(len(xs) - 1, int(0.9 * len(xs)))], "max": xs[-1], "hist": hist}
    return out


# ---- loading and writing -----------------------------------------------------------------------


def load_items(runs: dict[str, str]) -> tuple[list[Item], dict[str, dict[str, Any]], list[RunStore]]:
    """The trajectories of every run in order, a trajectory id met twice (the same run again) kept once."""
    items: list[Item] = []
    seen: set[str] = set()
    counts, stores = {}, []
    for label, path in runs.items():
        store = RunStore.open(path)
        trajs = store.load()
        fresh = [t for t in trajs if t.id not in seen]
        seen.update(t.id for t in fresh)
        items += [Item(t, label) for t in fresh]
        counts[label] = {"path": path, "trajectories": len(trajs), "repeated": len(trajs) - len(fresh)}
        stores.append(store)
    if not items:
        raise RunError(f"no trajectories in {', '.join(runs.values())}")
    return items, counts, stores


def distinct_key(traj: Trajectory, seen: set[tuple[str, ...]]) -> Trajectory:
    """`traj`, or a copy numbered as a further sample when its run key is taken: a reader keeps one per key."""
    out, n = traj, 0
    while run_key(out) in seen:
        n += 1
        sampling = {**traj.teacher.sampling, "sample": f"{traj.teacher.sampling.get('sample', 0)}+{n}"}
        out = traj.model_copy(update={"teacher": traj.teacher.model_copy(update={"sampling": sampling})})
    seen.add(run_key(out))
    return out


def run_config(cfg: CurateConfig, runs: dict[str, str], steps: list[tuple[str, Step]], kept: list[Item],
               stores: list[RunStore]) -> dict[str, Any]:
    trajs = [it.traj for it in kept]
    config: dict[str, Any] = {
        "command": "curate", "runs": runs, "out": cfg.out, "seed": cfg.seed,
        "steps": [{"name": name, **settings(step)} for name, step in steps],
        "env": ",".join(sorted({t.env.name for t in trajs})), "split": ",".join(sorted({str(t.split) for t in trajs})),
        "teachers": sorted({t.teacher.spec for t in trajs}), "package_version": __version__}
    tools = [s.config["tools"] for s in stores if isinstance(s.config.get("tools"), list)]
    if tools and all(t == tools[0] for t in tools):
        config["tools"] = tools[0]  # export reads them for native tool-call rows
    return config


def _empty_shares(step: Step, items: list[Item]) -> list[str]:
    """A blend weight whose run has nothing left: the earlier steps removed it all."""
    if not isinstance(step, Blend):
        return []
    left = {it.label for it in items}
    return [f"run {label} has a --mix weight but no trajectories left for blend (earlier steps removed them)"
            for label, w in step.mix.items() if w > 0 and label not in left]


def _check_out(out: str, runs: dict[str, str]) -> None:
    check_output(out, runs.values(), kind="dir")
    path = Path(out)
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(f"--out {out} exists and is not empty; choose a new run directory")


def _check_mix(steps: list[tuple[str, Step]], runs: dict[str, str]) -> None:
    for _, step in steps:
        unknown = sorted(set(step.mix) - set(runs)) if isinstance(step, Blend) else []
        if unknown:
            raise ConfigError(f"--mix {unknown[0]}: no run is labelled {unknown[0]!r}; labels: "
                             f"{', '.join(runs)} (name a run LABEL=PATH)")


# ---- the pipeline ------------------------------------------------------------------------------


def curate(cfg: CurateConfig, progress: Progress | None = None) -> CurateReport:
    """Apply the steps in order and write the kept trajectories as the run `cfg.out`; nothing is written
    when the config, a run or the output is refused."""
    note = progress or (lambda stage, done, total: None)
    steps = cfg.pipeline()
    runs = cfg.labelled_runs()
    _check_mix(steps, runs)
    _check_out(cfg.out, runs)
    total = len(steps) + 2
    note("load", 0, total)
    items, counts, stores = load_items(runs)
    before = items
    report = CurateReport(runs=counts, seed=cfg.seed)
    for n, (name, step) in enumerate(steps, 1):
        note(name, n, total)
        with suppress(AttributeError):  # a frozen step of one's own takes no progress hook, and needs none
            step.progress = lambda done, size, name=name: note(name, done, size)
        report.warnings += _empty_shares(step, items)
        items, step_report = apply_step(name, step, items, cfg.seed)
        report.steps.append(step_report)
    note("write", total - 1, total)
    report.kept_by_run = {label: sum(it.label == label for it in items) for label in runs}
    report.lengths = length_distributions(before, items)
    if not items:
        report.warnings.append("no trajectory is left: the run written is empty")
    write_run(cfg.out, run_config(cfg, runs, steps, items, stores), items)
    report.write(Path(cfg.out) / REPORT_FILE)
    from ._curate_plot import plot_lengths

    plot_lengths(Path(cfg.out) / PLOT_FILE, lengths_by_category(before), lengths_by_category(items))
    note("done", total, total)
    return report


def write_run(out: str, config: dict[str, Any], items: list[Item]) -> None:
    seen: set[tuple[str, ...]] = set()
    with RunStore.create(out, config) as store:
        for it in items:
            store.append(distinct_key(it.traj, seen))
