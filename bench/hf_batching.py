"""hf batched generation: tokens/s with batch_size 8 vs 1 on the embedded SmolLM2-135M.

Eight concurrent requests go through HFPolicy, greedy, max_new_tokens fixed. With batch_size=1 the
Batcher runs them as 8 generate calls; with batch_size=8, as one. Reports the median of the repeats.

    python bench/hf_batching.py [--repeats 3] [--max-new-tokens 32] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time

import torch

from trajdistill.agents._hf import HFPolicy
from trajdistill.envs import PolicyRequest, Task

QUESTIONS = [
    "What is 17 + 25?", "Name the capital of Italy.", "Sort these numbers: 5, 2, 9.", "What is 12 times 3?",
    "Spell the word 'cat' backwards.", "Which is larger, 7 or 4?", "What color is the sky on a clear day?",
    "How many legs does a spider have?",
]
SYSTEM = ("You solve tasks with tools. Reply with Thought: then Action: and Action Input: as JSON, "
          "or Thought: then Final Answer:.")


def requests() -> list[PolicyRequest]:
    return [PolicyRequest(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                          tools=[], task=Task(id=f"q{i}", env="bench", split="test", prompt=q))
            for i, q in enumerate(QUESTIONS)]


async def one_run(policy: HFPolicy) -> tuple[float, int]:
    start = time.perf_counter()
    turns = await asyncio.gather(*(policy(r) for r in requests()))
    return time.perf_counter() - start, sum(t.usage["completion_tokens"] for t in turns)


async def measure(model: str, batch_size: int, max_new: int, repeats: int) -> dict:
    policy = HFPolicy(model, max_new_tokens=max_new, batch_size=batch_size)
    await policy.load()
    await one_run(policy)  # warm-up: first-call allocations
    runs = [await one_run(policy) for _ in range(repeats)]
    await policy.close()
    rates = [tokens / wall for wall, tokens in runs]
    return {"batch_size": batch_size, "tokens_per_run": runs[0][1],
            "median_wall_s": round(statistics.median(w for w, _ in runs), 2),
            "median_tokens_per_s": round(statistics.median(rates), 1)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    results = [await measure(args.model, b, args.max_new_tokens, args.repeats) for b in (1, 8)]
    speedup = results[1]["median_tokens_per_s"] / results[0]["median_tokens_per_s"]
    print(json.dumps({"model": args.model, "requests": len(QUESTIONS), "max_new_tokens": args.max_new_tokens,
                      "repeats": args.repeats, "threads": torch.get_num_threads(), "machine": platform.machine(),
                      "results": results, "speedup": round(speedup, 2)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
