"""Span-aware SFT on a tiny Llama (seconds) and, marked slow, on the embedded SmolLM2.

Data is a real collection: the math env's coder expert on 6 train tasks, no sandbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from trajdistill.agents import CollectConfig, build_tiny_llama, collect, is_peft_adapter, load_causal_lm, make_policy
from trajdistill.envs import PolicyRequest, Task
from trajdistill.trajectories import RunStore
from trajdistill.train import (SPAN_KINDS, SpanCollator, TrainConfig, build_data, build_trainer, encode, pack, train,
                               trainer_class)
from trajdistill.train._trainer import kd_divergence


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "math"
    collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=6, out=str(out), sandbox="none"))
    return out


def config(run, tiny, out, **kw):
    kw = {"max_steps": 2, "batch_size": 2, **kw}
    return TrainConfig(data=[str(run)], student=f"hf:{tiny}", out=str(out), **kw)


@pytest.fixture(scope="module")
def trained(run, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "out"
    return train(config(run, tiny, out, max_steps=3, curriculum="staged:2", full_finetune=False))


# ---- the trainer end to end ---------------------------------------------------------------------

def test_span_losses_logged_in_trainer_state(trained):
    history = json.loads((trained.out / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for entry in steps:
        for key in ("loss_reason", "loss_act", "loss_answer"):
            assert 0 < entry[key] < 20  # a mean token CE (ln 49152 = 10.8 for a random model)
        assert entry["curriculum_stage"] in (1, 2)
    assert steps[-1]["curriculum_stage"] == 2
    assert trained.losses["loss_act"] == steps[-1]["loss_act"]


def test_output_dir_holds_adapter_tokenizer_card_plot_and_config(trained, run):
    out = trained.out
    assert is_peft_adapter(out) and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert TrainConfig(**saved).curriculum == "staged:2"  # the file round-trips into a config
    card = (out / "README.md").read_text()
    assert str(run.resolve()) in card and "expert:coder (6)" in card  # provenance: run, teacher, count
    assert "| act_weight | 2.0 |" in card and "loss_answer" in card
    curriculum = json.loads((out / "curriculum.json").read_text())
    assert curriculum["stage_sizes"] == [3, 6] and curriculum["stage_steps"] == trained.stage_steps


async def test_hf_policy_loads_the_trained_adapter(trained):
    policy = make_policy(f"hf:{trained.out}", max_new_tokens=4)
    task = Task(id="t", env="math", split="test", prompt="Evaluate 2 + 2.")
    turn = await policy(PolicyRequest(messages=[{"role": "user", "content": "Evaluate 2 + 2."}], tools=[], task=task))
    await policy.close()
    assert isinstance(turn.content, str) and turn.usage["completion_tokens"] > 0


def test_training_from_an_adapter_goes_on_in_that_adapter(trained, run, tiny, tmp_path):
    # self-distillation round 2 trains the round-1 adapter: the output must again be one adapter on the base
    from safetensors.torch import load_file

    again = train(TrainConfig(data=[str(run)], student=f"hf:{trained.out}", out=str(tmp_path / "o"),
                              max_steps=1, batch_size=2, full_finetune=False))
    config = json.loads((again.out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny)
    before, after = (load_file(str(d / "adapter_model.safetensors")) for d in (trained.out, again.out))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model, _ = load_causal_lm(again.out)
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_lora_weights_change_and_base_stays_frozen(run, tiny, tmp_path):
    trainer, data, _ = build_trainer(config(run, tiny, tmp_path / "o", full_finetune=False))
    params = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    lora = [n for n in params if "lora_" in n]
    assert lora and all(params[n].requires_grad for n in lora)
    assert all(not torch.equal(before[n], params[n]) for n in lora if "lora_B" in n)
    frozen = [n for n in params if "lora_" not in n]
    assert all(torch.equal(before[n], params[n].detach()) for n in frozen)


# ---- the loss -----------------------------------------------------------------------------------

def toy_batch():
    """Two sequences, right-padded, with every span kind and masked prompt tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 400, (2, 12), generator=g)
    kinds = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0],
                          [0, 0, 1, 2, 2, 1, 2, 3, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 12, [1] * 9 + [0] * 3])
    labels = torch.where(kinds > 0, ids, torch.tensor(-100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "span_kinds": kinds}


def hand_token_ce(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    ce = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return ce, labels != -100, batch["span_kinds"][:, 1:]


@pytest.fixture(scope="module")
def span_trainer(run, tiny, tmp_path_factory):
    trainer, _, _ = build_trainer(config(run, tiny, tmp_path_factory.mktemp("w") / "o", reason_weight=0.5,
                                         act_weight=3.0, answer_weight=2.0))
    trainer.model.eval()  # no LoRA dropout: the forward is deterministic
    return trainer


def test_weighted_loss_matches_hand_computation(span_trainer):
    batch = toy_batch()
    ce, mask, kinds = hand_token_ce(span_trainer.model, batch)
    lam = torch.tensor([0.0, 0.5, 3.0, 2.0])
    expected = (lam[kinds] * ce * mask).sum() / mask.sum()
    with torch.no_grad():
        got = span_trainer.compute_loss(span_trainer.model, dict(batch))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # under gradient accumulation the Trainer passes the step's trained-token count: sum / that count
    with torch.no_grad():
        got = span_trainer.compute_loss(span_trainer.model, dict(batch), num_items_in_batch=torch.tensor(40))
    torch.testing.assert_close(got, (lam[kinds] * ce * mask).sum() / 40, rtol=1e-5, atol=1e-5)
    # the logged span losses are the plain mean CE of each kind over the window
    logs = span_trainer.span_logs("eval")
    for name, kind in SPAN_KINDS.items():
        sel = mask & (kinds == kind)
        expected_kind = 2 * ce[sel].sum() / (2 * sel.sum())  # two calls in the window
        assert logs[f"eval_loss_{name}"] == pytest.approx(expected_kind.item(), abs=1e-5)


def test_uniform_weights_are_plain_sft(run, tiny, tmp_path):
    trainer, _, _ = build_trainer(config(run, tiny, tmp_path / "o", reason_weight=1, act_weight=1,
                                         answer_weight=1, curriculum="none"))
    trainer.model.eval()
    batch = toy_batch()
    ce, mask, _ = hand_token_ce(trainer.model, batch)
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        plain = trainer_class().__mro__[1].compute_loss(trainer, trainer.model,
                                                        {k: v for k, v in batch.items() if k != "span_kinds"})
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=-100)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)  # TRL SFTTrainer's own loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, (ce * mask).sum() / mask.sum(), rtol=1e-5, atol=1e-5)
    assert not trainer.sequential  # curriculum none: the Trainer's shuffling sampler


