"""On-policy distillation (DAgger) against more SFT, from the same unsaturated SFT student (issue 13 evidence).

Start: a learning-curve checkpoint that has risen but not saturated (default the 25k-token student, ~20%
on math). Then, at equal teacher calls and equal training tokens:
  more SFT   the start student trains on from expert:coder trajectories of the first `--tasks` train tasks
  DAgger     `trajdistill onpolicy` from the start student, one round, beta 0 (the student acts everywhere),
             the coder labelling every student turn on the same `--tasks` train tasks; the start student
             trains on the relabels
  DAgger + data   DAgger as above with the SFT arm's coder trajectories aggregated next to the relabels (the
             classic D u D_1, `onpolicy --data`), at the same training tokens (twice the teacher calls)
  reverse KL `onpolicy --mode reverse-kl` from the start student: it samples its own episodes on the same
             train tasks (temperature 0.7) and trains on them with the per-token reverse KL to a stronger
             white-box teacher (`--kl-teacher`, default the learning curve's 200k-token student)
  forward KL the same with the forward KL on the student's samples (GKD with lambda 1, beta 0)
  ... cut     either KL arm trained on each sample only up to its first token the teacher gives a probability
             below `--kd-cutoff-prob` (train's kd_cutoff_prob): past it the teacher's distribution is no target
  ... clip    either KL arm without the tokens whose KL exceeds `--kd-max-token-kl` nats (train's kd_max_token_kl)
  ... data    either KL arm with the SFT arm's teacher episodes next to the samples, under the same KD loss
             (`onpolicy --data`: GKD's mixture, lambda < 1)
  more SFT on the lost tasks   the SFT arm's episodes of only the train tasks the start loses (its own greedy
             episodes pick them): on-policy task selection without relabels, at the same training tokens
  KD on the SFT data   the SFT arm's episodes trained with the forward KL to the white-box teacher instead of
             the CE (off-policy KD, GKD with lambda 0): what the teacher's distribution adds without on-policy data
`--kl-lora` trains the KL arms' step as a LoRA (r 16, lr 2e-4) instead of every weight, `--kl-temperature 0`
samples the greedy student (as it is evaluated), and `--seed N` trains every arm with another seed; each makes
arms of their own (their own directories and rows).
All train for `--tokens` tokens with `train`'s defaults and are evaluated on the same held-out test tasks.
`--rounds N --beta exp:1:0.5` runs the DAgger arms for N rounds with the teacher handing control over (each
round retrains the start student on the aggregate of every round's relabels, so the last model has as many
training tokens as more SFT, and N times the teacher calls); with `--rounds N` the KL arms sample N times,
each round's student training for 1/N of the steps; `--stop-on-repeat 3` ends looping game episodes.
Rows go to bench/results/onpolicy-<env>.jsonl as each arm finishes; a cut-off run resumes.

The teacher is `--teacher` (default expert:coder, the math coder; expert:gold for a twx game); `--dagger-teacher`
relabels for the DAgger arms instead (expert:trusting-coder: the coder acting only on what the student sees), and
`--dagger-labels disagreements` trains them on the teacher's corrections only (onpolicy --labels).

    python bench/onpolicy_quality.py [--env math] [--start bench-out/curve/math/students/tokens-25000]
                                     [--tasks 200] [--tokens 25000] [--test-tasks 100] [--sandbox nsjail]
                                     [--arms sft,sft-kd,dagger,reverse-kl,forward-kl,forward-kl-data,dagger-data]
                                     [--kd-cutoff-prob 0.05] [--report]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from _quality import (add_env_params, add_training_options, env_params, played, steps_for, success_cells,
                      training_settings)

from trajdistill.agents import CollectConfig, EvalConfig, collect, evaluate
from trajdistill.agents._eval import slug
from trajdistill.train import OnPolicyConfig, TrainConfig, onpolicy, train
from trajdistill.train._onpolicy import LABELS
from trajdistill.trajectories import RunStore


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="math", help="e.g. math or twx:coin")
    ap.add_argument("--teacher", default="expert:coder", help="the black-box teacher (expert:gold for twx games)")
    ap.add_argument("--start", type=Path, default=Path("bench-out/curve/math/students/tokens-25000"))
    ap.add_argument("--kl-teacher", type=Path, default=Path("bench-out/curve/math/students/tokens-200000"),
                    help="the white-box teacher of the reverse-KL arm (a model dir with the student's tokenizer)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/onpolicy"))
    ap.add_argument("--tasks", type=int, default=200, help="train tasks each arm's teacher labels")
    ap.add_argument("--tokens", type=int, default=25000, help="training tokens of each arm")
    ap.add_argument("--test-tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--backend", choices=("hf", "vllm-serve"), default="hf",
                    help="how the students generate, in the on-policy rollouts and the test eval")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="on-policy rounds; a DAgger round retrains the start student on the aggregate at --tokens, "
                         "a KL round trains the last round's student for --tokens / N: every arm's last model has "
                         "as many training tokens as more SFT")
    ap.add_argument("--dagger-teacher", default=None,
                    help="the DAgger arms' relabelling teacher, when not --teacher (e.g. expert:trusting-coder, which "
                         "acts only on what the student sees); its arms get directories and rows of their own")
    ap.add_argument("--dagger-labels", choices=LABELS, default="all",
                    help="the DAgger arms' onpolicy --labels: disagreements trains only the teacher's corrections; "
                         "its arms get directories and rows of their own")
    ap.add_argument("--beta", default="0", help="the DAgger arms' beta schedule (onpolicy --beta-schedule)")
    ap.add_argument("--stop-on-repeat", type=int, default=0,
                    help="end an episode (rollouts and evals) after K identical turns with identical observations")
    ap.add_argument("--kd-cutoff-prob", type=float, default=0.05, help="the cut arms' kd_cutoff_prob")
    ap.add_argument("--kd-max-token-kl", type=float, default=1.0, help="the clip arms' kd_max_token_kl")
    ap.add_argument("--kl-learning-rate", type=float, default=None,
                    help="the KL arms' peak learning rate (default train's); another value makes arms of their own")
    add_training_options(ap)
    ap.add_argument("--kl-temperature", type=float, default=0.7,
                    help="the KL arms' sampling temperature (0: the greedy student, as it is evaluated); another "
                         "value than 0.7 makes arms of their own")
    ap.add_argument("--kl-lora", action="store_true",
                    help="the KL arms train a LoRA (train's --no-full-finetune, its lr 2e-4) instead of every weight")
    ap.add_argument("--seed", type=int, default=0,
                    help="every arm's training seed (the order of its rows); another than 0 makes arms of their own")
    ap.add_argument("--rows", type=Path, default=None, help="default: bench/results/onpolicy-<env>.jsonl")
    ap.add_argument("--report", action="store_true")
    add_env_params(ap)
    args = ap.parse_args()
    args.rows = args.rows or Path(__file__).parent / "results" / f"onpolicy-{slug(args.env)}.jsonl"
    args.env_params = env_params(args)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(sorted(unknown))}; known: {', '.join(ARMS)}")
    args.train = {**training_settings(args), **({"seed": args.seed} if args.seed else {})}
    return args


def student_generation(args: argparse.Namespace) -> dict[str, Any]:
    """How the arms' students generate their rollouts: hf batches every concurrent episode; vllm-serve is a server."""
    if args.backend == "hf":
        return {"student_options": {"max_new_tokens": args.new_tokens, "batch_size": args.concurrency}}
    # a 10-turn game episode outgrows the server's default 4096-token context
    return {"student_backend": args.backend, "student_options": {"max_new_tokens": args.new_tokens,
                                                                  "max_model_len": 8192}}


