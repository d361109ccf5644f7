"""One RolloutConfig: collect, eval, the gate and self-distill share its fields, help and checks, and the
files written before it (run.yaml, self_distill.yaml, --config YAML) still load."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import pytest
import yaml

from trajdistill.agents import CollectConfig, EvalConfig, RolloutConfig, collect, resolved_config
from trajdistill.envs import ConfigError
from trajdistill.skills import ValidateConfig
from trajdistill.train import SelfDistillConfig
from trajdistill.train._self_distill import SelfDistiller
from trajdistill.trajectories import RunStore

from conftest import cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the `none` sandbox warns

# The keys of run.yaml and self_distill.yaml as written before RolloutConfig (package_version aside).
OLD_RUN_YAML = {"env", "teachers", "out", "tasks", "split", "concurrency", "resume", "shard", "seed", "max_steps",
                "temperature", "sandbox", "env_params", "teacher_options", "skills", "preload_skills"}
OLD_SELF_DISTILL_YAML = {"student", "env", "out", "samples", "rounds", "temperature", "tasks", "split",
                         "compose_runs", "confirm", "dev_tasks", "max_steps", "concurrency", "seed", "sandbox",
                         "env_params", "student_options", "train_args"}


def _configs(tmp_path) -> dict[type, dict]:
    """Each stage's config with its own required settings."""
    return {CollectConfig: {"teachers": ["expert:coder"], "out": str(tmp_path / "c")},
            EvalConfig: {"agents": ["expert:coder"]},
            ValidateConfig: {"box": str(tmp_path / "box"), "agent": "expert:coder"},
            SelfDistillConfig: {"student": "expert:coder", "out": str(tmp_path / "sd")}}


def test_every_stage_shares_the_rollout_fields_and_their_help(tmp_path):
    shared = {f.name: f.metadata["help"] for f in fields(RolloutConfig)}
    for cls in _configs(tmp_path):
        assert issubclass(cls, RolloutConfig)
        own = {f.name: f.metadata.get("help") for f in fields(cls)}
        assert {k: own[k] for k in shared} == shared, cls.__name__
        assert all(own.values()), f"{cls.__name__}: a field without help"


@pytest.mark.parametrize("setting, value, message", [
    ("max_steps", 0, "--max-steps must be at least 1, got 0"),
    ("tasks", 0, "--tasks must be at least 1, got 0"),
    ("concurrency", 0, "--concurrency must be at least 1, got 0"),
    ("temperature", -1.0, "--temperature must be >= 0, got -1.0"),
    ("skills_examples", -1, "--skills-examples must be 0 \\(none\\) or more, got -1"),
])
def test_a_bad_shared_setting_is_refused_alike_by_every_stage(tmp_path, setting, value, message):
    for cls, own in _configs(tmp_path).items():
        with pytest.raises(ConfigError, match=message):
            cls(env="math", **own, **{setting: value})


def test_problems_of_shared_and_own_settings_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        CollectConfig(env="math", teachers=[], out=str(tmp_path / "c"), tasks=0)
    assert "--tasks must be at least 1" in str(e.value) and "give at least one --teacher" in str(e.value)


def test_stage_defaults_stay_as_they_were(tmp_path):
    made = {cls: cls(env="math", **own) for cls, own in _configs(tmp_path).items()}
    assert (made[CollectConfig].split, made[EvalConfig].split, made[ValidateConfig].split) == ("train", "test", "dev")
    assert (made[ValidateConfig].tasks, made[ValidateConfig].concurrency) == (50, 4)
    assert (made[SelfDistillConfig].temperature, made[SelfDistillConfig].max_steps) == (0.7, 10)


