"""The curate `near-dup` step's two methods on the same labelled data (issue 14): MinHash LSH (Jaccard of
word-piece 3-grams) against embeddings of the embedded SmolLM2-135M (cosine, FAISS range search).

The data: a real `math` run of `expert:coder` (one trajectory per task, `--tasks`, sandbox `none`), then
near-duplicates of `--originals` of its trajectories injected after them, one per perturbation kind:
  whitespace   spaces and blank lines changed, code spacing squeezed;
  numbers      numbers in the prose written another way (1234 -> 1,234; 7 -> 7.0);
  reworded     the thoughts reworded (phrases swapped for others that mean the same);
  all          the three together.
Every original is a different task, and each shares its category and difficulty with ~25 others, so these are
the hard negatives: the same template, other numbers. A removed injected copy is a true positive (its own
original or one of its copies earlier in the order was what it matched); a removed original is a false removal.

Each method runs as the real step (`make_step("near-dup", ...)`) at its default threshold, timed (the
embedding's model load is timed apart), and also at a sweep of thresholds from one search (`NearDup.decide`),
with `scope: all` (the default) and `scope: task` (a trajectory is compared with those of its own task only).

    nice -n 15 python bench/neardup_methods.py [--run DIR] [--tasks 400] [--originals 50] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

import trajdistill.agents._embed as embed
from trajdistill.agents import CollectConfig, collect, cosine_neighbours
from trajdistill.trajectories import RunStore, Trajectory
from trajdistill.trajectories._curate_steps import Item, make_step

KINDS = ("whitespace", "numbers", "reworded", "all")
SWEEP = {"minhash": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95], "embedding": [0.99, 0.995, 0.997, 0.998, 0.999, 0.9995],
         "centred": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]}  # centred: minus the mean vector (anisotropy), a what-if
REWORD = [("Plan: ", "My plan: "), ("copy the expression into Python", "put the expression into Python"),
          ("Python does the arithmetic exactly, so I'll run a short program.",
           "Python computes this exactly, so I will write a small program."),
          ("The program printed", "The output was"), ("so that is the answer", "which is therefore the answer"),
          ("compute", "calculate"), ("then", "and then"), ("exactly", "precisely"), ("short", "small")]
_NUMBER = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def whitespace(text: str, code: bool) -> str:
    if code:
        return re.sub(r" ([-+*/%=]) ", r"\1", text)  # `6 + 25` -> `6+25`
    return text.replace(". ", ".  ").replace(": ", ":   ").rstrip() + "  \n"


def numbers(text: str, code: bool) -> str:
    if code:
        return text
    return _NUMBER.sub(lambda m: f"{int(m[1]):,}" if int(m[1]) >= 1000 else f"{m[1]}.0", text)


def reworded(text: str, code: bool) -> str:
    if code:
        return text
    for old, new in REWORD:
        text = text.replace(old, new)
    return text


def perturb(traj: Trajectory, kind: str, n: int) -> Trajectory:
    """A copy of `traj` (a new id, the same task) with its assistant turns changed by `kind`."""
    edits = {"whitespace": [whitespace], "numbers": [numbers], "reworded": [reworded],
             "all": [whitespace, numbers, reworded]}[kind]
    messages = []
    for m in traj.messages:
        if m.role == "assistant" and m.content:
            text = m.content
            for edit in edits:
                text = edit_lines(text, edit)
            m = m.model_copy(update={"content": text})
        messages.append(m)
    return traj.model_copy(update={"id": f"{traj.id[:20]}-{kind}{n}", "messages": messages})


def edit_lines(text: str, edit) -> str:
    """`edit` line by line, told whether the line is the action input (code) or prose."""
    return "\n".join(edit(line, line.startswith("Action Input:")) for line in text.split("\n"))


def labelled(run: Path, originals: int, seed: int) -> tuple[list[Item], dict[str, str]]:
    """The run's trajectories, then the injected copies (shuffled); the map of copy id -> original task."""
    clean = sorted(RunStore.open(run).load(), key=lambda t: t.task_id)
    rng = random.Random(seed)
    picked = rng.sample(clean, originals)
    copies = [perturb(t, kind, n) for n, t in enumerate(picked) for kind in KINDS]
    rng.shuffle(copies)
    return [Item(t, "run") for t in clean + copies], {t.id: t.task_id for t in copies}