def teacher_run(args: argparse.Namespace) -> Path:
    """The teacher's trajectories on the first `--tasks` train tasks: the SFT arm's data, and every arm's step count."""
    run = args.out / "sft-data"
    if not (run / "stats.json").exists():
        collect(CollectConfig(env=args.env, env_params=args.env_params, teachers=[args.teacher], out=str(run),
                              tasks=args.tasks, split="train",
                              sandbox=args.sandbox, concurrency=8, resume=run.exists()))
    return run


def arm_dir(args: argparse.Namespace, name: str) -> Path:
    """Where an arm trains: a training seed other than 0 gets directories of its own."""
    return args.out / (name + (f"-seed{args.seed}" if args.seed else ""))


def sft_arm(args: argparse.Namespace, start: str, name: str = "sft", **settings: Any) -> str:
    """The start trained on the teacher's episodes (once), with `settings` over the arm's training."""
    out = arm_dir(args, name)
    if not (out / "train_config.yaml").exists():
        shutil.rmtree(out, ignore_errors=True)
        train(TrainConfig(data=[str(teacher_run(args))], student=start, out=str(out),
                          **{**arm_training(args, start), **settings}))
    return f"hf:{out.resolve()}"


def start_run(args: argparse.Namespace) -> Path:
    """The start student's own greedy episodes on the first `--tasks` train tasks (what a DAgger round's rollouts
    are at beta 0): which tasks it loses."""
    run = args.out / "start-rollouts"
    if not (run / "stats.json").exists():
        spec = f"{args.backend}:{args.start.resolve()}"  # --backend is hf or vllm-serve, both policy backends
        collect(CollectConfig(env=args.env, env_params=args.env_params, teachers=[spec], out=str(run),
                              tasks=args.tasks, split="train", max_steps=args.max_steps, temperature=0.0,
                              stop_on_repeat=args.stop_on_repeat, sandbox=args.sandbox, concurrency=args.concurrency,
                              teacher_options=student_generation(args)["student_options"], resume=run.exists()))
    return run


