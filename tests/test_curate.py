"""`curate` on real expert runs with injected exact copies, near-copies and over-long thoughts: each step removes
exactly those and says why; YAML and flags agree; blend shares; the report, the plot and bad input."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import pytest
import yaml
from conftest import cli, one_line_error

from trajdistill.agents._collector import CollectConfig, collect
from trajdistill.trajectories import RunStore, Trajectory, curate_steps, export_run, import_messages
from trajdistill.trajectories._curate import PLOT_FILE, REPORT_FILE, CurateConfig, curate
from trajdistill.trajectories._curate_steps import Drop, Item, Step, jaccard, shingles

EDIT = ("arithmetic exactly", "arithmetic precisely")
PADDING = "Let me go over the plan once more before I run it, to be sure it is right. " * 12


def _collect(out, teacher, tasks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` sandbox warns that it is unconfined
        collect(CollectConfig(env="math", teachers=[teacher], out=str(out), tasks=tasks, split="train",
                              sandbox="none", concurrency=4))
    return out


def _write(path, trajs, config=None):
    with RunStore.create(path, config or {"env": "math"}) as store:
        for t in trajs:
            store.append(t)
    return path


def _as_sample(t: Trajectory, n: int, **update) -> Trajectory:
    teacher = t.teacher.model_copy(update={"sampling": {**t.teacher.sampling, "sample": n}})
    return t.model_copy(update={"id": f"{t.id[:24]}-copy{n}", "teacher": teacher, **update})


def _edited(t: Trajectory, old: str, new: str, pad: str = "") -> Trajectory:
    """`t` with the first assistant turn's text changed: `old` replaced by `new`, or `pad` after its thought."""
    i = next(i for i, m in enumerate(t.messages) if m.role == "assistant")
    text = t.messages[i].content
    assert old in text or pad
    text = text.replace(old, new, 1) if old else text.replace("\nAction:", f" {pad}\nAction:", 1)
    messages = [*t.messages[:i], t.messages[i].model_copy(update={"content": text}), *t.messages[i + 1:]]
    return t.model_copy(update={"messages": messages})


@dataclass
class Dirty:
    path: object
    clean: list[Trajectory]
    copies: set[str]  # exact copies of another trajectory, appended last
    edits: set[str]  # near-copies: one word changed
    long: set[str]  # over-long thoughts (edited in place)


@pytest.fixture(scope="module")
def coder(tmp_path_factory):
    return _collect(tmp_path_factory.mktemp("runs") / "coder", "expert:coder", 45)  # 3 tasks per group


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    return _collect(tmp_path_factory.mktemp("runs") / "reasoner", "expert:reasoner", 15)


@pytest.fixture(scope="module")
def dirty(coder, tmp_path_factory):
    clean = sorted(RunStore.open(coder).load(), key=lambda t: t.task_id)  # collect writes in finishing order
    long = {clean[i].id for i in (3, 10, 26)}  # tasks of three different groups
    trajs = [_edited(t, "", "", PADDING) if t.id in long else t for t in clean]
    copies = [_as_sample(clean[i], 1) for i in (1, 5)]
    edits = [_as_sample(_edited(clean[i], *EDIT), 2) for i in (2, 7)]
    path = _write(tmp_path_factory.mktemp("runs") / "dirty", trajs + copies + edits)
    return Dirty(path, clean, {t.id for t in copies}, {t.id for t in edits}, long)


def _curate(runs, out, steps, **kw):
    report = curate(CurateConfig(runs=[str(r) for r in runs], out=str(out), steps=steps, **kw))
    return report, RunStore.open(out).load()


def _removed(dirty: Dirty, kept: list[Trajectory]) -> set[str]:
    return {t.id for t in RunStore.open(dirty.path).load()} - {t.id for t in kept}


