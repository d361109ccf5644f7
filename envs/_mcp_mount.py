"""Mount any MCP server's tools into an env."""

from __future__ import annotations

import re


def _prefix(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "box"


def _free_name(name: str, box: str, taken: set[str]) -> str:
    """`name`, or `<box>__name` (then a numbered form) when an env tool or another box has it."""
    candidate, i = name, 2
    while candidate in taken:
        candidate = f"{_prefix(box)}__{name}" if i == 2 else f"{_prefix(box)}{i - 1}__{name}"
        i += 1
    taken.add(candidate)
    return candidate
