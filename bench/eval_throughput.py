"""Evaluation throughput of the hf student: the KV cache off (before) and on (after), in one run.

N `math` test episodes of an `hf:` student, at most 2 turns of at most 128 new tokens, through the
real `evaluate` (collector, ReAct loop, sandbox, batched generation). Each setting is one
`--agent-option` set: `before` is today's default (cache off, batch 8, concurrency 8), `after` turns
the cache on at the batch size and concurrency given. Runs alternate (before, after, before, ...)
so that load drift on a shared machine hits both alike; the model loads once per process, before
the first timed run. Also counts the episodes whose assistant turns differ between the settings (greedy; a batch size
change alone can flip a near-tie, so a few may).

    python bench/eval_throughput.py [--model /work/runs/st_full_a] [--episodes 200] [--repeats 1]
                                    [--batch-size 32] [--sandbox nsjail] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trajdistill.agents import EvalConfig, evaluate
from trajdistill.agents._hf import HFPolicy
from trajdistill.trajectories import RunStore


def settings(args) -> dict[str, dict]:
    base = {"max_new_tokens": args.max_new_tokens}
    return {"before": {**base, "batch_size": 8, "kv_cache_tokens": 0, "concurrency": 8},
            "after": {**base, "batch_size": args.batch_size, "concurrency": args.concurrency or args.batch_size}}


def one_run(args, name: str, options: dict, out: Path) -> dict:
    options = dict(options)
    concurrency = options.pop("concurrency")
    cfg = EvalConfig(env="math", agents=[f"hf:{args.model}"], split="test", tasks=args.episodes,
                     max_steps=args.turns, concurrency=concurrency, sandbox=args.sandbox, out=str(out),
                     agent_options=options)
    start = time.perf_counter()
    result = evaluate(cfg).agents[0]
    wall = time.perf_counter() - start
    return {"setting": name, "wall_s": round(wall, 1), "episodes_per_min": round(args.episodes / wall * 60, 1),
            "successes": result.successes, "errors": result.errors, "mean_steps": round(result.mean_steps, 2),
            "tokens_per_episode": round(result.tokens_per_episode, 1), "load1": round(os.getloadavg()[0], 2),
            **options, "concurrency": concurrency}


def assistant_turns(out: Path) -> dict[str, list[str]]:
    store = RunStore.open(next((out / "runs").iterdir()))
    return {t.task_id: [m.content or "" for m in t.messages if m.role == "assistant"] for t in store.load()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="an hf: target (alias, model dir or adapter dir)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=0, help="0: the batch size")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sandbox", default="nsjail")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default (one per core)")
    ap.add_argument("--only", choices=["before", "after"], help="run one setting (profiling)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on cores other jobs share, OpenMP workers can spin-wait on each other
    asyncio.run(HFPolicy(args.model).load())  # loads once per process, outside the timings
    names = [args.only] if args.only else ["before", "after"]
    runs, texts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in names:
                out = Path(tmp) / f"{name}-{r}"
                runs.append(one_run(args, name, settings(args)[name], out))
                print(json.dumps(runs[-1]), flush=True)
                texts.setdefault(name, assistant_turns(out))
    summary = {name: statistics.median(r["wall_s"] for r in runs if r["setting"] == name) for name in names}
    differ = (sum(texts["before"].get(k) != v for k, v in texts["after"].items()) if len(texts) == 2 else None)
    print(json.dumps({"model": args.model, "episodes": args.episodes, "turns": args.turns,
                      "max_new_tokens": args.max_new_tokens, "sandbox": args.sandbox, "repeats": args.repeats,
                      "median_wall_s": summary, "speedup": round(summary["before"] / summary["after"], 2)
                      if len(summary) == 2 else None, "episodes_whose_turns_differ": differ,
                      "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                      "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
    main()
