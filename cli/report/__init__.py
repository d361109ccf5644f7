"""The HTML report of a pipeline run and the trajectory viewer."""

from ._report import build_report, render_viewer, write_viewer

__all__ = ["build_report", "render_viewer", "write_viewer"]
