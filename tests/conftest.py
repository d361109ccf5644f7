"""Shared test helpers.

Under TRAJDISTILL_REQUIRE_ALL=1 (CI), a test whose real component is missing fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest
from hypothesis import settings

from trajdistill.agents import CollectConfig, collect

# CI runs property tests on a fixed example sequence, so a landing never hinges on a lucky draw; local runs explore
settings.register_profile("ci", derandomize=True)
if os.environ.get("TRAJDISTILL_REQUIRE_ALL") == "1":
    settings.load_profile("ci")

REQUIRE_ALL = os.environ.get("TRAJDISTILL_REQUIRE_ALL") == "1"


def require(ok: bool, reason: str) -> None:
    """Skip (or, under TRAJDISTILL_REQUIRE_ALL=1, fail) when a real component is missing."""
    if ok:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required component missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def user_config_dir():
    """A fresh user config (signing key, trusted keys) for the whole session; subprocesses inherit it."""
    path = tempfile.mkdtemp(prefix="trajdistill-test-config-")
    old = os.environ.get("TRAJDISTILL_CONFIG_DIR")
    os.environ["TRAJDISTILL_CONFIG_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("TRAJDISTILL_CONFIG_DIR", None)
    else:
        os.environ["TRAJDISTILL_CONFIG_DIR"] = old
    shutil.rmtree(path, ignore_errors=True)


def cli(*args):
    """`python -m trajdistill ARGS` in a clean environment (wide console, warnings off)."""
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/root",
                                            "PYTHONWARNINGS": "ignore"})


def one_line_error(res, *fragments: str) -> str:
    """The command failed with exactly one `error:` line on stderr that holds every fragment."""
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def collect_math(out, teachers, tasks: int, **settings):
    """A real run of math tasks by the given (expert) teachers, in the unconfined `none` sandbox."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the `none` sandbox warns that it is unconfined
        collect(CollectConfig(env="math", teachers=teachers, out=str(out), tasks=tasks, sandbox="none", **settings))
    return out
