"""Check the import contracts of pyproject.toml's [tool.importlinter] (the one-way layers).

import-linter (grimp) finds a package's modules by walking the root package's folder, so it does
not see the subpackages that `package-dir` maps from other top-level folders (envs/, agents/, ...).
This script lays out the package as a wheel would, with symlinks in a temporary folder, and runs
`lint-imports` against that. Exits with lint-imports' status.

    python .ci/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage(dest: Path) -> None:
    """dest/<package path>/ mirrors each package-dir entry (files and folders as symlinks)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / folder).iterdir():
            link = target / entry.name
            if entry.name != "__pycache__" and not link.exists():
                link.symlink_to(entry)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lint-imports-") as tmp:
        stage(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        # run in the repository, where lint-imports reads pyproject.toml; the staged package comes first on the path
        cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
               "--no-cache", *sys.argv[1:]]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
