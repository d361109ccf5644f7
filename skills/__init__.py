"""Skill boxes: the box format, miners (tools and docs), the box's own validation, MCP serving and mounting."""

from ._box import (
    FORMAT_VERSION,
    MANIFEST,
    BoxError,
    BoxTool,
    Skill,
    SkillBox,
    SkillDraft,
    ToolDraft,
    ToolResult,
    ToolRunner,
    ToolTest,
    parse_skill_md,
    render_skill,
    run_source,
    run_source_many,
    run_tool_in_sandbox,
    spec_from_source,
)
from ._check import CheckReport, ToolCheck, check_box, check_box_async
from ._validate import AblationArm, Arm, GateConfig, ValidationReport, validate, validate_async
from ._mine import MineConfig, MineResult, mine, mine_async
from ._miners import Mined, MineJob, miners
from ._mount import MountedEnv, mount_skills
from ._server import build_server, serve, serve_async

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "AblationArm",
    "Arm",
    "BoxError",
    "BoxTool",
    "CheckReport",
    "GateConfig",
    "MineConfig",
    "MineJob",
    "MineResult",
    "Mined",
    "MountedEnv",
    "Skill",
    "SkillBox",
    "SkillDraft",
    "ToolCheck",
    "ToolDraft",
    "ToolResult",
    "ToolRunner",
    "ToolTest",
    "ValidationReport",
    "build_server",
    "check_box",
    "check_box_async",
    "mine",
    "mine_async",
    "miners",
    "mount_skills",
    "parse_skill_md",
    "render_skill",
    "run_source",
    "run_source_many",
    "run_tool_in_sandbox",
    "serve",
    "serve_async",
    "spec_from_source",
    "validate",
    "validate_async",
]
