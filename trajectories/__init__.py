"""Trajectories: the schema, the run directory store and the exports."""

from ._export import export_run
from ._features import trajectory_features
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
from ._store import RunError, RunStore

__all__ = [
    "SCHEMA_VERSION",
    "EnvRef",
    "FunctionCall",
    "Message",
    "Provenance",
    "RunError",
    "RunStore",
    "SchemaVersionError",
    "Span",
    "Teacher",
    "ToolCallMsg",
    "Trajectory",
    "Usage",
    "export_run",
    "trajectory_features",
]