def test_kd_divergence_forward_and_reverse():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    T = 2.0
    ps, pt = F.softmax(s / T, -1), F.softmax(t / T, -1)
    forward = (pt * (pt.log() - ps.log())).sum(-1) * T * T
    reverse = (ps * (ps.log() - pt.log())).sum(-1) * T * T
    torch.testing.assert_close(kd_divergence(s, t, "forward", T), forward)
    torch.testing.assert_close(kd_divergence(s, t, "reverse", T), reverse)


def test_white_box_teacher_logs_kd_loss(run, tiny, tmp_path):
    teacher = build_tiny_llama(tmp_path / "teacher", seed=1)
    trainer, _, _ = build_trainer(config(run, tiny, tmp_path / "o", max_steps=1, teacher_model=str(teacher),
                                         kl="reverse", curriculum="none"))
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert entry["loss_kd"] > 0 and entry["loss_reason"] > 0
    # loss = span CE + kd_weight * KD, both weighted by span: more than the CE part alone
    assert entry["loss"] > min(entry["loss_reason"], entry["loss_act"])


# ---- data: packing and collation ----------------------------------------------------------------

def test_a_curriculum_run_shorter_than_its_data_trains_rows_from_easy_to_hard(run, tiny, tmp_path):
    """One step of 2 rows over 6 ordered examples: the easiest and the middle one, not the two easiest."""
    def cfg(out, steps):
        return config(run, tiny, tmp_path / out, packing=False, max_steps=steps, batch_size=2, grad_accum=1,
                      curriculum="complexity")

    _, whole, _ = build_trainer(cfg("whole", 100))
    _, short, _ = build_trainer(cfg("short", 1))
    assert len(whole.dataset) == 6 and whole.paced_from is None
    assert short.paced_from == 6 and short.dataset["input_ids"] == [whole.dataset[i]["input_ids"] for i in (0, 3)]
    result = train(cfg("trained", 1))
    report = json.loads((result.out / "curriculum.json").read_text())
    assert (report["rows"], report["paced_from_rows"]) == (2, 6)
    assert "evenly spaced over the 6 ordered ones to fit 1 step)" in (result.out / "README.md").read_text()


