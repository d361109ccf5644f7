"""Trajectories: the schema, the run directory store, the exports and span segmentation."""

from ._compose import ComposeConfig, ComposeReport, compose
from ._curate import CurateConfig, CurateReport, curate
from ._curate_steps import Drop as CurateDrop
from ._curate_steps import Item as CurateItem
from ._curate_steps import Step as CurateStep
from ._curate_steps import curate_steps
from ._curriculum import Complexity
from ._curriculum import Plan as CurriculumPlan
from ._curriculum import order as curriculum_order
from ._encode import SPAN_KINDS, Encoded, encode
from ._export import export_run
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
from ._sft import TrainConfig, TrainResult, train
from ._spans import SegmentRules, assistant_text, segment, segment_run
from ._store import OutputError, RunError, RunStore, check_output
from ._taxonomy import FAILURE_KINDS, failure_counts, failure_kind

__all__ = [
    "FAILURE_KINDS",
    "SCHEMA_VERSION",
    "SPAN_KINDS",
    "Complexity",
    "ComposeConfig",
    "ComposeReport",
    "CurateConfig",
    "CurateDrop",
    "CurateItem",
    "CurateReport",
    "CurateStep",
    "CurriculumPlan",
    "Encoded",
    "EnvRef",
    "FunctionCall",
    "Message",
    "OutputError",
    "Provenance",
    "RunError",
    "RunStore",
    "failure_counts",
    "failure_kind",
    "SchemaVersionError",
    "SegmentRules",
    "Span",
    "Teacher",
    "ToolCallMsg",
    "TrainConfig",
    "TrainResult",
    "Trajectory",
    "Usage",
    "assistant_text",
    "check_output",
    "compose",
    "curate",
    "curate_steps",
    "curriculum_order",
    "encode",
    "export_run",
    "import_messages",
    "segment",
    "segment_run",
    "train",
    "trajectory_features",
]
