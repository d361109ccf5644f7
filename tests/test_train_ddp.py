"""`trajdistill train` under `accelerate launch`: 2 CPU processes (gloo) against 1 process at the same global batch.

The 2-process run uses the shipped docs/accelerate/ddp.yaml and the unchanged `trajdistill train` command. It
must reproduce the 1-process run step by step. With a staged curriculum every optimizer step trains different
rows, so equal losses at every step show that the sequential sampler was sharded (each process took its share
of the same global batch, in curriculum order) rather than shuffled or replicated, and that the logged loss
and per-kind losses are global means over all trained tokens, not a mean of per-process means.

Tolerance: relative 2e-5 on every logged loss and the grad norm, and on the weight update. Both runs are fp32
full fine-tuning without dropout on the same rows, one thread per process, so they differ only in float
summation order (the 2-process batches are padded to other widths, and the gradient is summed per process,
then all-reduced): measured here, at most 6e-7 on the losses and 7e-7 on the update. The mistakes this must
catch are larger: per-kind losses averaged as a mean of per-process means moved loss_act by 8.5e-5, a loss
normalised per process moved the loss by 1.7e-4 and the update by 1.1e-2, and consecutive steps, which train
other rows, log losses 2-4% apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from trajdistill.agents import CollectConfig, build_tiny_llama, collect
from trajdistill.agents._vllm_serve import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "docs" / "accelerate"
STEPS = 3
REL = 2e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "math"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` sandbox warns that it is unconfined
        collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=16, out=str(out), sandbox="none"))
    return out


def train_args(run, tiny, out, batch_size, steps=STEPS):
    # fp32 and full fine-tuning (no LoRA dropout): the two runs differ only in summation order
    return ["train", "--data", run, "--student", f"hf:{tiny}", "--out", out, "--max-steps", steps,
            "--batch-size", batch_size, "--curriculum", "staged:3", "--no-bf16", "--full"]


def launch(prefix, args, tmp_path, warnings="ignore"):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200", "PYTHONWARNINGS": warnings,
           "OMP_NUM_THREADS": "1"}  # HOME: no user accelerate config can join in
    res = subprocess.run([sys.executable, *map(str, prefix), "-m", "trajdistill", *map(str, args)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def history(out):
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def runs(run, tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    one = launch([], train_args(run, tiny, tmp / "one", 4), tmp)
    two = launch(["-m", "accelerate.commands.launch", "--config_file", CONFIGS / "ddp.yaml", "--num_processes", 2,
                  "--main_process_port", free_port()], train_args(run, tiny, tmp / "two", 2), tmp)
    return {"one": (tmp / "one", one), "two": (tmp / "two", two)}


def test_two_processes_ran_at_the_same_global_batch(runs):
    one, two = (json.loads((runs[k][0] / "curriculum.json").read_text()) for k in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["rows_per_step"] == two["rows_per_step"] == 4
    assert one["rows"] == two["rows"] >= STEPS * 4  # the compared steps stay inside the first epoch
    assert one["stage_steps"] == two["stage_steps"]
    assert "| processes | 2 |" in (runs["two"][0] / "README.md").read_text()


def test_two_processes_log_the_losses_of_one(runs):
    one, two = history(runs["one"][0]), history(runs["two"][0])
    assert [e["step"] for e in one] == [e["step"] for e in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        for key in ("loss", "loss_reason", "loss_act", "loss_answer", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=REL), (a["step"], key)
        assert a["curriculum_stage"] == b["curriculum_stage"]
        assert a["num_tokens"] == b["num_tokens"]  # tokens seen, padding excluded
    assert len({e["curriculum_stage"] for e in two}) > 1  # the compared steps cross a stage boundary
    assert len({round(e["loss"], 3) for e in two}) == STEPS  # every step trained different rows


def test_two_processes_train_the_weights_of_one(runs, tiny):
    from safetensors.torch import load_file

    base, one, two = (load_file(p / "model.safetensors") for p in (tiny, runs["one"][0], runs["two"][0]))
    assert base.keys() == one.keys() == two.keys()
    # the updates, not the weights: Adam moves every weight by about the learning rate, so only the update
    # shows a step trained on other rows
    delta_one = torch.cat([(one[k] - base[k]).flatten() for k in base])
    delta_two = torch.cat([(two[k] - base[k]).flatten() for k in base])
    assert delta_one.norm() > 0
    assert (delta_two - delta_one).norm() / delta_one.norm() < REL


def test_per_kind_losses_are_printed_once(runs):
    out = runs["two"][1].stdout
    assert out.count("'loss_act'") == STEPS  # the trainer's log lines come from the main process only
    assert out.count(f"trained {STEPS} steps") == 1  # and so does the command's summary table


def test_fsdp_config_without_an_accelerator_trains_and_says_it_is_not_sharded(run, tiny, tmp_path):
    res = launch(["-m", "accelerate.commands.launch", "--config_file", CONFIGS / "fsdp.yaml", "--num_processes", 1,
                  "--main_process_port", free_port()], train_args(run, tiny, tmp_path / "o", 2, steps=1),
                 tmp_path, warnings="default")
    assert "asks for FSDP" in res.stderr and "plain DDP" in res.stderr
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    kinds = {p.name: load_config_from_file(str(p)).distributed_type for p in CONFIGS.glob("*.yaml")}
    assert kinds == {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp.yaml": DistributedType.FSDP,
                     "deepspeed-zero3.yaml": DistributedType.DEEPSPEED}
