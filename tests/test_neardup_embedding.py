"""The curate `near-dup` step's `embedding` method with the real embedded SmolLM2-135M (loaded once for the
module) and a real FAISS index: on a real expert run with injected near-copies (whitespace, number formatting,
reworded thoughts), it removes exactly the copies, keeps every distinct task and names the kept original."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml
from conftest import collect_math, require

from trajdistill.agents import EmbeddingSimilarity, cosine_neighbours, embed_texts
from trajdistill.trajectories import RunStore, Trajectory
from trajdistill.trajectories._curate import REPORT_FILE, CurateConfig, curate
from trajdistill.trajectories._curate_steps import Item, make_step

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _faiss() -> None:
    require(importlib.util.find_spec("faiss") is not None, "FAISS is not installed: pip install faiss-cpu")


def _whitespace(text: str) -> str:
    return text.replace(". ", ".  ").replace(": ", ":  ") + "\n"


def _numbers(text: str) -> str:
    return re.sub(r"printed (\d+)", r"printed \1.0", text)


def _reworded(text: str) -> str:
    return text.replace("The program printed", "The output was").replace("so that is", "which is")


EDITS = {"whitespace": _whitespace, "numbers": _numbers, "reworded": _reworded}


def _copy(t: Trajectory, kind: str) -> Trajectory:
    messages = [m.model_copy(update={"content": EDITS[kind](m.content)}) if m.role == "assistant" and m.content
                else m for m in t.messages]
    teacher = t.teacher.model_copy(update={"sampling": {**t.teacher.sampling, "sample": kind}})  # a further sample
    return t.model_copy(update={"id": f"{t.id[:24]}-{kind}", "teacher": teacher, "messages": messages})


@pytest.fixture(scope="module")
def model():
    """The embedded model, loaded once for the module (embed_texts keeps it for the process)."""
    _faiss()
    embed_texts(["warm up"])


@pytest.fixture(scope="module")
def dirty(tmp_path_factory, model):
    """A level-1 math task of each category by the coder and by the reasoner (clearly distinct: another kind of
    task or another teacher), then one near-copy of each kind of three of the coder's. (Tasks of one category at
    other levels are not clearly distinct to this embedding: bench/RESULTS.md, issue 14.)"""
    root = tmp_path_factory.mktemp("runs")
    clean = [t for teacher in ("expert:coder", "expert:reasoner")
             for t in sorted(RunStore.open(collect_math(root / teacher[7:], [teacher], 15)).load(),
                             key=lambda t: t.task_id) if t.difficulty == 1]
    assert len(clean) == 10 and len({(t.teacher.spec, t.category) for t in clean}) == 10
    copies = [_copy(clean[i], kind) for i in (0, 2, 4) for kind in EDITS]
    path = root / "dirty"
    with RunStore.create(path, {"env": "math"}) as store:
        for t in clean + copies:
            store.append(t)
    return path, clean, copies


def test_embedding_removes_the_injected_copies_and_keeps_every_distinct_one(dirty, tmp_path):
    path, clean, copies = dirty
    report = curate(CurateConfig(runs=[str(path)], out=str(tmp_path / "out"), steps=["near-dup:method=embedding"]))
    kept = {t.id for t in RunStore.open(tmp_path / "out").load()}
    assert kept == {t.id for t in clean}
    step = report.steps[0]
    assert step.reasons == {"near duplicate": len(copies)}
    originals = {t.task_id: t.id for t in clean if t.teacher.spec == "expert:coder"}
    for e in step.examples:
        sim, original = re.fullmatch(r"cosine (\S+) with (\S+)", e["detail"]).groups()
        assert original == originals[e["task_id"]] and float(sim) >= step.settings["threshold"]


def test_the_method_and_its_settings_are_in_the_report_and_the_provenance(dirty, tmp_path):
    path, _, _ = dirty
    out = tmp_path / "out"
    curate(CurateConfig(runs=[str(path)], out=str(out), steps=[{"near-dup": {"method": "embedding",
                                                                              "threshold": 0.999}}]))
    expected = {"method": "embedding", "threshold": 0.999, "scope": "all", "model": "smollm2-135m",
                "batch_size": 16, "max_tokens": 512}
    assert json.loads((out / REPORT_FILE).read_text())["steps"][0]["settings"] == expected
    assert yaml.safe_load((out / "run.yaml").read_text())["steps"][0] == {"name": "near-dup", **expected}


def test_embeddings_are_unit_vectors_and_padding_does_not_change_them(model):
    texts = ["Thought: add the numbers.", "Thought: " + "a much longer thought about the numbers " * 8]
    together = embed_texts(texts, batch_size=2)  # the short text is padded to the long one
    alone = embed_texts(texts[:1], batch_size=1)
    assert abs(float((together ** 2).sum(1).max()) - 1) < 1e-4
    assert float(together[0] @ alone[0]) > 0.999


def test_the_faiss_search_gives_each_row_its_earlier_neighbours_above_the_threshold(model):
    _faiss()
    import numpy as np

    v = np.array([[1, 0], [0.8, 0.6], [1, 0], [0, 1]], dtype=np.float32)
    assert cosine_neighbours(v, 0.7) == [{}, {0: pytest.approx(0.8)}, {0: 1.0, 1: pytest.approx(0.8)},
                                         {}]
    assert cosine_neighbours(v, 0.7, skip={0}) == [{}, {}, {1: pytest.approx(0.8)}, {}]


def test_a_blank_text_is_nobodys_duplicate(model):
    step = make_step("near-dup", {"method": "embedding"})
    items = [Item(Trajectory.model_construct(messages=[]), "") for _ in range(2)]
    assert step(items, 0) == [None, None]


def test_the_method_class_is_registered_with_its_defaults():
    _faiss()
    assert make_step("near-dup", {"method": "embedding"})._similarity == EmbeddingSimilarity()
