"""White-box on-policy distillation from a served teacher: vLLM's prompt log-probabilities of the student's tokens.

The trainer half runs on stored log-probabilities (the file is the interface); the serving half on a real
`vllm serve` of the embedded SmolLM2-135M from the CPU venv (.ci/vllm.sh).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from conftest import cli, one_line_error, require
from test_onpolicy import _cli, _nsjail, rollouts_of
from test_vllm_serve import _served_students

from trajdistill.agents import build_tiny_llama, load_causal_lm
from trajdistill.envs import ConfigError
from trajdistill.train import (TEACHER_LOGPROBS_FILE, OnPolicyConfig, TrainConfig, build_data, build_trainer, encode,
                               read_token_kl)
from trajdistill.trajectories import RunError, RunStore

VENV = Path(os.environ.get("TRAJDISTILL_VLLM_VENV", Path.home() / ".cache/trajdistill/vllm-venv"))


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    """reverse-kl rollouts on math (nsjail) of the scripted WrongCoder, and a tiny SmolLM2-tokenizer student."""
    _nsjail()
    root = tmp_path_factory.mktemp("served")
    student = build_tiny_llama(root / "student")
    cfg = OnPolicyConfig(student="wrongcoder:x", teachers=["openai:t@http://127.0.0.1:9/v1"], env="math",
                         out=str(root / "op"), mode="reverse-kl", tasks=3, dev_tasks=0, sandbox="nsjail",
                         concurrency=1, max_steps=2)

    return cfg, student, rollouts_of(cfg), Path(cfg.out) / "round-1" / "rollouts", root


def _own_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def _write(run: Path, trajs, tokenizer, value) -> None:
    """teacher_logprobs.jsonl with value(trajectory index, token index) at every trained token."""
    lines = []
    for n, t in enumerate(trajs):
        enc = encode(t, tokenizer)
        trained = [i for i, lab in enumerate(enc.labels) if lab != -100]
        lines.append({"id": t.id, "tokens": len(enc.input_ids), "logprobs": [[i, value(n, i)] for i in trained]})
    (run / TEACHER_LOGPROBS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_stored_logprobs_stay_on_their_tokens_through_packing(rollouts, tmp_path):
    cfg, student, trajs, run, _ = rollouts
    _, tok = load_causal_lm(student)
    _write(run, trajs, tok, lambda n, i: -(n * 10000 + i) / 1e4)
    data = build_data(TrainConfig(data=[str(run)], student=f"hf:{student}", out=str(tmp_path / "m"),
                                  **cfg.kd_train_args(), packing=True, max_length=4096), tok)
    assert len(data.dataset) == 1  # all three trajectories in one packed row
    row = data.dataset[0]
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    seen = 0
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(row["input_ids"])
        for i in range(start + 1, end):  # a trajectory's first label is masked by packing
            if row["labels"][i] != -100:
                assert row["teacher_logprobs"][i] == pytest.approx(-(n * 10000 + (i - start)) / 1e4)
                seen += 1
            else:
                assert row["teacher_logprobs"][i] == 0.0
    assert seen == sum(lab != -100 for lab in row["labels"]) > 0


def test_sampled_token_kd_is_the_estimator_and_trains_only_sampled_tokens(rollouts, tmp_path):
    """With log p_teacher = log p_student - 0.5 - 0.01 i at token i, the loss is sum w * k * log p_student / N with
    k = 0.5 + 0.01 i, loss_kd logs the mean k, and only the student's assistant positions get a gradient."""
    import torch

    cfg, student, trajs, run, _ = rollouts
    model, tok = load_causal_lm(student, dtype=torch.float32)
    own = {n: _own_logprobs(model, encode(t, tok).input_ids) for n, t in enumerate(trajs)}
    _write(run, trajs, tok, lambda n, i: float(own[n][i - 1]) - 0.5 - 0.01 * i)
    tc = TrainConfig(data=[str(run)], student=f"hf:{student}", out=str(tmp_path / "m"),
                     **{**cfg.kd_train_args(), "act_weight": 3.0, "max_steps": 1, "batch_size": 3, "packing": False,
                        "max_length": 1024, "bf16": False})
    assert tc.teacher_logprobs and tc.teacher_model is None and tc.ce_weight == 0
    trainer, _, _ = build_trainer(tc)
    batch = next(iter(trainer.get_train_dataloader()))
    kinds, labels = batch["span_kinds"][:, 1:].clone(), batch["labels"][:, 1:]
    trainer.model.train()  # the loss is logged under the train window
    hidden = {}
    hook = trainer.model.model.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    hook.remove()
    hidden["h"].retain_grad()
    loss.backward()

    mask = labels != -100
    positions = torch.arange(1, labels.shape[1] + 1).expand_as(labels)
    logp = torch.stack([torch.nn.functional.pad(_own_logprobs(model, row[:n].tolist()), (0, labels.shape[1] - n + 1))
                        for row, n in zip(batch["input_ids"], batch["lengths"])])
    k = (0.5 + 0.01 * positions) * mask
    weights = torch.tensor([1.0, 1.0, 3.0, 2.0])[kinds] * mask
    assert mask.any() and (kinds[mask] == 2).any()
    torch.testing.assert_close(loss.detach(), (k * logp * weights).sum() / mask.sum(), rtol=1e-4, atol=1e-5)
    logged = trainer.span_logs("train")["loss_kd"]
    assert logged == pytest.approx(float(k[mask].mean()), rel=1e-4)
    grad_rows = hidden["h"].grad.abs().sum(-1)[:, :-1] > 0
    assert torch.equal(grad_rows, mask)