def sft_lost_arm(args: argparse.Namespace, start: str) -> str:
    """More SFT on the tasks the start loses: the teacher's episodes of only those train tasks (on-policy task
    selection, the first-turn part of DAgger's information, without its relabel rows)."""
    run = args.out / "sft-lost-data"
    if not (run / "stats.json").exists():
        lost = {t.task_id for t in RunStore.open(start_run(args)).load() if not t.outcome.success}
        shutil.rmtree(run, ignore_errors=True)
        teacher = teacher_run(args)
        with RunStore.create(run, {"command": "bench sft-lost", "from": str(teacher)}) as store:
            for traj in RunStore.open(teacher).load():
                if traj.task_id in lost:
                    store.append(traj)
    out = arm_dir(args, "sft-lost")
    if not (out / "train_config.yaml").exists():
        shutil.rmtree(out, ignore_errors=True)
        train(TrainConfig(data=[str(run)], student=start, out=str(out), **arm_training(args, start)))
    return f"hf:{out.resolve()}"


def sft_kd_arm(args: argparse.Namespace, start: str) -> str:
    """Off-policy KD (GKD with lambda 0): the SFT arm's teacher episodes, trained with the forward KL to the white-box
    teacher's whole distribution at every token instead of the CE on its one token."""
    return sft_arm(args, start, "sft-kd-forward", teacher_model=str(args.kl_teacher.resolve()), kl="forward",
                   ce_weight=0.0, kd_weight=1.0, kd_temperature=1.0)


def dagger_arm(args: argparse.Namespace, start: str, aggregate: bool = False) -> str:
    name = "dagger-aggregated" if aggregate else "dagger"
    out = arm_dir(args, name + (f"-{slug(args.dagger_teacher)}" if args.dagger_teacher else "")
                  + ("-corrections" if args.dagger_labels == "disagreements" else ""))
    model = out / f"round-{args.rounds}" / "model"
    if not (out / "rounds.json").exists() or not (model / "train_config.yaml").exists():
        onpolicy(OnPolicyConfig(env=args.env, env_params=args.env_params, student=start,
                                teachers=[args.dagger_teacher or args.teacher],
                                out=str(out),
                                rounds=args.rounds, data=[str(teacher_run(args))] if aggregate else [],
                                beta_schedule=args.beta, labels=args.dagger_labels, tasks=args.tasks, split="train",
                                max_steps=args.max_steps,
                                temperature=0.0, dev_tasks=0, sandbox=args.sandbox, concurrency=args.concurrency,
                                stop_on_repeat=args.stop_on_repeat,
                                **student_generation(args),
                                train_args=arm_training(args, start),
                                resume=out.exists()))
    return f"hf:{model.resolve()}"