def test_eval_hands_its_rollout_settings_to_each_agents_collection(tmp_path):
    from trajdistill.agents._eval import collect_config

    ec = EvalConfig(env="math", agents=["expert:coder"], tasks=3, max_steps=5, seed=7, sandbox="none",
                    env_params={"kinds": "arith"}, skills=["/box"], preload_skills=True)
    cc = collect_config(ec, "expert:coder", tmp_path / "run")
    assert cc.rollout() == ec.rollout() and cc.teachers == ["expert:coder"]
    cc.env_params["kinds"] = "other"
    assert ec.env_params == {"kinds": "arith"}  # a copy, not the eval's own dict


def test_a_run_yaml_written_before_rollout_config_resumes(tmp_path):
    cfg = CollectConfig(env="math", teachers=["expert:coder"], out=str(tmp_path / "run"), tasks=3, sandbox="none",
                        concurrency=1)
    assert set(resolved_config(cfg)) - {"package_version"} == OLD_RUN_YAML
    collect(cfg)
    run_yaml = tmp_path / "run" / "run.yaml"
    old = yaml.safe_load(run_yaml.read_text())
    run_yaml.write_text(yaml.safe_dump({k: old[k] for k in sorted(old)}, sort_keys=False))  # another key order
    store, progress = collect(CollectConfig(**{**cfg.__dict__, "tasks": 4, "resume": True}))
    assert progress.done == 1 and len(RunStore.open(tmp_path / "run").load()) == 4


def test_a_self_distill_yaml_written_before_rollout_config_resumes(tmp_path):
    cfg = SelfDistillConfig(student="hf:smollm2-135m", env="math", out=str(tmp_path / "sd"), tasks=3)
    distiller = SelfDistiller(cfg)
    settings = distiller._settings()
    assert set(settings) == OLD_SELF_DISTILL_YAML
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "self_distill.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(settings))))
    distiller._check_resumable()  # the stored settings are the same ones
    with pytest.raises(ConfigError, match="'tasks' differs"):
        SelfDistiller(SelfDistillConfig(**{**cfg.__dict__, "tasks": 4}))._check_resumable()


def test_self_distill_refuses_skill_boxes_it_would_not_mount(tmp_path):
    with pytest.raises(ConfigError, match="self-distill mounts no skill boxes"):
        SelfDistillConfig(student="hf:x", env="math", out=str(tmp_path / "sd"), skills=["/box"])


def test_an_eval_config_file_of_before_still_loads(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  env: math\n  agent: [expert:coder]\n  split: dev\n  tasks: 2\n  max_steps: 6\n"
                      "  sandbox: none\n  concurrency: 1\n  temperature: 0.0\n  seed: 3\n")
    res = cli("eval", "--config", config, "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["split"] == "dev" and doc["agents"][0]["n"] == 2
    run = yaml.safe_load((tmp_path / "o" / doc["agents"][0]["run"] / "run.yaml").read_text())
    assert (run["max_steps"], run["seed"], run["concurrency"]) == (6, 3, 1)


def test_each_command_describes_a_shared_setting_in_the_same_words():
    shared = RolloutConfig.__dataclass_fields__["max_steps"].metadata["help"]
    for command in (["collect"], ["eval"], ["self-distill"], ["skills", "validate"]):
        res = cli(*command, "--help")
        assert res.returncode == 0 and shared in " ".join(res.stdout.split()), command


def test_each_commands_rollout_defaults_are_its_configs():
    import typer

    from trajdistill._app import app
    from trajdistill._config import ROLLOUT_PARAMS

    root = typer.main.get_command(app)
    commands = {("collect",): CollectConfig, ("eval",): EvalConfig, ("self-distill",): SelfDistillConfig,
                ("skills", "validate"): ValidateConfig}
    for path, cls in commands.items():
        command = root
        for name in path:
            command = command.commands[name]
        given = {p.name: p.default for p in command.params}
        for name, (param, _) in ROLLOUT_PARAMS.items():
            default = cls.__dataclass_fields__[name].default
            if param in given and name != "env":  # env: required, or given as a check of its own (eval)
                expected = [] if default is MISSING else default
                assert given[param] == expected, (path, name)