def test_bad_stored_logprobs_and_settings_are_one_line(rollouts, tmp_path):
    cfg, student, trajs, run, _ = rollouts
    _, tok = load_causal_lm(student)
    args = dict(data=[str(run)], student=f"hf:{student}", out=str(tmp_path / "m"), **cfg.kd_train_args())
    _write(run, trajs[:2], tok, lambda n, i: -1.0)
    with pytest.raises(RunError, match=f"trajectory {trajs[2].id} has no teacher log-probabilities"):
        build_data(TrainConfig(**args), tok)
    _write(run, trajs, tok, lambda n, i: -1.0)
    lines = (run / TEACHER_LOGPROBS_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    first["logprobs"] = first["logprobs"][:-1]  # scored on another tokenization: a trained token is missing
    (run / TEACHER_LOGPROBS_FILE).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(RunError, match="taken on another tokenization"):
        build_data(TrainConfig(**args), tok)
    (run / TEACHER_LOGPROBS_FILE).write_text("{not json\n")
    with pytest.raises(RunError, match="line 1 is not a teacher log-probability record"):
        build_data(TrainConfig(**args), tok)
    (run / TEACHER_LOGPROBS_FILE).unlink()
    with pytest.raises(RunError, match="no teacher_logprobs.jsonl"):
        build_data(TrainConfig(**args), tok)
    with pytest.raises(ConfigError, match="estimates the reverse KL"):
        TrainConfig(**{**args, "act_kl": "forward"})
    with pytest.raises(ConfigError, match="give one teacher"):
        TrainConfig(**{**args, "teacher_model": str(student)})
    one_line_error(cli("onpolicy", "--mode", "reverse-kl", "--student", f"hf:{student}", "--teacher",
                       "openai:t@http://127.0.0.1:9/v1", "--env", "math", "--out", tmp_path / "o",
                       "--train-act-kl", "forward"), "--train-act-kl forward", "hf: teacher")
    assert not (tmp_path / "o").exists()
    one_line_error(cli("onpolicy", "--student", "openai:m@http://127.0.0.1:9/v1", "--teacher", "expert:coder",
                       "--env", "math", "--out", tmp_path / "o", "--student-backend", "vllm-serve"),
                   "--student-backend vllm-serve serves a model dir or alias")
    one_line_error(cli("onpolicy", "--student", f"hf:{student}", "--teacher", "expert:coder", "--env", "math",
                       "--out", tmp_path / "o", "--student-backend", "ray"), "--student-backend must be one of")
    assert not (tmp_path / "o").exists()


# ---- a real `vllm serve` -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    """The embedded SmolLM2-135M served by `vllm serve` (CPU venv, float32) through the vllm-serve backend."""
    require((VENV / "bin" / "python").exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    from trajdistill.agents import make_policy

    policy = make_policy("vllm-serve:smollm2-135m", python=str(VENV / "bin" / "python"), dtype="float32",
                         max_model_len=2048, kv_cache_gb=1)
    asyncio.run(policy.load())
    yield policy
    asyncio.run(policy.close())


@pytest.mark.slow
@pytest.mark.vllm
def test_the_served_engine_computes_on_every_core_by_default(served):
    """cpu_cores=all: vLLM's CPU worker binds its OpenMP threads to every core this process may use, not the
    one core its own choice leaves on a 2-core machine (it keeps one for its scheduler)."""
    cores = sorted(os.sched_getaffinity(0))
    binding = [ln for ln in served._server.log.read_text().splitlines() if "core ids=" in ln]
    assert binding and binding[0].rstrip().endswith(f"core ids={cores}"), binding


@pytest.mark.slow
@pytest.mark.vllm
def test_served_prompt_logprobs_are_the_models_own(served, rollouts):
    """vLLM's log-probability of each token of a student trajectory equals transformers' for the same weights."""
    import torch

    _, _, trajs, _, _ = rollouts
    model, tok = load_causal_lm("smollm2-135m", dtype=torch.float32)
    ids = list(encode(trajs[0], tok).input_ids)
    scored = asyncio.run(served.prompt_logprobs(ids))
    assert scored[0] is None and [e["id"] for e in scored[1:]] == ids[1:]
    theirs = torch.tensor([e["logprob"] for e in scored[1:]])
    torch.testing.assert_close(theirs, _own_logprobs(model, ids), rtol=0, atol=2e-3)
    assert all(e["token"] == tok.decode([e["id"]]) for e in scored[1:] if "\ufffd" not in e["token"])


@pytest.mark.slow
@pytest.mark.vllm
def test_cli_reverse_kl_round_from_a_served_teacher(served, tmp_path):
    """One reverse-kl round whose teacher is the vLLM server (openai:): the sampled tokens' teacher
    log-probabilities lie beside the rollouts, the student trains on them, and the KL estimate is recorded."""
    _nsjail()
    student = build_tiny_llama(tmp_path / "student")
    out = tmp_path / "op"
    teacher = f"openai:student@{served.base_url}"
    res = _cli("onpolicy", "--mode", "reverse-kl", "--student", f"hf:{student}", "--teacher", teacher,
              "--env", "math", "--out", out, "--rounds", "1", "--tasks", "2", "--dev-tasks", "0", "--max-steps", "2",
              "--concurrency", "1", "--sandbox", "nsjail", "--temperature", "1.0",
              "--student-option", "max_new_tokens=16", "--train-max-steps", "1", "--train-batch-size", "2",
              "--train-max-length", "512")
    assert res.returncode == 0, res.stderr[-3000:]
    (r1,) = json.loads((out / "rounds.json").read_text())["rounds"]
    assert r1["trained"] and r1["train_kd"] is not None and r1["teachers"] == {teacher: r1["labelled"]}
    run = out / "round-1" / "rollouts"
    trajs = RunStore.open(run).load()
    stored = [json.loads(line) for line in (run / TEACHER_LOGPROBS_FILE).read_text().splitlines()]
    assert {r["id"] for r in stored} == {t.id for t in trajs} == set(read_token_kl(run))
    assert all(r["logprobs"] and all(lp <= 0 for _, lp in r["logprobs"]) for r in stored)
    import yaml

    tc = yaml.safe_load((out / "round-1" / "model" / "train_config.yaml").read_text())
    assert tc["teacher_logprobs"] is True and tc["teacher_model"] is None and tc["kl"] == "reverse"


def test_cli_reverse_kl_routes_white_box_teachers_per_task(tmp_path):
    """Two hf: teachers routed by category: each rollout is scored by its own teacher (its stored log-probs are
    that teacher's, computed here again), rounds.json counts the turns per teacher, and the student trains on
    the stored log-probs."""
    import torch

    _nsjail()
    student = build_tiny_llama(tmp_path / "student")
    t1, t2 = build_tiny_llama(tmp_path / "t1", seed=1), build_tiny_llama(tmp_path / "t2", seed=2)
    out = tmp_path / "op"
    res = _cli("onpolicy", "--mode", "reverse-kl", "--student", f"hf:{student}", "--teacher", f"hf:{t1}",
               "--teacher", f"hf:{t2}", "--route", f"modular=hf:{t2}", "--teacher-option", "dtype=float32",
               "--env", "math", "--out", out, "--rounds", "1", "--tasks", "3", "--dev-tasks", "0",
               "--max-steps", "2", "--concurrency", "1", "--sandbox", "nsjail", "--temperature", "1.0",
               "--student-option", "max_new_tokens=16", "--train-max-steps", "1", "--train-batch-size", "2",
               "--train-max-length", "512")
    assert res.returncode == 0, res.stderr[-3000:]
    (r1,) = json.loads((out / "rounds.json").read_text())["rounds"]
    run = out / "round-1" / "rollouts"
    trajs = {t.id: t for t in RunStore.open(run).load()}
    stored = [json.loads(line) for line in (run / TEACHER_LOGPROBS_FILE).read_text().splitlines()]
    assert {r["id"] for r in stored} == set(trajs) and len(trajs) == 3
    models = {f"hf:{p}": load_causal_lm(p, dtype=torch.float32) for p in (t1, t2)}
    turns = {f"hf:{t1}": 0, f"hf:{t2}": 0}
    for r in stored:
        traj = trajs[r["id"]]
        assert r["teacher"] == (f"hf:{t2}" if _category(traj) == "modular" else f"hf:{t1}")
        model, tok = models[r["teacher"]]
        ids = list(encode(traj, tok).input_ids)
        own = _own_logprobs(model, ids)
        assert r["logprobs"] and all(abs(lp - float(own[i - 1])) < 1e-4 for i, lp in r["logprobs"])
        turns[r["teacher"]] += sum(m.role == "assistant" for m in traj.messages)
    assert r1["teachers"] == turns and sum(turns.values()) == r1["labelled"] and turns[f"hf:{t2}"] > 0
    import yaml

    tc = yaml.safe_load((out / "round-1" / "model" / "train_config.yaml").read_text())
    assert tc["teacher_logprobs"] is True and tc["teacher_model"] is None


def _category(traj) -> str:
    from trajdistill.envs import make_env

    return next(t.category for t in make_env("math").tasks("train", n=3) if t.id == traj.task_id)


@pytest.mark.slow
@pytest.mark.vllm
def test_dagger_round_whose_student_rolls_out_through_vllm_serve(tmp_path):
    """--student-backend vllm-serve: the student's rollouts come from a real `vllm serve` of its model dir (CPU
    venv), the expert relabels them, the student trains with hf, and the server is gone when the round ends."""
    _nsjail()
    require((VENV / "bin" / "python").exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    others = set(_served_students())  # another job's servers (a bench) are not this run's
    out = tmp_path / "op"
    res = _cli("onpolicy", "--student", "hf:smollm2-135m", "--student-backend", "vllm-serve", "--teacher",
               "expert:coder", "--env", "math", "--out", out, "--rounds", "1", "--tasks", "2", "--dev-tasks", "0",
               "--max-steps", "2", "--concurrency", "2", "--sandbox", "nsjail", "--beta-schedule", "0",
               "--student-option", "max_new_tokens=24", "--student-option", f"python={VENV / 'bin' / 'python'}",
               "--student-option", "max_model_len=2048", "--student-option", "kv_cache_gb=1",
               "--train-max-steps", "1", "--train-batch-size", "1", "--train-max-length", "512")
    assert res.returncode == 0, res.stderr[-3000:]
    (r1,) = json.loads((out / "rounds.json").read_text())["rounds"]
    assert r1["episodes"] == 2 and r1["student_turns"] == r1["turns"] > 0 and r1["labelled"] > 0 and r1["trained"]
    rollouts = RunStore.open(out / "round-1" / "rollouts").load()
    assert {t.teacher.spec for t in rollouts} == {"vllm-serve:smollm2-135m"}
    assert all(t.usage.completion_tokens > 0 for t in rollouts)
    assert {t.teacher.spec for t in RunStore.open(out / "round-1" / "relabels").load()} == {"expert:coder"}
    assert (out / "round-1" / "model" / "train_config.yaml").exists()
    assert set(_served_students()) <= others
