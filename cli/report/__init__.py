"""The HTML report of a pipeline run, the gate's report and the trajectory viewer."""

from ._report import build_curate_report, build_gate_report, build_report, render_viewer, write_viewer

__all__ = ["build_curate_report", "build_gate_report", "build_report", "render_viewer", "write_viewer"]
