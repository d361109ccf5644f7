"""Bad input is one line, and a dead endpoint is not a 0% student (issue 17, section 6)."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from trajdistill.agents import make_policy
from trajdistill.envs import UnknownNameError
from conftest import cli, one_line_error


@pytest.fixture(scope="module")
def dead_url():
    """An http URL on a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "run"
    res = cli("collect", "--env", "math", "--teacher", "expert:coder", "--tasks", "3", "--sandbox", "none",
              "--out", run)
    assert res.returncode == 0, res.stderr
    return run


@pytest.fixture
def run(collected, tmp_path):
    shutil.copytree(collected, tmp_path / "run")
    return tmp_path / "run"


# ---- policy options --------------------------------------------------------------------------------


def test_an_unknown_policy_option_is_named_with_the_backends_known_ones(dead_url):
    # kv_cache_tokens is an hf: option; max_new_tokens, once refused here, is now shared by every backend
    with pytest.raises(UnknownNameError, match=r"openai policy has no option 'kv_cache_tokens'; known: .*max_tokens"):
        make_policy(f"openai:m@{dead_url}", kv_cache_tokens=64)
    make_policy(f"openai:m@{dead_url}", max_tokens=64)  # a known option still builds
    make_policy(f"openai:m@{dead_url}", max_new_tokens=64)


def test_eval_with_an_option_of_another_backend_is_one_line(dead_url, tmp_path):
    one_line_error(cli("eval", "--env", "math", "--agent", f"openai:m@{dead_url}", "--tasks", "1",
                       "--sandbox", "none", "--agent-option", "kv_cache_tokens=64"),
                   "kv_cache_tokens", "max_tokens")


# ---- a dead endpoint ---------------------------------------------------------------------------------


def test_eval_against_a_dead_endpoint_reports_errors_and_exits_non_zero(dead_url, tmp_path):
    res = cli("eval", "--env", "math", "--agent", "expert:coder", "--agent", f"openai:m@{dead_url}",
              "--tasks", "2", "--sandbox", "none", "--agent-option", "max_retries=0", "--out", tmp_path / "e")
    assert res.returncode == 1, res.stderr
    assert "every episode of" in res.stderr and "errored" in res.stderr
    header = next(line for line in res.stdout.splitlines() if "success" in line)
    assert header.split()[:3] == ["agent", "success", "errored"], header
    agents = {a["spec"]: a for a in json.loads((tmp_path / "e" / "results.json").read_text())["agents"]}
    dead = agents[f"openai:m@{dead_url}"]
    assert (dead["errors"], dead["failed"], dead["successes"]) == (2, 0, 0)
    assert (agents["expert:coder"]["errors"], agents["expert:coder"]["failed"]) == (0, 0)


def test_eval_of_a_live_agent_exits_zero(tmp_path):
    res = cli("eval", "--env", "math", "--agent", "expert:coder", "--tasks", "2", "--sandbox", "none")
    assert res.returncode == 0, res.stderr


# ---- broken run directories ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run.yaml", "stats.json"])
def test_a_run_file_replaced_by_a_directory_is_one_line(run, name):
    (run / name).unlink()
    (run / name).mkdir()
    one_line_error(cli("collect", "--env", "math", "--teacher", "expert:coder", "--tasks", "3", "--sandbox", "none",
                       "--out", run, "--resume"), name, "is a directory")
    if name == "run.yaml":
        one_line_error(cli("inspect", run), name, "is a directory")
        one_line_error(cli("export", run, "--format", "openai", "--out", run.parent / "x.jsonl"), "is a directory")


def test_inspect_on_a_file_says_it_is_a_file(run):
    msg = one_line_error(cli("inspect", run / "run.yaml"), "is a file, not a run directory")
    assert "does not exist" not in msg


# ---- env params, sandbox limits, compose -------------------------------------------------------------------


def test_an_unknown_env_param_on_math_is_one_line(tmp_path):
    one_line_error(cli("collect", "--env", "math", "--teacher", "expert:coder", "--tasks", "1", "--sandbox", "none",
                       "--env-param", "foo=1", "--out", tmp_path / "r"), "math", "foo")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [("--timeout", "-1"), ("--timeout", "0"), ("--memory-mb", "0"),
                                         ("--memory-mb", "-5")])
def test_sandbox_run_refuses_limits_that_are_not_positive(flag, value, tmp_path):
    marker = tmp_path / "ran"
    one_line_error(cli("sandbox", "run", "--backend", "none", flag, value, "--", "touch", marker),
                   flag.lstrip("-").replace("-", "_"))
    assert not marker.exists()


def test_compose_of_a_single_teacher_warns_that_nothing_is_composed(run, tmp_path):
    res = cli("compose", run, "--strategy", "dual", "--out", tmp_path / "c")
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and "only one teacher (expert:coder)" in res.stderr, res.stderr


def test_collect_from_a_dead_endpoint_exits_non_zero(dead_url, tmp_path):
    res = cli("collect", "--env", "math", "--teacher", "expert:coder", "--teacher", f"openai:m@{dead_url}",
              "--tasks", "2", "--sandbox", "none", "--out", tmp_path / "r")
    assert res.returncode == 1, res.stderr
    assert f"every episode of openai:m@{dead_url} errored" in res.stderr


def test_a_reader_does_not_need_stats_json(run):
    (run / "stats.json").unlink()
    (run / "stats.json").mkdir()
    res = cli("inspect", run)
    assert res.returncode == 0 and "expert:coder" in res.stdout, res.stderr