def arm_training(args: argparse.Namespace, start: str) -> dict[str, Any]:
    """Every arm's training settings: the steps that train `--tokens` of the SFT arm's data (the relabels are the
    same teacher's turns, packed alike)."""
    return {**args.train, "max_steps": steps_for([teacher_run(args)], args.tokens, start, **args.train)}


def kl_settings(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    """The trainer settings a KL arm changes, read from its key (`forward-kl-cut`, ...) and the KL options."""
    out: dict[str, Any] = {}
    if arm.endswith("-cut"):
        out["kd_cutoff_prob"] = args.kd_cutoff_prob
    if arm.endswith("-clip"):
        out["kd_max_token_kl"] = args.kd_max_token_kl
    if args.kl_learning_rate:
        out["learning_rate"] = args.kl_learning_rate
    if args.kl_lora:
        out["full_finetune"] = False
    return out


def kl_variants(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The KL options that make arms of their own: (directory suffix, row-name suffix) each."""
    out = []
    if args.kl_learning_rate:
        out.append((f"-lr{args.kl_learning_rate:g}", f", lr {args.kl_learning_rate:g}"))
    if args.kl_lora:
        out.append(("-lora", ", LoRA"))
    if args.kl_temperature != 0.7:
        out.append((f"-t{args.kl_temperature:g}", f", samples at temperature {args.kl_temperature:g}"))
    return out


def kl_arm(args: argparse.Namespace, start: str, arm: str) -> str:
    """On-policy KD: `--rounds` rounds, each sampling the last round's student on the same train tasks and training
    it on for its share of the arm's steps (equal tokens; N times the sampling); `-data` arms train the SFT arm's
    teacher episodes next to the samples (GKD's mixture)."""
    kl, settings = arm.split("-", 1)[0], kl_settings(args, arm)
    name = arm.replace("-cut", f"-cut{args.kd_cutoff_prob:g}").replace("-clip", f"-clip{args.kd_max_token_kl:g}")
    out = arm_dir(args, name + "".join(d for d, _ in kl_variants(args)))
    model = out / f"round-{args.rounds}" / "model"
    if not (out / "rounds.json").exists() or not (model / "train_config.yaml").exists():
        training = arm_training(args, start)
        training["max_steps"] = max(1, round(training["max_steps"] / args.rounds))
        onpolicy(OnPolicyConfig(env=args.env, env_params=args.env_params, student=start,
                                teachers=[f"hf:{args.kl_teacher.resolve()}"],
                                out=str(out), mode="reverse-kl", rounds=args.rounds, tasks=args.tasks, split="train",
                                data=[str(teacher_run(args))] if arm.endswith("-data") else [],
                                max_steps=args.max_steps, temperature=args.kl_temperature, dev_tasks=0,
                                sandbox=args.sandbox,
                                concurrency=args.concurrency, stop_on_repeat=args.stop_on_repeat,
                                **student_generation(args),
                                train_args={**training, "kl": kl, **settings},
                                resume=out.exists()))
    return f"hf:{model.resolve()}"


KL_ARMS = {
    "reverse-kl": "reverse KL",
    "forward-kl": "forward KL on the student's samples",
    "reverse-kl-cut": "reverse KL up to the first token of teacher p < {cut}",
    "forward-kl-cut": "forward KL up to the first token of teacher p < {cut}",
    "reverse-kl-clip": "reverse KL without tokens above {clip} nats",
    "forward-kl-clip": "forward KL without tokens above {clip} nats",
    "forward-kl-data": "forward KL on the student's samples and the SFT data",
    "reverse-kl-data": "reverse KL on the student's samples and the SFT data",
}
# --arms key: (row name, the arm's student). The SFT arm runs first when chosen: the others reuse its teacher run.
ARMS = {
    "sft": ("more SFT", sft_arm),
    "sft-kd": ("forward KL on the SFT data (off-policy)", sft_kd_arm),
    "sft-lost": ("more SFT on the tasks the start lost", sft_lost_arm),
    "dagger": ("DAgger, {rounds}", dagger_arm),
    "dagger-data": ("DAgger + the SFT data, {rounds}", lambda args, start: dagger_arm(args, start, aggregate=True)),
    **{key: (name + ", {rounds}", lambda args, start, key=key: kl_arm(args, start, key))
       for key, name in KL_ARMS.items()},
}


def arm_label(args: argparse.Namespace, arm: str) -> str:
    rounds = f"{args.rounds} round" + ("s" if args.rounds > 1 else "")
    label = ARMS[arm][0].format(rounds=rounds, cut=f"{args.kd_cutoff_prob:g}", clip=f"{args.kd_max_token_kl:g}")
    if arm in KL_ARMS:
        label += "".join(suffix for _, suffix in kl_variants(args))
    if arm.startswith("dagger") and args.dagger_teacher:
        label += f", relabelled by {args.dagger_teacher}"
    if arm.startswith("dagger") and args.dagger_labels == "disagreements":
        label += ", corrections only"
    if args.seed:
        label += f", seed {args.seed}"
    return label


def evaluated(args: argparse.Namespace, arm: str, spec: str,
              recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of `arm` (evaluated once): `recorded` are the settings its training changed."""
    rows = {r["arm"]: r for r in map(json.loads, args.rows.read_text().splitlines())} if args.rows.exists() else {}
    if arm in rows:
        return rows[arm]
    options = {"max_new_tokens": args.new_tokens}
    if args.backend == "hf":
        options["batch_size"] = args.concurrency
    else:
        spec = spec.replace("hf:", f"{args.backend}:", 1)
        options["max_model_len"] = 8192  # a 10-turn game episode outgrows the default 4096
    res = evaluate(EvalConfig(env=args.env, env_params=args.env_params, agents=[spec], split="test",
                              tasks=args.test_tasks, max_steps=args.max_steps,
                              sandbox=args.sandbox, concurrency=args.concurrency, out=str(args.out / "eval" / arm),
                              stop_on_repeat=args.stop_on_repeat, agent_options=options, resume=True))
    trained_on = not arm.startswith(("start (SFT checkpoint)", "more SFT", ARMS["sft-kd"][0]))  # no rounds
    row = {"arm": arm, **played(res.agents[0], arm).to_dict(), "tokens": args.tokens, "teacher_tasks": args.tasks,
           "start": str(args.start), "backend": args.backend, "date": time.strftime("%Y-%m-%d"),
           **({"rounds": args.rounds} if trained_on else {}),
           **({"beta": args.beta} if arm.startswith("DAgger") else {}),
           **({"dagger_teacher": args.dagger_teacher} if arm.startswith("DAgger") and args.dagger_teacher else {}),
           **({"labels": args.dagger_labels} if arm.startswith("DAgger") else {}),
           **({"stop_on_repeat": args.stop_on_repeat} if args.stop_on_repeat else {}), **args.train,
           **({"env_params": args.env_params} if args.env_params else {}),
           **(recorded or {})}
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    with open(args.rows, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arm | success | 95% CI | invalid actions | failures |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {success_cells(r)} | {r['invalid_action_rate']:.1%} | {r['failures']} |")
    return "\n".join(lines)


def main() -> None:
    args = arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.report:
        start = f"hf:{args.start.resolve()}"
        rows.append(evaluated(args, "start (SFT checkpoint)", start))
        for arm in args.arms.split(","):
            recorded = kl_settings(args, arm) if arm in KL_ARMS else {}
            if arm in KL_ARMS and args.kl_temperature != 0.7:
                recorded["sample_temperature"] = args.kl_temperature  # the rollouts', not a trainer setting
            rows.append(evaluated(args, arm_label(args, arm), ARMS[arm][1](args, start), recorded))
    else:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines()]
    print(table(rows))


if __name__ == "__main__":
    main()
