"""The top-level folders install under the `trajdistill` namespace, in a wheel as in the editable install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_the_top_level_folders_into_the_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300)
    wheel = next(tmp_path.glob("trajdistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("trajdistill/__init__.py", "trajdistill/envs/_env.py", "trajdistill/envs/sandbox/_nsjail.py",
                 "trajdistill/agents/_loop.py", "trajdistill/trajectories/_schema.py", "trajdistill/skills/_box.py",
                 "trajdistill/envs/data/mcp_example/tasks.jsonl", "trajdistill/envs/math/_kinds.py",
                 "trajdistill/train/_sft.py", "trajdistill/report/templates/page.html.j2",
                 "trajdistill/report/static/viewer.js"):
        assert path in names, path
    assert not any(n.split("/")[0] in {"envs", "agents", "trajectories", "skills", "cli", "tests"} for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "trajdistill = trajdistill:main" in entry_points
