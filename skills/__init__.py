"""Skill boxes: the box format, miners (tools and docs), the box's own validation, MCP serving and mounting."""

from typing import Any

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
from ._mine import MineConfig, MineResult, mine, mine_async
from ._miners import Mined, MineJob, miners

# Serving, mounting and validating a box load the MCP SDK (about half a second): their names load on first use,
# so that importing the package (the CLI does, for MineConfig's options) does not pay for it.
_SERVER = ("build_server", "serve", "serve_async")
_MOUNT = ("MountedEnv", "TOP_K", "mount_skills")
_RENAME = ("RenameReport", "rename_tools", "renamed")  # read_skill's name comes from the mount module
_VALIDATE = ("VALIDATION_SECTION", "AblationArm", "Arm", "ValidateConfig", "ValidationReport", "validate",
             "validate_async")


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        from . import _server as module
    elif name in _MOUNT:
        from . import _mount as module
    elif name in _RENAME:
        from . import _rename as module
    elif name in _VALIDATE:
        from . import _validate as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


__all__ = [
    "VALIDATION_SECTION",
    "ValidateConfig",
    "FORMAT_VERSION",
    "MANIFEST",
    "AblationArm",
    "Arm",
    "BoxError",
    "BoxTool",
    "CheckReport",
    "MineConfig",
    "MineJob",
    "MineResult",
    "Mined",
    "MountedEnv",
    "RenameReport",
    "Skill",
    "SkillBox",
    "SkillDraft",
    "TOP_K",
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
    "rename_tools",
    "renamed",
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
