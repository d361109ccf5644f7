"""`trajdistill eval`: agents on the same held-out tasks through the collector, scored with Wilson CIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trajdistill.agents import EvalConfig, evaluate, wilson_ci
from trajdistill.agents._eval import slug
from trajdistill.trajectories import RunStore

from fault_server import Error, FaultServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the `none` sandbox warns

AGENT_KEYS = {"spec", "success_rate", "ci95", "n", "mean_steps", "invalid_action_rate", "tokens_per_episode",
              "wall_s", "errors", "by_difficulty", "by_category", "failures"}


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    cfg = EvalConfig(env="math", agents=["expert:coder", "expert:reasoner"], tasks=15, out=str(out),
                     sandbox="none", concurrency=4)
    return evaluate(cfg), out


def by_spec(doc: dict) -> dict[str, dict]:
    return {a["spec"]: a for a in doc["agents"]}


def test_wilson_ci_known_values():
    assert wilson_ci(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_ci(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_ci(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_ci(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_ci(0, 0) == (0.0, 1.0)


def test_results_json_schema_and_expert_scores(experts):
    _, out = experts
    doc = json.loads((out / "results.json").read_text())
    assert doc["env"] == "math" and doc["split"] == "test" and doc["tasks"] == 15
    agents = by_spec(doc)
    assert list(agents) == ["expert:coder", "expert:reasoner"]
    for a in agents.values():
        assert AGENT_KEYS <= set(a)
        lo, hi = a["ci95"]
        assert 0.0 <= lo <= a["success_rate"] <= hi <= 1.0
        assert a["n"] == 15 and a["errors"] == 0 and a["invalid_action_rate"] == 0.0
        assert sum(d["n"] for d in a["by_difficulty"].values()) == 15
        assert sum(c["n"] for c in a["by_category"].values()) == 15
        assert sum(a["failures"].values()) == a["n"] - a["successes"] - a["errors"]  # one kind per failed episode
    coder, reasoner = agents["expert:coder"], agents["expert:reasoner"]
    assert set(reasoner["failures"]) - {"wrong_final_answer"} == {k for k, v in reasoner["failures"].items() if not v}
    assert coder["success_rate"] == 1.0 and coder["ci95"][0] < 1.0 and coder["ci95"][1] == 1.0
    assert coder["mean_steps"] == 2.0 and reasoner["mean_steps"] == 1.0  # coder runs python, then answers
    assert set(coder["by_difficulty"]) == {"1", "2", "3"}
    assert reasoner["by_difficulty"]["3"]["success_rate"] < coder["by_difficulty"]["3"]["success_rate"]
    assert reasoner["success_rate"] < 1.0


def test_every_agent_ran_the_same_tasks_into_its_own_run(experts):
    results, out = experts
    seen = {}
    for a in results.agents:
        store = RunStore.open(out / a.run)
        assert store.config["teachers"] == [a.spec] and store.config["split"] == "test"
        trajs = store.load()
        assert {t.teacher.spec for t in trajs} == {a.spec}
        seen[a.spec] = sorted(t.task_id for t in trajs)
    assert seen["expert:coder"] == seen["expert:reasoner"] == sorted(results.task_ids)
    assert len(set(results.task_ids)) == 15 and all(t.startswith("math-test-") for t in results.task_ids)


def test_success_plot_is_a_png(experts):
    _, out = experts
    data = (out / "success.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_success_plot_at_100_percent(tmp_path):
    from trajdistill.agents import AgentResult, EvalResults
    from trajdistill.agents._eval import plot_success

    lo, hi = wilson_ci(10, 10)
    assert hi < 1.0  # float rounding: the upper bound sits just below the rate
    agent = AgentResult("expert:x", 1.0, (lo, hi), 10, 10, 1.0, 0.0, 0.0, 0.0, 0, {}, {}, "runs/x")
    plot_success(EvalResults("math", "test", 10, [agent], [], None), tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_out_dir_must_be_new(experts):
    _, out = experts
    with pytest.raises(ValueError, match="not empty"):
        evaluate(EvalConfig(env="math", agents=["expert:coder"], tasks=1, out=str(out), sandbox="none"))


class Crash(Exception):
    pass


def test_a_cut_off_eval_resumes_without_losing_or_repeating_episodes(tmp_path):
    cfg = dict(env="math", agents=["expert:coder", "expert:reasoner"], tasks=6, out=str(tmp_path / "out"),
               sandbox="none", concurrency=1)

    def crash(spec, p):  # in the second agent, after its second episode
        if spec == "expert:reasoner" and p.done == 2:
            raise Crash("power cut")

    with pytest.raises(Crash):
        evaluate(EvalConfig(**cfg), crash)
    with pytest.raises(ValueError, match="pass --resume"):
        evaluate(EvalConfig(**cfg))
    with pytest.raises(ValueError, match="--resume needs the --out"):
        EvalConfig(**{**cfg, "out": None}, resume=True)
    res = evaluate(EvalConfig(**cfg, resume=True))
    for agent in res.agents:
        ids = [t.task_id for t in RunStore.open(tmp_path / "out" / agent.run).load(dedupe=False)]
        assert sorted(ids) == sorted(res.task_ids)  # each task once: nothing lost, nothing run twice
        assert agent.n == 6 and agent.successes == 6
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tasks"] == 6


def test_tiny_hf_agent_writes_invalid_actions_and_never_succeeds(tmp_path):
    from trajdistill.agents import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    spec = f"hf:{model}"
    cfg = EvalConfig(env="math", agents=[spec], tasks=3, max_steps=2, sandbox="none", concurrency=3,
                     agent_options={"max_new_tokens": 8})
    results = evaluate(cfg)  # no --out: the runs live in a temp dir that is removed
    assert results.out is None
    (a,) = results.agents
    assert a.spec == spec and a.n == 3 and a.errors == 0
    assert a.success_rate == 0.0 and a.ci95[0] == 0.0 and a.ci95[1] > 0.0
    assert a.invalid_action_rate > 0.0
    assert a.tokens_per_episode > 0 and a.mean_steps == 2.0


def test_failing_endpoint_counts_as_errors_and_eval_finishes(tmp_path):
    out = tmp_path / "out"
    with FaultServer(lambda i, body: Error(500)) as url:
        bad = f"openai:fault-model@{url}"
        cfg = EvalConfig(env="math", agents=[bad, "expert:coder"], tasks=4, out=str(out), sandbox="none",
                         options_by_agent={bad: {"max_retries": 0}})
        results = evaluate(cfg)
    agents = by_spec(json.loads((out / "results.json").read_text()))
    failing = agents[bad]
    assert failing["errors"] == 4 and failing["n"] == 4 and failing["success_rate"] == 0.0
    assert failing["ci95"][0] == 0.0 and failing["ci95"][1] < 1.0
    assert sum(d["n"] for d in failing["by_difficulty"].values()) == 4
    assert agents["expert:coder"]["success_rate"] == 1.0  # the next agent still ran
    errors = RunStore.open(out / results.agents[0].run).errors()
    assert len(errors) == 4 and {e["teacher"] for e in errors} == {bad}


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="at least one --agent"):
        EvalConfig(env="math", agents=[])
    with pytest.raises(ValueError, match="--tasks"):
        EvalConfig(env="math", agents=["expert:coder"], tasks=0)
    with pytest.raises(ValueError, match="not evaluated"):
        EvalConfig(env="math", agents=["expert:coder"], options_by_agent={"expert:x": {}})


def test_slugs_are_directory_names():
    assert slug("expert:coder") == "expert-coder"
    assert "/" not in slug("hf:/tmp/a b/adapter") and slug("openai:m@http://h:1/v1") == "openai-m-http-h-1-v1"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trajdistill", "eval", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--env", "nope", "--agent", "expert:coder"], "unknown env 'nope'"),
    (["--env", "math"], "give at least one --agent"),
    (["--agent", "expert:coder"], "give --env"),
    (["--env", "math", "--agent", "expert:nobody", "--sandbox", "none"], "has no expert 'nobody'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    res = cli(*args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "o"
    res = cli("--env", "math", "--agent", "expert:coder", "--tasks", "3", "--sandbox", "none", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "expert:coder" in res.stdout and "100.0%" in res.stdout
    assert json.loads((out / "results.json").read_text())["agents"][0]["n"] == 3


def test_cli_agent_options_reach_the_policy(tmp_path):
    from trajdistill.agents import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "o"
    res = cli("--env", "math", "--agent", f"hf:{model}", "--tasks", "1", "--max-steps", "1", "--sandbox", "none",
              "--agent-option", "max_new_tokens=3", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    (traj,) = RunStore.open(out / json.loads((out / "results.json").read_text())["agents"][0]["run"]).load()
    assert traj.teacher.sampling["max_new_tokens"] == 3 and 0 < traj.usage.completion_tokens <= 3
