"""The gate on the learning curve's students: do promote and hold agree with their measured success?

For each checkpoint of `bench/learning_curve.py` (OUT/students/tokens-<N>), runs `trajdistill gate`
against the teacher on the same held-out test tasks and records the decision, the agreement numbers, the
ECE and the student's success. Each gate resumes (its eval keeps finished episodes) and each finished row
is kept in bench/results/gate-<env>.jsonl, so a cut-off run goes on where it stopped.

    python bench/gate_students.py [--curve bench-out/curve/math] [--tasks 100] [--sandbox nsjail] [--report]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from trajdistill.agents import GateConfig, gate
from trajdistill.agents._eval import slug


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="math")
    ap.add_argument("--teacher", default="expert:coder")
    ap.add_argument("--curve", type=Path, default=Path("bench-out/curve/math"), help="the learning curve's --out")
    ap.add_argument("--out", type=Path, default=Path("bench-out/gate"))
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--rows", type=Path, default=None, help="default: bench/results/gate-<env>.jsonl")
    ap.add_argument("--report", action="store_true", help="only print the table")
    args = ap.parse_args()
    args.rows = args.rows or Path(__file__).parent / "results" / f"gate-{slug(args.env)}.jsonl"
    return args


def students(curve: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in (curve / "students").glob("tokens-*")
             if (p / "train_config.yaml").exists()]
    return sorted(found)


def row_for(args: argparse.Namespace, tokens: int, model: Path) -> dict[str, Any]:
    cfg = GateConfig(env=args.env, student=f"hf:{model.resolve()}", teacher=args.teacher, split="test",
                     tasks=args.tasks, max_steps=args.max_steps, concurrency=args.concurrency, sandbox=args.sandbox,
                     agent_options={"max_new_tokens": args.new_tokens, "batch_size": args.concurrency},
                     out=str(args.out / f"tokens-{tokens}"), resume=True)
    r = gate(cfg)
    return {"tokens": tokens, "decision": r.decision, "reasons": r.reasons, "student_success": r.student_success,
            "ci95": list(r.student_ci95), "teacher_success": r.teacher_success,
            "same_answer": r.agreement.final_answer, "disagreements": r.agreement.disagreements,
            "wrong_on_disagreement": r.agreement.student_wrong_on_disagreement, "ece": r.calibration.ece,
            "length_ratio": r.behaviour.length_ratio, "entropy": r.behaviour.student_entropy,
            "tasks": args.tasks, "date": time.strftime("%Y-%m-%d")}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| training tokens | student success | 95% CI | same answer | student wrong on disagreements | ECE | "
             "decision | hold reasons |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["tokens"]):
        w = "–" if r["wrong_on_disagreement"] is None else f"{r['wrong_on_disagreement']:.0%} of {r['disagreements']}"
        ece = "–" if r["ece"] is None else f"{r['ece']:.1%}"
        reasons = "; ".join(x.split(" (")[0] for x in r["reasons"]) or "–"
        lines.append(f"| {r['tokens']:,} | {r['student_success']:.1%} | {r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} | "
                     f"{r['same_answer']:.1%} | {w} | {ece} | **{r['decision']}** | {reasons} |")
    return "\n".join(lines)


def main() -> None:
    args = arguments()
    done = {r["tokens"]: r for r in map(json.loads, args.rows.read_text().splitlines())} if args.rows.exists() else {}
    if not args.report:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        for tokens, model in students(args.curve):
            if tokens in done:
                continue
            done[tokens] = row_for(args, tokens, model)
            with open(args.rows, "a") as fh:
                fh.write(json.dumps(done[tokens]) + "\n")
            print(f"tokens-{tokens}: {done[tokens]['decision']} (success {done[tokens]['student_success']:.1%}, "
                  f"ECE {done[tokens]['ece']})", flush=True)
    print(table(list(done.values())))


if __name__ == "__main__":
    main()
