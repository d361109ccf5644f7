"""The report and the viewer in a real browser: Debian's headless Chromium runs the page's script,
then the test reads the DOM it built (not the pixels) and checks a screenshot was taken."""

from __future__ import annotations

import html
import json
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import require
from test_view import XSS, box_fixture, eval_fixture, train_fixture, xss_run
from trajdistill.report import build_report, render_viewer
from trajdistill.agents import CollectConfig, collect

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


@pytest.fixture(autouse=True)
def _needs_chromium():
    require(CHROMIUM.is_file(), "apt-get install chromium (see .ci/browser.sh)")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    res = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000",
                          *args, url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


class Dom(HTMLParser):
    """Class names of every element, its title, and the attributes of the trajectory detail pane."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.classes: list[set[str]] = []
        self.tags: list[str] = []
        self.detail: dict[str, str] = {}
        self.title = ""
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        cls = set(a.get("class", "").split())
        self.tags.append(tag)
        self.classes.append(cls)
        if "td-detail" in cls:
            self.detail = a
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def count(self, cls: str) -> int:
        return sum(cls in c for c in self.classes)


def dump_dom(tmp_path: Path, page: Path, fragment: str = "") -> tuple[Dom, str]:
    text = chromium(tmp_path, page.as_uri() + fragment, "--dump-dom").stdout
    return Dom(text), text


def screenshot(tmp_path: Path, page: Path, png: Path, size: str = "1400,1000") -> tuple[int, int]:
    chromium(tmp_path, page.as_uri(), f"--screenshot={png}", f"--window-size={size}")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank page compresses to a few KB
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    math = root / "runs" / "math"
    collect(CollectConfig(env="math", teachers=["expert:coder", "expert:reasoner"], tasks=4, out=str(math),
                          sandbox="none", concurrency=2))
    evil_run, evil = xss_run(math, root / "runs" / "evil")
    eval_fixture(root / "eval")
    train_fixture(root / "train")
    (root / "compose_report.json").write_text(json.dumps({"strategy": "dual", "runs": [], "teachers": [],
                                                          "total": {"tasks": 4, "kept": 4}}))
    box_fixture(root / "box")
    report = build_report(root / "out", {"env": "math", "wall_s": 42.0, "collect": {"trajectories": 8}},
                          runs={"math": math}, eval_results=root / "eval", train_dir=root / "train",
                          compose_report=root / "compose_report.json", box_dir=root / "box")
    view = root / "view.html"
    view.write_text(render_viewer({"math": math, "evil": evil_run}))
    return {"report": report, "view": view, "evil": evil}


def assert_rendered_trajectory(dom: Dom) -> None:
    assert dom.detail.get("data-trajectory"), "the viewer did not render a trajectory"
    assert dom.count("span-reason") > 0 and dom.count("span-act") > 0
    assert dom.count("td-obs") > 0  # observations, set apart
    assert dom.count("td-noscript") == 0  # the script replaced the placeholder


def test_report_renders_a_trajectory_with_coloured_spans(pages, tmp_path):
    dom, _ = dump_dom(tmp_path, pages["report"])
    assert_rendered_trajectory(dom)
    assert dom.count("td-list") == 1 and dom.tags.count("li") == 8
    assert dom.count("td-notrun") == 0  # every section had its input
    assert dom.tags.count("img") == 2  # success.png and the drawn loss curves
    size = screenshot(tmp_path, pages["report"], tmp_path / "report.png", "1400,2600")
    assert size == (1400, 2600)


def test_view_page_and_untrusted_text(pages, tmp_path):
    dom, _ = dump_dom(tmp_path, pages["view"])
    assert_rendered_trajectory(dom)
    assert dom.tags.count("li") == 9

    evil = pages["evil"]
    dom, text = dump_dom(tmp_path, pages["view"], f"#traj={evil.id}")
    assert dom.detail.get("data-trajectory") == evil.id  # the link picked it
    assert "pwned" not in dom.title  # neither the img handler nor the script ran
    assert "img" not in dom.tags and dom.tags.count("script") == 2
    assert "&lt;img src=x onerror=" in text and "&lt;/script&gt;&lt;script&gt;" in text  # shown as text
    assert XSS in html.unescape(text)
    assert screenshot(tmp_path, pages["view"], tmp_path / "view.png") == (1400, 1000)


def test_view_overlays_the_token_kl_of_an_onpolicy_rollout(tmp_path):
    """A run with token_kl.jsonl beside it (as `onpolicy --mode reverse-kl` writes): the viewer shades each
    scored token of the shown trajectory by its KL, with the value in the element."""
    from trajdistill.agents import build_tiny_llama
    from trajdistill.trajectories import RunStore
    from trajdistill.train import token_kl, write_token_kl

    run = tmp_path / "rollouts"
    collect(CollectConfig(env="math", teachers=["expert:coder"], tasks=2, out=str(run), sandbox="none"))
    trajs = RunStore.open(run).load()
    student, teacher = build_tiny_llama(tmp_path / "s"), build_tiny_llama(tmp_path / "t", seed=1)
    records = token_kl(trajs, str(student), str(teacher))
    write_token_kl(run, records)
    page = tmp_path / "view.html"
    page.write_text(render_viewer([run]))
    shown = records[0]
    dom, text = dump_dom(tmp_path, page, f"#traj={shown['id']}")
    assert dom.detail.get("data-trajectory") == shown["id"]
    ranges = [r for rs in shown["messages"].values() for r in rs]
    assert dom.count("td-kl") == len(shown["messages"])  # one overlay per scored assistant turn
    assert dom.count("td-kl-token") == len(ranges) > 0
    assert text.count('data-kl="') == len(ranges)