def test_verified_keeps_exactly_the_verified_successes(reasoner, tmp_path):
    src = RunStore.open(reasoner).load()
    failed = [t for t in src if not t.outcome.success]
    assert failed, "the reasoner expert should slip on some level-2/3 tasks"
    report, kept = _curate([reasoner], tmp_path / "out", ["verified"])
    assert {t.id for t in kept} == {t.id for t in src if t.outcome.success}
    step = report.steps[0].to_dict()
    assert (step["in"], step["out"], step["removed"]) == (len(src), len(src) - len(failed), len(failed))
    assert step["reasons"] == {"not verified": len(failed)}
    first = step["examples"][0]
    assert first["id"] == failed[0].id and first["detail"] == f"answered {failed[0].outcome.final_answer!r}"


def test_dedupe_drops_exactly_the_injected_copies_and_names_the_original(dirty, tmp_path):
    report, kept = _curate([dirty.path], tmp_path / "out", ["dedupe"])
    assert _removed(dirty, kept) == dirty.copies
    examples = report.steps[0].examples
    assert {e["reason"] for e in examples} == {"exact duplicate"}
    originals = {t.id for t in dirty.clean}
    assert all(e["detail"].split()[-1] in originals for e in examples)


def test_near_dup_drops_the_small_edits_and_keeps_every_distinct_task(dirty, tmp_path):
    by_id = {t.id: t for t in RunStore.open(dirty.path).load()}
    for tid in dirty.edits:  # the edit is small but not nothing: the similarity is between the thresholds
        edit, orig = Item(by_id[tid], ""), Item(next(t for t in dirty.clean if t.task_id == by_id[tid].task_id), "")
        assert 0.9 <= jaccard(shingles(edit.text, 3), shingles(orig.text, 3)) < 0.99
    report, kept = _curate([dirty.path], tmp_path / "out", ["near-dup"])
    assert _removed(dirty, kept) == dirty.copies | dirty.edits  # an exact copy is a near-duplicate too
    assert report.steps[0].reasons == {"near duplicate": 4}
    assert all(e["detail"].startswith("Jaccard ") for e in report.steps[0].examples)
    _, strict = _curate([dirty.path], tmp_path / "strict", [{"near-dup": {"threshold": 0.99}}])
    assert _removed(dirty, strict) == dirty.copies


def test_near_dup_scope_task_compares_within_a_task_only(dirty, tmp_path):
    clean = dirty.clean
    other = clean[0].model_copy(update={"id": "moved", "task_id": clean[4].task_id + "-other"})
    path = _write(tmp_path / "run", [*clean, other])
    _, everywhere = _curate([path], tmp_path / "all", ["near-dup"])
    _, per_task = _curate([path], tmp_path / "task", ["near-dup:scope=task"])
    assert "moved" not in {t.id for t in everywhere} and "moved" in {t.id for t in per_task}


def test_length_balance_drops_exactly_the_over_long_thoughts(dirty, tmp_path):
    report, kept = _curate([dirty.path], tmp_path / "out", ["length-balance"])
    assert _removed(dirty, kept) == dirty.long
    assert report.steps[0].reasons == {"over-long reasoning": 3}
    for e in report.steps[0].examples:
        t = next(t for t in dirty.clean if t.id == e["id"])
        assert f"of {t.category}/{t.difficulty}" in e["detail"]


def test_balance_caps_every_group_with_a_seeded_sample(coder, tmp_path):
    _, kept = _curate([coder], tmp_path / "a", ["balance:cap=2"])
    groups: dict = {}
    for t in kept:
        groups.setdefault((t.category, t.difficulty), []).append(t.id)
    assert len(groups) == 15 and all(len(ids) == 2 for ids in groups.values())
    _, again = _curate([coder], tmp_path / "b", ["balance:cap=2"])
    _, other = _curate([coder], tmp_path / "c", ["balance:cap=2"], seed=7)
    assert [t.id for t in again] == [t.id for t in kept] and {t.id for t in other} != {t.id for t in kept}


