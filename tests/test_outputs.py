"""An output never destroys an input: `--out` into an input run, over an existing file, or where nothing can be
written is refused with one line (issue 17, section 1)."""

from __future__ import annotations

import shutil

import pytest
from conftest import cli, one_line_error


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "run"
    res = cli("collect", "--env", "math", "--teacher", "expert:coder", "--tasks", "3", "--sandbox", "none",
              "--out", run)
    assert res.returncode == 0, res.stderr
    return run


@pytest.fixture
def run(collected, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(collected, dst)
    return dst


def snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_export_into_its_own_run_is_refused_and_the_run_survives(run):
    before = snapshot(run)
    shard = sorted(run.glob("trajectories-*.jsonl"))[0]
    for out in (shard, run / "run.yaml", run / "new.jsonl", run / "sub" / "x.jsonl"):
        one_line_error(cli("export", run, "--format", "openai", "--out", out), "inside the input")
    assert snapshot(run) == before


def test_export_over_an_existing_file_needs_force(run, tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text("keep me\n")
    one_line_error(cli("export", run, "--format", "openai", "--out", out), "exists", "--force")
    assert out.read_text() == "keep me\n"
    res = cli("export", run, "--format", "openai", "--out", out, "--force")
    assert res.returncode == 0, res.stderr
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("where, fragment", [("dir", "is a directory"), ("sys", "cannot write"),
                                             ("under-file", "not a directory")])
def test_export_to_a_path_that_cannot_be_a_file_is_one_line(run, tmp_path, where, fragment):
    (tmp_path / "afile").write_text("")
    out = {"dir": tmp_path, "sys": "/sys/x.jsonl", "under-file": tmp_path / "afile" / "x.jsonl"}[where]
    one_line_error(cli("export", run, "--format", "openai", "--out", out), fragment)


def test_compose_into_an_input_is_refused(run):
    before = snapshot(run)
    for out in (run, run / "composed"):
        one_line_error(cli("compose", run, "--strategy", "best", "--out", out), "inside the input")
    assert snapshot(run) == before


def test_train_into_its_data_run_is_refused(run):
    before = snapshot(run)
    one_line_error(cli("train", "--data", run, "--out", run / "student"), "inside the input")
    assert snapshot(run) == before


def test_compose_to_sys_is_one_line(run):
    one_line_error(cli("compose", run, "--strategy", "best", "--out", "/sys/composed"), "cannot write")


def test_view_into_a_run_file_is_refused_but_its_default_page_is_rewritten(run, tmp_path):
    before = snapshot(run)
    one_line_error(cli("view", run, "--out", run / "run.yaml"), "inside the input")
    assert snapshot(run) == before
    for _ in range(2):  # the default page is the viewer's own file: rewriting it needs no --force
        res = cli("view", run)
        assert res.returncode == 0, res.stderr
    page = tmp_path / "page.html"
    page.write_text("keep")
    one_line_error(cli("view", run, "--out", page), "--force")
    assert cli("view", run, "--out", page, "--force").returncode == 0


def test_self_distill_into_a_compose_run_is_refused(run):
    one_line_error(cli("self-distill", "--student", "hf:/nonexistent-model", "--env", "math", "--out", run / "sd",
                       "--compose-run", run), "inside the input")


def test_check_output_refuses_a_directory_that_holds_an_input(tmp_path):
    from trajdistill.trajectories import OutputError, check_output

    src = tmp_path / "runs" / "a"
    src.mkdir(parents=True)
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path / "runs", [src], kind="dir")
    assert check_output(tmp_path / "elsewhere", [src], kind="dir") == tmp_path / "elsewhere"
    assert not (tmp_path / "elsewhere").exists()  # checking creates nothing
