"""System-prompt tokens of a task without a box, with a whole box, and with the box's top-k tools and skills.

    python bench/box_prompt_tokens.py BOX [--env math] [--split test] [--tasks 50] [--top-k 1,2,3] [--sandbox nsjail]

Builds the ReAct system prompt the loop sends (env prompt, skills, tool list, format instructions) for each
task, as `trajdistill eval --skills BOX --skills-top-k K` would, and counts its tokens with the default
student's tokenizer (SmolLM2). Prints a markdown table: mean and max tokens per arm and the ratio to the
box-less prompt (issue 18's target: at most 1.5x). A ReAct prompt holds the tool list; an agent with native
tool calls gets the same tools as schemas instead. No model is loaded, only its tokenizer.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

from trajdistill.agents._models import smollm2_tokenizer
from trajdistill.agents._loop import system_prompt
from trajdistill.envs import make_env
from trajdistill.skills import mount_skills


@dataclass
class _React:
    """What `system_prompt` reads from a policy: it speaks ReAct text, so the tools are listed in the prompt."""

    action_format: str = "react"


def tokens_per_task(env, tasks, tokenizer) -> list[int]:
    return [len(tokenizer(system_prompt(env, _React(), env.tools_for(t), t))["input_ids"]) for t in tasks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("box")
    ap.add_argument("--env", default="math")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--top-k", default="1,2,3", help="comma-separated k values")
    ap.add_argument("--sandbox", default="nsjail")
    args = ap.parse_args()

    tokenizer = smollm2_tokenizer()
    plain = make_env(args.env)
    tasks = plain.tasks(args.split, args.tasks)
    rows = [("no box", tokens_per_task(plain, tasks, tokenizer))]
    for k in [0] + [int(x) for x in args.top_k.split(",")]:
        env = mount_skills(make_env(args.env), [args.box], sandbox=args.sandbox, top_k=k)
        rows.append(("whole box" if k == 0 else f"top-{k}", tokens_per_task(env, tasks, tokenizer)))
    base = statistics.mean(rows[0][1])
    print(f"{args.env} {args.split}, {len(tasks)} tasks, box {args.box}: system-prompt tokens (SmolLM2 tokenizer)\n")
    print("| arm | mean tokens | max tokens | mean / no box |")
    print("|---|---:|---:|---:|")
    for label, counts in rows:
        mean = statistics.mean(counts)
        print(f"| {label} | {mean:.0f} | {max(counts)} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