def test_blend_takes_each_run_by_its_weight(coder, reasoner, tmp_path):
    export_run(reasoner, "openai", tmp_path / "real.jsonl")
    import_messages(tmp_path / "real.jsonl", "math", tmp_path / "real", teacher="user-traces")
    runs = [f"synthetic={coder}", f"real={tmp_path / 'real'}"]  # 45 and 15 trajectories
    report, kept = _curate(runs, tmp_path / "out", [], mix={"synthetic": 0.7, "real": 0.3})
    spec = {"synthetic": "expert:coder", "real": "user-traces"}
    counts = {k: sum(t.teacher.spec == v for t in kept) for k, v in spec.items()}
    assert counts == report.kept_by_run == {"synthetic": 35, "real": 15}  # real is scarce: 15 / 0.3 = 50 in all
    _, sized = _curate(runs, tmp_path / "sized", ["blend:size=20"], mix={"synthetic": 0.7, "real": 0.3})
    assert {k: sum(t.teacher.spec == v for t in sized) for k, v in spec.items()} == {"synthetic": 14, "real": 6}
    assert report.steps[0].reasons == {"over its share": 10} and report.warnings == []
    # imported traces have no verifier: after `verified` the real run is gone, and the blend says so
    empty, none = _curate(runs, tmp_path / "empty", ["verified"], mix={"synthetic": 0.7, "real": 0.3})
    assert none == [] and empty.warnings == [
        "run real has a --mix weight but no trajectories left for blend (earlier steps removed them)",
        "no trajectory is left: the run written is empty"]


def test_the_output_is_a_run_with_the_steps_in_its_provenance(dirty, tmp_path):
    out = tmp_path / "out"
    steps = ["dedupe", "near-dup", "length-balance", "balance:cap=2"]
    report, kept = _curate([dirty.path], out, steps)
    config = yaml.safe_load((out / "run.yaml").read_text())
    assert config["command"] == "curate" and config["runs"] == {"dirty": str(dirty.path)}
    assert [s["name"] for s in config["steps"]] == ["dedupe", "near-dup", "length-balance", "balance"]
    assert config["steps"][1] == {"name": "near-dup", "method": "minhash", "threshold": 0.9, "ngram": 3, "num_perm": 128,
                                  "scope": "all"}  # the settings of its method only
    doc = json.loads((out / REPORT_FILE).read_text())
    assert [(s["in"], s["out"]) for s in doc["steps"]] == [(s.inputs, s.kept) for s in report.steps]
    assert doc["steps"][-1]["out"] == doc["total"]["out"] == len(kept)
    lengths = doc["lengths"]
    assert set(lengths["before"]) == {"arithmetic", "combinatorics", "modular", "sequences", "word"}
    assert sum(c["n"] for c in lengths["before"].values()) == doc["total"]["in"] == 49
    assert sum(c["n"] for c in lengths["after"].values()) == len(kept)
    assert max(c["max"] for c in lengths["before"].values()) > 2 * max(c["max"] for c in lengths["after"].values())
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = cli("inspect", out)  # inspect and export read it like any run
    assert res.returncode == 0 and "expert:coder" in res.stdout
    assert export_run(out, "sharegpt", tmp_path / "x.jsonl") == len(kept)


