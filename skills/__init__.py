"""Skill boxes: the box format, miners (tools and docs), the box's own validation."""

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
    run_tool_in_sandbox,
    spec_from_source,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "BoxError",
    "BoxTool",
    "Skill",
    "SkillBox",
    "SkillDraft",
    "ToolDraft",
    "ToolResult",
    "ToolRunner",
    "ToolTest",
    "parse_skill_md",
    "render_skill",
    "run_source",
    "run_tool_in_sandbox",
    "spec_from_source",
]
