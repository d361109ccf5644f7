"""Shared test helpers.

Under TRAJDISTILL_REQUIRE_ALL=1 (CI), a test whose real component is missing fails instead of skipping.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs property tests on a fixed example sequence, so a landing never hinges on a lucky draw; local runs explore
settings.register_profile("ci", derandomize=True)
if os.environ.get("TRAJDISTILL_REQUIRE_ALL") == "1":
    settings.load_profile("ci")

REQUIRE_ALL = os.environ.get("TRAJDISTILL_REQUIRE_ALL") == "1"


def require(ok: bool, reason: str) -> None:
    """Skip (or, under TRAJDISTILL_REQUIRE_ALL=1, fail) when a real component is missing."""
    if ok:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required component missing: {reason}", pytrace=False)
    pytest.skip(reason)
