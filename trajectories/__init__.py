"""Trajectories: the schema, the run directory store, the exports, composition and span segmentation."""

from ._compose import ComposeConfig, ComposeReport, ComposeStrategy, GroupStats, compose, compose_strategies
from ._compose import TaskResult as ComposeTaskResult
from ._curate import CurateConfig, CurateReport, curate
from ._curate_steps import Drop as CurateDrop
from ._curate_steps import Item as CurateItem
from ._curate_steps import Step as CurateStep
from ._curate_steps import NearDupMethod, curate_steps, near_dup_methods
from ._export import ExportWriter, export_formats, export_run
from ._features import trajectory_features
from ._import import import_messages
from ._schema import (
    SCHEMA_VERSION,
    EnvRef,
    FunctionCall,
    Message,
    Provenance,
    SchemaVersionError,
    Span,
    Teacher,
    ToolCallMsg,
    Trajectory,
    Usage,
)
from ._spans import (SegmentRules, Segmenter, assistant_text, env_segmenter, failed_calls, mask_failed_calls, segment,
                     segment_as_env, segment_run, segmenters, with_spans)
from ._report import Report
from ._store import (RUN_FILE, OutputError, RunError, RunStats, RunStore, TeacherStats, check_output, read_result,
                     setting_difference)
from ._taxonomy import (FAILURE_KINDS, PARSE_ERROR_TOOL, actions, cut_off_detail, failure_counts, failure_kind,
                        looped_detail, was_cut_off)

__all__ = [
    "FAILURE_KINDS",
    "PARSE_ERROR_TOOL",
    "RUN_FILE",
    "SCHEMA_VERSION",
    "ComposeConfig",
    "ComposeReport",
    "ComposeStrategy",
    "ComposeTaskResult",
    "CurateConfig",
    "CurateDrop",
    "CurateItem",
    "CurateReport",
    "CurateStep",
    "EnvRef",
    "ExportWriter",
    "FunctionCall",
    "GroupStats",
    "Message",
    "NearDupMethod",
    "OutputError",
    "Provenance",
    "Report",
    "RunError",
    "RunStats",
    "RunStore",
    "actions",
    "cut_off_detail",
    "failure_counts",
    "failure_kind",
    "looped_detail",
    "was_cut_off",
    "read_result",
    "SchemaVersionError",
    "SegmentRules",
    "Segmenter",
    "Span",
    "Teacher",
    "TeacherStats",
    "ToolCallMsg",
    "Trajectory",
    "Usage",
    "assistant_text",
    "check_output",
    "compose",
    "compose_strategies",
    "curate",
    "curate_steps",
    "near_dup_methods",
    "env_segmenter",
    "export_formats",
    "export_run",
    "failed_calls",
    "import_messages",
    "mask_failed_calls",
    "segment",
    "segment_as_env",
    "segment_run",
    "segmenters",
    "setting_difference",
    "trajectory_features",
    "with_spans",
]
