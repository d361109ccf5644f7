"""Evaluation throughput of a student: hf before (fp32, no KV reuse), hf now (defaults), vllm-serve, in one run.

N `math` test episodes of a student, at most 2 turns of at most 128 new tokens, through the real
`evaluate` (collector, ReAct loop, sandbox, batched generation). Settings:
  before      hf:, float32, KV cache off, batch 8, concurrency 8 (the defaults before issue 11)
  after       hf: with today's defaults (bf16 where the CPU has bf16 dot products, KV reuse, row-dropping
              decode) at the batch size and concurrency given
  vllm-serve  the `vllm-serve:` backend: a `vllm serve` from the CPU venv (prefix caching), started before
              each of its timed runs and stopped after it; its start-up is reported on its own (`startup_s`).
              `vllm-serve[KEY=VALUE;...]` gives it options: `vllm-serve[cpu_cores=auto]` against
              `vllm-serve` compares vLLM's own core binding with the backend's default (all cores)
  after+box   `after` with a skill box mounted over MCP (`--skills BOX`, its top-k tools listed per task):
              the issue's bound is 1.5x `after`
Runs alternate (before, after, vllm-serve, before, ...) so that load drift on a shared machine hits all
alike; the hf model loads once per process, before the first timed run. Also counts the episodes whose
assistant turns differ from `before`'s (greedy; a batch size or dtype change can flip a near-tie).

    python bench/eval_throughput.py [--model /work/runs/st_full_a] [--episodes 200] [--repeats 1]
                                    [--batch-size 32] [--sandbox nsjail] [--threads 1]
                                    [--settings before,after,vllm-serve,after+box --skills BOX]
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
from trajdistill.agents._options import VLLMServeOptions
from trajdistill.agents._vllm_serve import SERVED_NAME, VLLMServePolicy
from trajdistill.skills import mount_skills
from trajdistill.trajectories import RunStore


def settings(args, name: str) -> dict:
    base = {"max_new_tokens": args.max_new_tokens}
    if name.startswith("vllm-serve"):
        return {**base, "concurrency": args.concurrency or args.batch_size}
    return {"before": {**base, "batch_size": 8, "kv_cache_tokens": 0, "dtype": "float32", "concurrency": 8},
            "after": {**base, "batch_size": args.batch_size, "concurrency": args.concurrency or args.batch_size},
            "after+box": {**base, "batch_size": args.batch_size, "concurrency": args.concurrency or args.batch_size,
                          "skills": [args.skills]}}[name]


def server_options(args, name: str) -> VLLMServeOptions:
    """`vllm-serve[cpu_cores=auto;kv_cache_gb=4]`'s options, with the run's generation length."""
    given = name.partition("[")[2].rstrip("]")
    pairs = dict(kv.split("=", 1) for kv in given.split(";") if kv)
    return VLLMServeOptions.parse({"max_new_tokens": args.max_new_tokens, **pairs})


def started(args, name: str) -> tuple[VLLMServePolicy, str, float]:
    """A `vllm serve` of the model for setting `name`, its openai: spec and its start-up seconds."""
    start = time.perf_counter()
    server = VLLMServePolicy(args.model, options=server_options(args, name))
    spec = f"openai:{SERVED_NAME}@{asyncio.run(server.load())}"  # the backend's own server
    return server, spec, round(time.perf_counter() - start, 1)


def one_run(args, name: str, options: dict, out: Path, spec: str) -> dict:
    options = dict(options)
    concurrency, skills = options.pop("concurrency"), options.pop("skills", [])
    cfg = EvalConfig(env="math", agents=[spec], split="test", tasks=args.episodes,
                     max_steps=args.turns, concurrency=concurrency, sandbox=args.sandbox, out=str(out),
                     agent_options=options, skills=skills)
    start = time.perf_counter()
    result = evaluate(cfg, mount=mount_skills if skills else None).agents[0]
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
    ap.add_argument("--settings", default="before,after,vllm-serve", help="which settings to run, in this order")
    ap.add_argument("--skills", default="", help="the skill box of the after+box setting (a box directory)")
    args = ap.parse_args()
    if "after+box" in args.settings.split(",") and not args.skills:
        ap.error("after+box needs --skills BOX")
    if args.threads:
        torch.set_num_threads(args.threads)  # on cores other jobs share, OpenMP workers can spin-wait on each other
    names = args.settings.split(",")
    if {"before", "after", "after+box"} & set(names):
        asyncio.run(HFPolicy(args.model).load())  # loads once per process, outside the timings
    runs, texts, startup = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in names:
                out = Path(tmp) / f"{name}-{r}"
                server, spec = None, f"hf:{args.model}"
                if name.startswith("vllm-serve"):
                    server, spec, startup[name] = started(args, name)
                try:
                    runs.append(one_run(args, name, settings(args, name), out, spec))
                finally:
                    if server is not None:
                        asyncio.run(server.close())
                print(json.dumps(runs[-1]), flush=True)
                texts.setdefault(name, assistant_turns(out))
    summary = {name: statistics.median(r["wall_s"] for r in runs if r["setting"] == name) for name in names}
    differ = {name: sum(texts["before"].get(k) != v for k, v in texts[name].items())
              for name in names if name != "before" and "before" in texts}
    print(json.dumps({"model": args.model, "episodes": args.episodes, "turns": args.turns,
                      "max_new_tokens": args.max_new_tokens, "sandbox": args.sandbox, "repeats": args.repeats,
                      "median_wall_s": summary, "vllm_serve_startup_s": startup or None,
                      "speedup_over_before": {n: round(summary["before"] / w, 2) for n, w in summary.items()}
                      if "before" in summary else None, "episodes_whose_turns_differ_from_before": differ,
                      "box_cost_over_after": round(summary["after+box"] / summary["after"], 2)
                      if {"after", "after+box"} <= set(summary) else None,
                      "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                      "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
    main()