def test_a_max_length_that_cuts_trajectories_is_warned_and_written_in_the_model_card(run, tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    lengths = sorted(len(encode(t, tok)) for t in RunStore.open(run).load())
    at = lengths[len(lengths) // 2]
    longer = sum(n > at for n in lengths)
    with pytest.warns(UserWarning, match=f"{longer} of {len(lengths)} trajectories are longer than max_length {at}"):
        data = build_data(config(run, tiny, tmp_path / "o", max_length=at), tok)
    assert data.cut == longer > 0
    with pytest.warns(UserWarning, match="longer than max_length"):
        result = train(config(run, tiny, tmp_path / "t", max_length=at, max_steps=1))
    assert f"{longer} trajectories were longer than max_length {at}" in (result.out / "README.md").read_text()


def test_packing_keeps_span_kinds_aligned(run, tiny, tmp_path):
    trainer, data, _ = build_trainer(config(run, tiny, tmp_path / "o", packing=True, max_length=800,
                                            max_steps=100, curriculum="complexity"))  # every row fits the steps
    _, plain, _ = build_trainer(config(run, tiny, tmp_path / "p", packing=False, max_length=800, max_steps=100,
                                       curriculum="complexity"))
    originals = [plain.dataset[i] for i in range(len(plain.dataset))]
    assert 1 < len(data.dataset) < len(originals)  # several trajectories per row
    docs = []
    for row in data.dataset:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        docs += [{k: row[k][a:b] for k in ("input_ids", "labels", "span_kinds")} for a, b in zip(starts, starts[1:])]
    assert len(docs) == len(originals)
    for doc, orig in zip(docs, originals):  # same order, same tokens, kinds aligned with the labels
        assert doc["input_ids"] == orig["input_ids"]
        assert doc["span_kinds"][1:] == orig["span_kinds"][1:] and doc["labels"][1:] == orig["labels"][1:]
    batch = SpanCollator(0)([data.dataset[0], data.dataset[1]])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    trainer.args.max_steps = 1  # one step shows the packed rows train
    trainer.train()
    assert any("loss_act" in e for e in trainer.state.log_history)


def test_packed_trajectories_do_not_attend_to_each_other(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    a, b = list(range(10, 30)), list(range(40, 55))
    batch = SpanCollator(0)([{"input_ids": a + b, "labels": a + b, "span_kinds": [1] * 35,
                              "position_ids": list(range(20)) + list(range(15))}])
    with torch.no_grad():
        # no cache, as in training: transformers reads packed sequences from position_ids only then
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[20:], alone, rtol=1e-4, atol=1e-4)


def test_pack_masks_the_first_label_of_each_trajectory():
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "span_kinds": [1, 2, 3]},
            {"input_ids": [4, 5], "labels": [4, 5], "span_kinds": [2, 2]},
            {"input_ids": [6, 7, 8], "labels": [-100, 7, 8], "span_kinds": [0, 1, 1]}]
    packed, where = pack(rows, max_length=5)
    assert where == [0, 0, 1]
    assert packed[0] == {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5],
                         "span_kinds": [0, 2, 3, 0, 2], "position_ids": [0, 1, 2, 0, 1]}


