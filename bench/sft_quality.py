"""Quality of span-aware curriculum SFT (issue 4 evidence), on math with the embedded SmolLM2-135M.

Trains on expert:coder trajectories from the train split, at the same token budget for every variant
(same data, same optimizer steps, same batch), and evaluates each on the same held-out test tasks:
  base                 the untrained student
  plain SFT            --reason-weight 1 --act-weight 1 --answer-weight 1 --curriculum none
  span-aware SFT       the default weights (1 / 2 / 2), --curriculum none
  span-aware + curric. the default weights, --curriculum complexity
Results are appended to OUT/results.jsonl as each variant finishes, so a cut-off run keeps what it has.

    python bench/sft_quality.py --out bench-out/sft-quality [--train-tasks 200] [--steps 16] [--test-tasks 100]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from trajdistill.agents._collector import CollectConfig, collect
from trajdistill.agents._eval import EvalConfig, evaluate
from trajdistill.trajectories._sft import TrainConfig, train

VARIANTS = {
    "plain SFT": dict(reason_weight=1.0, act_weight=1.0, answer_weight=1.0, curriculum="none"),
    "span-aware SFT": dict(curriculum="none"),
    "span-aware SFT + curriculum": dict(curriculum="complexity"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/sft-quality"))
    ap.add_argument("--train-tasks", type=int, default=200)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--test-tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=3, help="ReAct turns per eval episode")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "coder-run"
    if not data.exists():
        collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(data), tasks=args.train_tasks,
                              sandbox=args.sandbox))
    done = {json.loads(line)["variant"] for line in _lines(args.out / "results.jsonl")}
    agents = {"base": "hf:smollm2-135m"}
    for name, weights in VARIANTS.items():
        out = args.out / name.replace(" ", "-").replace("+", "plus")
        if not (out / "adapter_config.json").exists():
            start = time.monotonic()
            result = train(TrainConfig(data=[str(data)], student="hf:smollm2-135m", out=str(out), max_steps=args.steps,
                                       batch_size=args.batch, learning_rate=5e-4, max_length=768, **weights))
            print(f"{name}: trained {result.steps} steps in {time.monotonic() - start:.0f} s, losses {result.losses}")
        agents[name] = f"hf:{out}"
    for name, spec in agents.items():
        if name in done:
            continue
        res = evaluate(EvalConfig(env="math", agents=[spec], split="test", tasks=args.test_tasks,
                                  max_steps=args.max_steps, sandbox=args.sandbox, concurrency=8,
                                  agent_options={"max_new_tokens": args.new_tokens},
                                  out=str(args.out / "eval" / name.replace(" ", "-").replace("+", "plus"))))
        row = {"variant": name, **res.agents[0].to_dict(), "train_steps": args.steps, "batch": args.batch,
               "train_tasks": args.train_tasks, "date": time.strftime("%Y-%m-%d")}
        with open(args.out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: success {row['success_rate']:.1%} {row['ci95']} invalid {row['invalid_action_rate']:.1%}")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


if __name__ == "__main__":
    main()
