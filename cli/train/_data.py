"""The training set: trajectories encoded with span kinds, curriculum-ordered, optionally packed."""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trajdistill.envs import ConfigError
from trajdistill.trajectories import RunError, RunStore, mask_failed_calls

from ._config import SPAN_NAMES, TrainConfig
from ._curriculum import Plan, kind_counts, order, steps_of
from ._encode import encode

# datasets and torch are imported inside the functions that use them: they take seconds to import.

TEACHER_LOGPROBS_FILE = "teacher_logprobs.jsonl"


@dataclass
class TrainData:
    """The tokenized, curriculum-ordered training set and where it came from."""

    dataset: Any  # datasets.Dataset: input_ids, attention_mask, labels, span_kinds (+ position_ids if packed,
    # + teacher_logprobs with a served teacher)
    plan: Plan
    stage_rows: list[int]  # dataset row where each curriculum stage begins
    provenance: list[dict[str, Any]]
    trained_tokens: dict[str, int]
    paced_from: int | None = None  # rows before `paced` thinned an ordered set to the step budget
    cut: int = 0  # trajectories longer than max_length (their turns past it are not trained)


def paced(data: TrainData, rows: int) -> TrainData:
    """An ordered (curriculum) set thinned to the `rows` that the step budget trains: evenly spaced rows of the
    whole order, so that a run shorter than an epoch still goes from easy to hard instead of stopping among the
    easy ones (62 steps of 4 rows had trained only the easiest 17% of 1,423 rows). Stages keep their places."""
    n = len(data.dataset)
    if not data.plan.sequential or rows <= 0 or rows >= n:
        return data
    keep = [i * n // rows for i in range(rows)]
    starts = sorted({i for i in (bisect.bisect_left(keep, r) for r in data.stage_rows) if i < rows})
    return dataclasses.replace(data, dataset=data.dataset.select(keep), stage_rows=starts or [0], paced_from=n)


def load_trajectories(cfg: TrainConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    """Trajectories of every run (successful only, unless told otherwise) and per-run provenance."""
    kept, provenance = [], []
    for run in cfg.data:
        trajs = RunStore.open(run).load()
        use = [t for t in trajs if t.outcome.success or not cfg.only_success]
        use = [mask_failed_calls(t) for t in use] if cfg.mask_failed_calls else use
        teachers: dict[str, int] = {}
        for t in use:
            teachers[t.teacher.spec] = teachers.get(t.teacher.spec, 0) + 1
        provenance.append({"run": str(Path(run).resolve()), "trajectories": len(trajs), "used": len(use),
                           "envs": sorted({t.env.name for t in use}), "teachers": teachers})
        kept += use
    if not kept:
        what = "successful trajectories" if cfg.only_success else "trajectories"
        raise ConfigError(f"data: no {what} in {', '.join(cfg.data)}"
                         + (" (try --no-only-success)" if cfg.only_success else ""))
    return kept, provenance


def build_data(cfg: TrainConfig, tokenizer: Any) -> TrainData:
    """Encode, score, order (curriculum) and optionally pack the runs' trajectories."""
    from datasets import Dataset

    trajs, provenance = load_trajectories(cfg)
    teacher = _stored_teacher_logprobs(cfg)
    rows, scores, tokens = [], [], dict.fromkeys(SPAN_NAMES, 0)
    weights = cfg.complexity()
    cut = emptied = 0
    for traj in trajs:
        enc = encode(traj, tokenizer, max_length=cfg.max_length)
        cut += enc.cut
        if all(label == -100 for label in enc.labels):
            emptied += enc.cut
            continue  # nothing to train on (before the cut)
        counts = kind_counts(enc.span_kinds, enc.labels)
        scores.append(weights.score(counts["reason"], counts["act"], steps_of(traj)))
        rows.append({"input_ids": list(enc.input_ids), "attention_mask": list(enc.attention_mask),
                     "labels": list(enc.labels), "span_kinds": list(enc.span_kinds)})
        if teacher is not None:
            rows[-1]["teacher_logprobs"] = _aligned(teacher, traj.id, enc.labels)
        tokens = {k: tokens[k] + counts[k] for k in tokens}
    if not rows:
        raise ConfigError(f"max_length {cfg.max_length} leaves no trained tokens in any trajectory; raise max_length")
    if cut:
        warnings.warn(f"{cut} of {len(trajs)} trajectories are longer than max_length {cfg.max_length}; their turns "
                      f"past it are not trained ({emptied} kept none): raise --max-length to train "
                      "them whole", stacklevel=2)
    plan = order(scores, cfg.curriculum, seed=cfg.seed)
    ordered = [rows[i] for i in plan.order]
    if cfg.packing:
        ordered, first_row = pack(ordered, cfg.max_length)
        stage_rows = [first_row[s] for s in plan.stage_starts]
    else:
        stage_rows = list(plan.stage_starts)
    return TrainData(Dataset.from_list(ordered), plan, stage_rows, provenance, tokens, cut=cut)


def write_records(run: str | os.PathLike, name: str, records: list[dict[str, Any]]) -> Path:
    """Write a JSON-lines file of per-trajectory records into `run` whole (temp file, then rename): a cut-off
    write leaves none."""
    path = Path(run) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_records(path: Path, parse: Callable[[dict[str, Any]], Any], what: str, fix: str) -> dict[str, Any]:
    """Trajectory id -> parse(record) for each line of `path`; a bad line is one RunError naming the fix."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            out[record["id"]] = parse(record)
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{path}: line {n} is not a {what} record; {fix}") from None
    return out


def write_teacher_logprobs(run: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    """`teacher_logprobs.jsonl`: one line per trajectory, `{"id", "tokens": its encoded length, "logprobs":
    [[token index, log p_teacher(token | before)], ...]}` for each token it trains (plus the `teacher` spec)."""
    return write_records(run, TEACHER_LOGPROBS_FILE, records)


def read_teacher_logprobs(run: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Trajectory id -> {"tokens", "logprobs": {index: logprob}}; a run without the file is one RunError."""
    path = Path(run) / TEACHER_LOGPROBS_FILE
    if not path.is_file():
        raise RunError(f"{run}: no {TEACHER_LOGPROBS_FILE}; teacher_logprobs trains on runs scored by a served "
                       "teacher (onpolicy --mode reverse-kl)")
    return read_records(path, lambda r: {"tokens": int(r["tokens"]),
                                         "logprobs": {int(i): float(v) for i, v in r["logprobs"]}},
                        "teacher log-probability", "rerun the round")


def _stored_teacher_logprobs(cfg: TrainConfig) -> dict[str, dict[str, Any]] | None:
    if not cfg.teacher_logprobs:
        return None
    return {tid: rec for run in cfg.data for tid, rec in read_teacher_logprobs(run).items()}


def _aligned(teacher: dict[str, dict[str, Any]], traj_id: str, labels: list[int]) -> list[float]:
    """The teacher's log-probability at each trained token of the (possibly truncated) encoding, 0 elsewhere."""
    record = teacher.get(traj_id)
    if record is None:
        raise RunError(f"trajectory {traj_id} has no teacher log-probabilities; rerun the round's scoring")
    trained = [i for i, label in enumerate(labels) if label != -100]
    if len(labels) > record["tokens"] or any(i not in record["logprobs"] for i in trained):
        raise RunError(f"trajectory {traj_id}: its teacher log-probabilities were taken on another tokenization "
                       f"({record['tokens']} tokens); score it again with the student's tokenizer")
    return [record["logprobs"].get(i, 0.0) for i in range(len(labels))]


def pack(rows: list[dict[str, list[int]]], max_length: int) -> tuple[list[dict[str, list[int]]], list[int]]:
    """Concatenate rows, in order, into rows of at most max_length tokens.

    Greedy and order-preserving (so a curriculum survives packing). `position_ids` restart at 0 for
    each trajectory; with no attention_mask (the collator sends none for packed rows) and no cache
    (training), transformers reads the restarts as packed sequences and builds a block-diagonal
    causal mask, so trajectories never attend to each other (eager, sdpa, flex and flash
    attention alike; a test checks it for sdpa against separate forwards). The first label of each
    trajectory is masked: it would be predicted from the previous one. Returns the packed rows and,
    for each input row, the packed row it went into.
    """
    packed: list[dict[str, list[int]]] = []
    where: list[int] = []
    cur: dict[str, list[int]] | None = None
    for row in rows:
        n = len(row["input_ids"])
        if cur is None or len(cur["input_ids"]) + n > max_length:
            cur = {"input_ids": [], "labels": [], "span_kinds": [], "position_ids": []}
            packed.append(cur)
        cur["input_ids"] += row["input_ids"]
        cur["labels"] += [-100] + row["labels"][1:]
        cur["span_kinds"] += [0] + row["span_kinds"][1:]
        cur["position_ids"] += list(range(n))
        if "teacher_logprobs" in row:
            cur.setdefault("teacher_logprobs", []).extend([0.0] + row["teacher_logprobs"][1:])
        where.append(len(packed) - 1)
    return packed, where


@dataclass
class SpanCollator:
    """Pads input_ids, labels, span_kinds and attention_mask (or position_ids, for packed rows) on the right.

    `lengths` holds each row's unpadded length: the tokens seen, counted alike whatever the padding (which
    depends on how rows are split into batches, so on the number of processes)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples])

        batch = {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", -100),
                 "span_kinds": padded("span_kinds", 0),
                 "lengths": torch.tensor([len(e["input_ids"]) for e in examples])}
        if "teacher_logprobs" in examples[0]:
            batch["teacher_logprobs"] = padded("teacher_logprobs", 0.0).float()
        if "position_ids" in examples[0]:
            # the padding becomes its own short "sequence", so it never joins a real trajectory's mask
            batch["position_ids"] = torch.tensor([list(e["position_ids"]) + list(range(width - len(e["input_ids"])))
                                                  for e in examples])
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples])
        return batch