def test_yaml_and_flags_give_the_same_run(dirty, tmp_path):
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump({"steps": ["dedupe", {"near-dup": {"threshold": 0.9}},
                                                {"length-balance": {"k": 3}}, {"balance": {"cap": 2}}],
                                      "seed": 3}))
    a = cli("curate", dirty.path, "--out", tmp_path / "a", "--config", config)
    b = cli("curate", dirty.path, "--out", tmp_path / "b", "--seed", "3", "--step", "dedupe",
            "--step", "near-dup:threshold=0.9", "--step", "length-balance:k=3", "--step", "balance:cap=2")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "over-long reasoning: 3" in a.stdout
    for name in ("trajectories-0of1-000.jsonl", REPORT_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    steps = [yaml.safe_load((tmp_path / d / "run.yaml").read_text())["steps"] for d in "ab"]
    assert steps[0] == steps[1]
    page = (tmp_path / "a" / "curate.html").read_text()  # the HTML section: counts, removed examples, lengths
    doc = json.loads((tmp_path / "a" / REPORT_FILE).read_text())
    for s in doc["steps"]:
        assert f"<td>{s['name']}</td>" in page
        assert all(e["task_id"] in page and e["id"][:12] in page for e in s["examples"])
    assert sum(len(s["examples"]) for s in doc["steps"]) > 0 and "over-long reasoning" in page
    assert all(f"<td>{cat}</td>" in page for cat in doc["lengths"]["before"])
    assert page.count('src="data:image/png;base64,') == 1  # the length plot, inline
    flags_win = cli("curate", dirty.path, "--out", tmp_path / "c", "--config", config, "--step", "dedupe")
    assert flags_win.returncode == 0
    assert [s["name"] for s in json.loads((tmp_path / "c" / REPORT_FILE).read_text())["steps"]] == ["dedupe"]


def test_two_runs_of_one_teacher_over_the_same_tasks_are_both_kept(coder, tmp_path):
    again = _write(tmp_path / "again", [t.model_copy(update={"id": f"{t.id}-again"})
                                        for t in RunStore.open(coder).load()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reader that met one (task, teacher) twice would warn and drop one
        _, kept = _curate([coder, again], tmp_path / "out", ["verified"])
    assert len(kept) == 90 and len({t.id for t in kept}) == 90


@curate_steps.register("test-drop-teacher")
@dataclass
class DropCoder(Step):
    """A user's own step, registered by name."""

    teacher: str = "expert:coder"

    def __call__(self, items, seed):
        return [Drop("teacher", it.traj.teacher.spec) if it.traj.teacher.spec == self.teacher else None
                for it in items]


def test_a_registered_step_of_ones_own_runs_in_the_pipeline(coder, reasoner, tmp_path):
    report, kept = _curate([coder, reasoner], tmp_path / "out", ["test-drop-teacher"])
    assert {t.teacher.spec for t in kept} == {"expert:reasoner"} and len(kept) == 15
    assert report.steps[0].reasons == {"teacher": 45}


@pytest.mark.parametrize("args, fragments", [
    (["--step", "bogus"], ["unknown curate step 'bogus'", "known: balance, blend, dedupe, length-balance, near-dup"]),
    (["--step", "near-dup:threshhold=0.8"], ["step 'near-dup' has no setting(s) threshhold", "threshold"]),
    (["--step", "balance"], ["step 'balance' needs setting(s) cap"]),
    (["--step", "near-dup:threshold=2"], ["near-dup threshold must be in (0, 1]"]),
    (["--step", "near-dup:method=lsh"], ["unknown near-dup method 'lsh'", "known: embedding, minhash"]),
    (["--step", "near-dup:method=embedding,threshold=0"], ["near-dup threshold must be in (0, 1], got 0"]),
    (["--step", "near-dup:method=embedding,batch_size=0"], ["near-dup batch_size must be a whole number >= 1"]),
    (["--mix", "nobody=1"], ["--mix nobody: no run is labelled 'nobody'", "labels: coder"]),
    (["--mix", "coder=lots"], ["--mix must be LABEL=WEIGHT with a number"]),
    ([], ["give at least one step", "verified"]),
])
def test_a_bad_step_is_one_line_and_nothing_is_written(coder, tmp_path, args, fragments):
    one_line_error(cli("curate", coder, "--out", tmp_path / "out", *args), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, fragments", [
    ("steps: [dedupe\n", ["is not valid YAML"]),
    ("steps: [dedupe]\ncap: 3\n", ["unknown curate setting(s) cap", "known: steps, mix, seed"]),
    ("steps: dedupe\n", ["steps must be a list"]),
    ("steps: [{balance: 5}]\n", ["step 'balance': its settings must be a mapping"]),
])
def test_a_bad_config_file_is_one_line_and_nothing_is_written(coder, tmp_path, text, fragments):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    one_line_error(cli("curate", coder, "--out", tmp_path / "out", "--config", config), *fragments)
    assert not (tmp_path / "out").exists()


def test_a_missing_run_or_a_used_out_is_one_line(coder, tmp_path):
    one_line_error(cli("curate", tmp_path / "nope", "--out", tmp_path / "out", "--step", "dedupe"),
                   "run directory", "nope does not exist")
    assert not (tmp_path / "out").exists()
    one_line_error(cli("curate", coder, "--out", coder / "sub", "--step", "dedupe"), "is inside the input")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    one_line_error(cli("curate", coder, "--out", tmp_path / "used", "--step", "dedupe"), "is not empty")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]