def score(items: list[Item], verdicts, injected: dict[str, str]) -> dict[str, float]:
    removed = [it for it, v in zip(items, verdicts) if v is not None]
    tp = [it for it in removed if it.traj.id in injected]
    by_kind = {k: sum(it.traj.id.rsplit("-", 1)[1].startswith(k) for it in tp) for k in KINDS}
    return {"removed": len(removed), "true": len(tp), "false_removals": len(removed) - len(tp),
            "precision": round(len(tp) / len(removed), 3) if removed else 1.0,
            "recall": round(len(tp) / len(injected), 3), "recall_by_kind": by_kind}


def run_method(method: str, items: list[Item], injected: dict[str, str]) -> dict:
    """The real step at its default threshold, timed; then the sweep, from one search at the lowest threshold
    (the embedding's from the step's own vectors, so the model runs once)."""
    step = make_step("near-dup", {"method": method})
    load = 0.0
    if method == "embedding":
        start = time.perf_counter()
        embed._encoder(step.model)  # the model, loaded once per process: timed apart from the step
        load = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    verdicts = step(items, 0)
    wall = time.perf_counter() - start
    row = {"method": method, "threshold": step.threshold, **score(items, verdicts, injected),
           "wall_s": round(wall, 2), "s_per_1000": round(1000 * wall / len(items), 2),
           "model_load_s": round(load, 1), "load1": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if method == "embedding":
        near = cosine_neighbours(_VECTORS[-1], min(SWEEP[method]))
        centred = _VECTORS[-1] - _VECTORS[-1].mean(0)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        row["centred"] = sweep(method, items, cosine_neighbours(centred, min(SWEEP["centred"])), injected,
                               SWEEP["centred"])
        row["centred_similarity"] = similarities(items, cosine_neighbours(centred, 0.0), injected)
    else:
        near = step._similarity([it.text for it in items], min(SWEEP[method]), None)
    row["sweep"] = sweep(method, items, near, injected, SWEEP[method])
    row["scope_task"] = sweep(method, items, near, injected, SWEEP[method], "task")  # other tasks never compared
    row["similarity"] = similarities(items, near, injected)
    return row


def sweep(method: str, items: list[Item], near, injected: dict[str, str], thresholds, scope: str = "all") -> dict:
    steps = {t: make_step("near-dup", {"method": method, "threshold": t, "scope": scope}) for t in thresholds}
    return {t: score(items, step.decide(items, near), injected) for t, step in steps.items()}


_VECTORS: list = []  # what the step embedded, kept for the sweep


def _keep_vectors(texts, *args, **kw):
    _VECTORS.append(_EMBED(texts, *args, **kw))
    return _VECTORS[-1]


_EMBED, embed.embed_texts = embed.embed_texts, _keep_vectors


def similarities(items: list[Item], near, injected: dict[str, str]) -> dict[str, float]:
    """Median similarity of an injected copy to its original, and of an original to its most alike other task."""
    index = {it.traj.id: i for i, it in enumerate(items)}
    first = {it.traj.task_id: i for i, it in reversed(list(enumerate(items)))}
    own = [near[index[c]].get(first[task], 0.0) for c, task in injected.items()]
    other = [max([s for j, s in near[i].items() if items[j].traj.task_id != it.traj.task_id], default=0.0)
             for i, it in enumerate(items) if it.traj.id not in injected]
    return {"copy_to_original_min": round(min(own), 4), "copy_to_original_median": round(statistics.median(own), 4),
            "original_to_nearest_other_median": round(statistics.median(other), 4),
            "original_to_nearest_other_max": round(max(other), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("bench-out/neardup/coder400"))
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--originals", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if not (args.run / "run.yaml").exists():
        collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(args.run), tasks=args.tasks,
                              split="train", sandbox="none", concurrency=4))
    items, injected = labelled(args.run, args.originals, args.seed)
    rows = [run_method(m, items, injected) for m in ("minhash", "embedding", "minhash")]  # minhash twice: load drift
    doc = {"trajectories": len(items), "injected": len(injected), "rows": rows, "platform": platform.platform(),
           "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_avg": os.getloadavg()}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
