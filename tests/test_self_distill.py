"""Self-distillation: sampling, verifier filtering, the confirm policy, the deduplicated replay buffer,
and one full round with a tiny model student."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from trajdistill.agents import CollectConfig, PolicyError, collect, policies
from trajdistill.train import SelfDistillConfig, parse_train_args, self_distill
from trajdistill.train._self_distill import SelfDistiller, merge_buffer
from trajdistill.envs import PolicyRequest, Turn, make_env
from trajdistill.envs._react_text import format_final
from trajdistill.trajectories import RunError, RunStore, compose


class FlipPolicy:
    """`flip:right` answers correctly; `flip:wrong` never does; `flip:seed` is right on even seeds only,
    so two samples with consecutive seeds disagree on every task."""

    backend, action_format = "flip", "react"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", seed: int | None = None, **_: Any):
        self.spec, self.model, self.mode, self.seed = spec, target, target, seed or 0

    async def __call__(self, request: PolicyRequest) -> Turn:
        answer = int(request.task.data["answer"])
        right = self.mode == "right" or (self.mode == "seed" and self.seed % 2 == 0)
        return Turn(content=format_final("I just know it.", answer if right else answer + 1))

    def sampling(self) -> dict[str, Any]:
        return {"seed": self.seed}

    async def close(self) -> None:
        pass


class DownFor(FlipPolicy):
    """`flip:right` behind an endpoint that is down for the task ids listed in the file its target names."""

    def __init__(self, target: str, **kw: Any):
        super().__init__("right", **kw)
        self.down = target

    async def __call__(self, request: PolicyRequest) -> Turn:
        if request.task.id in open(self.down).read().split():
            raise PolicyError(f"endpoint down for {request.task.id}")
        return await super().__call__(request)


policies.register("flip", FlipPolicy)
policies.register("downfor", DownFor)


def _cfg(tmp_path, **kw) -> SelfDistillConfig:
    base = dict(student="expert:coder", env="math", out=str(tmp_path / "sd"), samples=2, tasks=3, dev_tasks=0,
                sandbox="none", concurrency=2, max_steps=4)
    return SelfDistillConfig(**{**base, **kw})


async def _gather(cfg, buffer=()):
    distiller = SelfDistiller(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return await distiller.gather(1, cfg.student, list(buffer))


@pytest.fixture(scope="module")
def coder_compose(tmp_path_factory):
    root = tmp_path_factory.mktemp("compose")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect(CollectConfig(env="math", teachers=["expert:reasoner", "expert:coder"], out=str(root / "run"),
                              tasks=6, split="train", sandbox="none", concurrency=2))
    compose([root / "run"], "best", root / "best", prefer="expert:coder")
    return root / "best"


async def test_identical_samples_are_kept_once_and_the_composed_set_dedupes_them(tmp_path, coder_compose):
    g = await _gather(_cfg(tmp_path))
    assert len(g.samples) == 6 and len(g.kept) == 6 and not g.disputed
    assert g.added == 3  # the expert samples each task the same way twice
    assert {t.teacher.sampling["sample"] for t in g.kept} == {"1.0", "1.1"}

    composed = RunStore.open(coder_compose).load()
    g2 = await _gather(_cfg(tmp_path / "b"), merge_buffer([], composed)[0])
    assert g2.added == 0 and len(g2.buffer) == len(composed)  # the composed set already holds these solutions


async def test_disputed_tasks_keep_only_samples_the_confirm_policy_agrees_with(tmp_path):
    plain = await _gather(_cfg(tmp_path / "a", student="flip:seed"))
    assert len(plain.disputed) == 3 and plain.answers is None
    assert len(plain.kept) == 3 and all(t.outcome.success for t in plain.kept)  # the verifier alone

    agree = await _gather(_cfg(tmp_path / "b", student="flip:seed", confirm="expert:coder"))
    assert len(agree.kept) == 3 and all(a is not None for a in agree.answers.values())
    assert len(RunStore.open(tmp_path / "b" / "sd" / "round-1" / "confirm").load()) == 3

    disagree = await _gather(_cfg(tmp_path / "c", student="flip:seed", confirm="flip:wrong"))
    assert disagree.kept == [] and disagree.added == 0


async def test_a_sample_with_errored_episodes_stops_the_round_and_a_rerun_retries_only_them(tmp_path):
    """An endpoint that fails on some episodes must not leave a buffer trained on what was left."""
    down = tmp_path / "down.txt"
    task = make_env("math").tasks("train", 3)[1]
    down.write_text(task.id)
    cfg = _cfg(tmp_path, student=f"downfor:{down}", samples=1)
    with pytest.raises(RunError, match=r"round 1 sample 1: 1 episodes errored \(last: endpoint down for .*\); "
                                       "nothing was trained"):
        await _gather(cfg)
    assert len(RunStore.open(tmp_path / "sd" / "round-1" / "samples-0").load()) == 2  # the finished ones kept
    down.write_text("")
    g = await _gather(cfg)
    assert sorted(t.task_id for t in g.samples) == sorted(t.id for t in make_env("math").tasks("train", 3))


def test_buffer_run_holds_several_samples_of_one_task_and_student(tmp_path):
    from trajdistill.train._self_distill import write_run

    import asyncio

    g = asyncio.run(_gather(_cfg(tmp_path, student="flip:right", samples=1)))
    a = g.kept[0]
    b = a.model_copy(update={"id": "other", "teacher": a.teacher.model_copy(
        update={"sampling": {**a.teacher.sampling, "sample": "1.1"}}),
        "messages": [*a.messages[:-1], a.messages[-1].model_copy(update={"content": "Final Answer: x"})]})
    merged, added = merge_buffer([a], [b, b])
    assert added == 1
    write_run(tmp_path / "buf", merged, {"env": "math"})
    assert len(RunStore.open(tmp_path / "buf").load()) == 2  # (task, student) repeats, the sample differs


def test_parse_train_args():
    assert parse_train_args(["--train-max-steps", "5", "--train-lora-r=4", "--train-packing",
                             "--train-no-only-success"]) == {
        "max_steps": "5", "lora_r": "4", "packing": True, "only_success": False}
    with pytest.raises(ValueError, match="--train- prefix"):
        parse_train_args(["--lora-r", "5"])
    with pytest.raises(ValueError, match="unknown trainer setting.*--train-bogus"):
        SelfDistillConfig(student="hf:x", env="math", out="o", train_args={"bogus": 1})
    typed = SelfDistillConfig(student="hf:x", env="math", out="o", train_args={"lora_r": "4", "packing": "true",
                                                                              "learning_rate": "1e-4"})
    assert typed.train_args == {"lora_r": 4, "packing": True, "learning_rate": 1e-4}
    with pytest.raises(ValueError, match="--train-lora-r must be a number"):
        SelfDistillConfig(student="hf:x", env="math", out="o", train_args={"lora_r": "four"})
    with pytest.raises(ValueError, match="--samples must be at least 1"):
        SelfDistillConfig(student="hf:x", env="math", out="o", samples=0)


def test_one_round_with_a_tiny_model_student(tmp_path, coder_compose):
    from trajdistill.agents import build_tiny_llama

    tiny = build_tiny_llama(tmp_path / "tiny")
    cfg = _cfg(tmp_path, student=f"hf:{tiny}", compose_runs=[str(coder_compose)], dev_tasks=2, max_steps=2,
               temperature=1.0, student_options={"max_new_tokens": 24},
               train_args=parse_train_args(["--train-max-steps", "2", "--train-batch-size", "2",
                                            "--train-max-length", "512", "--train-curriculum", "none"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = self_distill(cfg)
    (r,) = result.rounds
    assert r.sampled == 6 and r.trained and r.train_steps == 2
    assert r.dev_success_rate is not None and 0.0 <= r.dev_success_rate <= 1.0
    composed_ids = {t.id for t in RunStore.open(coder_compose).load()}
    buffer_ids = {t.id for t in RunStore.open(tmp_path / "sd" / "round-1" / "buffer").load()}
    assert composed_ids <= buffer_ids and r.buffer_size == len(buffer_ids) == len(composed_ids) + r.buffer_added
    assert result.final_student == r.model and (tmp_path / "sd" / "round-1" / "model" / "model.safetensors").is_file()
    doc = json.loads((tmp_path / "sd" / "rounds.json").read_text())
    assert doc["rounds"][0]["sampled"] == 6 and doc["final_student"] == r.model
    assert len(list((tmp_path / "sd" / "round-1").glob("samples-*"))) == 2


def test_cli_self_distill_rejects_bad_trainer_settings(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "trajdistill", "self-distill", "--student", "hf:x", "--env", "math",
                          "--out", str(tmp_path / "o"), "--train-bogus", "1"], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert res.returncode == 2 and "error:" in res.stderr and "--train-bogus" in res.stderr
    assert not (tmp_path / "o").exists()  # bad input stops before any sampling


def test_a_student_that_cannot_train_is_refused_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="--student: .*hf:"):
        self_distill(_cfg(tmp_path))  # expert:coder samples fine but is no model to fine-tune
    assert not (tmp_path / "sd").exists()


class Crash(Exception):
    pass


def _tiny_cfg(tmp_path, compose_run, **kw) -> SelfDistillConfig:
    from trajdistill.agents import build_tiny_llama

    tiny = build_tiny_llama(tmp_path / "tiny") if not (tmp_path / "tiny").exists() else tmp_path / "tiny"
    base = dict(student=f"hf:{tiny}", compose_runs=[str(compose_run)], max_steps=2, temperature=1.0,
                student_options={"max_new_tokens": 16},
                train_args=parse_train_args(["--train-max-steps", "1", "--train-batch-size", "2",
                                             "--train-max-length", "512", "--train-curriculum", "none"]))
    return _cfg(tmp_path, **{**base, **kw})


def _episodes(run) -> list[str]:
    return sorted(t.task_id for t in RunStore.open(run).load())


def test_a_cut_off_self_distillation_resumes_without_losing_or_repeating_episodes(tmp_path, coder_compose):
    def crash_in_second_sample(label, p):  # after its first episode (the hf batch may finish two at once)
        if label == "round 1 sample 2/2" and p.done == 1:
            raise Crash("power cut")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Crash):
            self_distill(_tiny_cfg(tmp_path, coder_compose), crash_in_second_sample)
        round1 = tmp_path / "sd" / "round-1"
        assert len(_episodes(round1 / "samples-0")) == 3 and 0 < len(_episodes(round1 / "samples-1")) < 3
        assert not (tmp_path / "sd" / "rounds.json").exists()

        with pytest.raises(ValueError, match="pass --resume"):
            self_distill(_tiny_cfg(tmp_path, coder_compose))
        with pytest.raises(ValueError, match="settings differ .*temperature"):
            self_distill(_tiny_cfg(tmp_path, coder_compose, resume=True, temperature=0.5))

        # the loop engine is how episodes step, not a setting of the run: a resume may change it
        first = self_distill(_tiny_cfg(tmp_path, coder_compose, resume=True, loop="langgraph"))
        (r1,) = first.rounds
        tasks = _episodes(round1 / "samples-0")
        assert len(set(tasks)) == 3  # every task sampled once per sample run: nothing lost, nothing run twice
        assert _episodes(round1 / "samples-1") == tasks
        assert r1.sampled == 6 and r1.trained and (round1 / "model" / "model.safetensors").is_file()

        stamp = [p.stat().st_mtime_ns for p in sorted(round1.rglob("*")) if p.is_file()]
        second = self_distill(_tiny_cfg(tmp_path, coder_compose, resume=True, rounds=2))
    assert [p.stat().st_mtime_ns for p in sorted(round1.rglob("*")) if p.is_file()] == stamp  # round 1 kept
    assert second.rounds[0] == r1 and second.rounds[1].student == r1.model
    assert json.loads((tmp_path / "sd" / "rounds.json").read_text())["final_student"] == second.final_student
    buffer1 = {t.id for t in RunStore.open(round1 / "buffer").load()}
    assert buffer1 <= {t.id for t in RunStore.open(tmp_path / "sd" / "round-2" / "buffer").load()}