def test_collator_pads_all_four_columns():
    batch = SpanCollator(pad_token_id=9)([
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3], "span_kinds": [0, 1, 2]},
        {"input_ids": [4], "attention_mask": [1], "labels": [4], "span_kinds": [3]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["span_kinds"].tolist() == [[0, 1, 2], [3, 0, 0]]
    assert batch["lengths"].tolist() == [3, 1]  # the tokens seen, whatever the padding


# ---- full fine-tuning, config, CLI --------------------------------------------------------------

def test_full_finetune_saves_changed_weights(run, tiny, tmp_path):
    from safetensors.torch import load_file

    result = train(config(run, tiny, tmp_path / "full", full_finetune=True, max_steps=1, curriculum="none",
                          learning_rate=1e-3))
    assert not is_peft_adapter(result.out)
    before, after = load_file(tiny / "model.safetensors"), load_file(result.out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (result.out / "README.md").read_text().count("full fine-tune") == 1


def test_defaults_are_the_recipe_that_learns(run, tiny, tmp_path):
    cfg = config(run, tiny, tmp_path / "o")
    assert cfg.full_finetune and cfg.packing and cfg.learning_rate == 1e-4 and cfg.curriculum == "none"
    assert config(run, tiny, tmp_path / "o", full_finetune=False).learning_rate == 2e-4  # LoRA's own default
    assert config(run, tiny, tmp_path / "o", learning_rate=3e-5).learning_rate == 3e-5


def test_config_validation_lists_every_problem(tmp_path):
    with pytest.raises(ValueError) as err:
        TrainConfig(data=[str(tmp_path / "missing")], student="openai:gpt@http://x", out="",
                    reason_weight=-1, curriculum="staged:0", lora_r=0, kl="sideways", max_steps=0)
    msg = str(err.value)
    assert "\n" not in msg  # one line, as the CLI prints it
    for setting in ("data:", "out:", "student must be an hf:", "reason_weight must be >= 0", "curriculum must be",
                    "lora_r must be > 0", "kl must be", "max_steps must be"):
        assert setting in msg
    with pytest.raises(ValueError, match="kd_cutoff_prob reads the teacher's view"):
        TrainConfig(data=[str(tmp_path)], student="hf:x", out="o", kd_cutoff_prob=0.1)  # no teacher to read
    with pytest.raises(ValueError, match="kd_max_token_kl reads the teacher's view"):
        TrainConfig(data=[str(tmp_path)], student="hf:x", out="o", kd_max_token_kl=1.0)
    with pytest.raises(ValueError, match=r"kd_cutoff_prob must be in \[0, 1\), got 1.0"):
        TrainConfig(data=[str(tmp_path)], student="hf:x", out="o", kd_cutoff_prob=1.0, teacher_model="x")


def test_no_successful_trajectories_is_a_clear_error(run, tiny, tmp_path):
    from trajdistill.trajectories import RunStore

    bad = tmp_path / "failed"
    store = RunStore.create(bad, {"env": "math"})
    for traj in RunStore.open(run).load():
        store.append(traj.model_copy(update={"outcome": traj.outcome.model_copy(update={"success": False})}))
    store.close()
    with pytest.raises(ValueError, match="no successful trajectories"):
        build_trainer(config(bad, tiny, tmp_path / "o"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root",
                                            "PYTHONWARNINGS": "ignore"})


def test_cli_trains_with_config_file_and_flags(run, tiny, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"student: hf:{tiny}\nbatch_size: 2\nmax_steps: 5\ncurriculum: none\nact_weight: 1.5\n")
    res = cli("train", "--config", cfg, "--data", run, "--out", tmp_path / "o", "--max-steps", "1", "--lora")
    assert res.returncode == 0, res.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "o" / "train_config.yaml").read_text())
    assert saved["max_steps"] == 1 and saved["act_weight"] == 1.5  # the flag won; the file gave the rest
    assert saved["full_finetune"] is False and saved["learning_rate"] == 2e-4
    assert "loss_act" in res.stdout


def test_cli_bad_input_is_one_line(run, tmp_path):
    res = cli("train", "--data", run, "--out", tmp_path / "o", "--reason-weight", "-1", "--curriculum", "bogus")
    assert res.returncode == 2
    assert "reason_weight must be >= 0" in res.stderr and "curriculum must be" in res.stderr


# ---- the real embedded model --------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_smollm2_trains_two_steps(run, tmp_path):
    result = train(TrainConfig(data=[str(run)], student="hf:smollm2-135m", out=str(tmp_path / "o"), max_steps=2,
                               batch_size=1, max_length=512))  # every other setting the default: full, bf16 here
    assert result.steps == 2 and {"loss_reason", "loss_act"} <= result.losses.keys()
    assert not is_peft_adapter(result.out) and (result.out / "model.safetensors").is_file()
    model, _ = load_causal_lm(result.out)
    assert model.config.num_hidden_layers == 30  # the whole SmolLM2-135M, loadable as a policy
    lora = train(TrainConfig(data=[str(run)], student="hf:smollm2-135m", out=str(tmp_path / "lora"), max_steps=1,
                             batch_size=1, max_length=512, full_finetune=False))
    assert json.loads((lora.out / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
