"""The one-way layers (README "Layout"): the import-linter contracts of pyproject.toml hold."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    res = subprocess.run([sys.executable, str(ROOT / ".ci" / "lint_imports.py"), "--no-logo"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert "0 broken" in res.stdout


def test_the_library_is_forbidden_every_cli_module():
    """A new module in cli/ is a CLI module: the forbidden contract must name it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = next(c for c in config["contracts"] if c["type"] == "forbidden")["forbidden_modules"]
    assert set(forbidden) == {f"trajdistill.{p.stem}" for p in (ROOT / "cli").glob("*.py") if p.stem != "__init__"}
