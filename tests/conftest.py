"""Shared test helpers.

Under TRAJDISTILL_REQUIRE_ALL=1 (CI), a test whose real component is missing fails instead of skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = os.environ.get("TRAJDISTILL_REQUIRE_ALL") == "1"


def require(ok: bool, reason: str) -> None:
    """Skip (or, under TRAJDISTILL_REQUIRE_ALL=1, fail) when a real component is missing."""
    if ok:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required component missing: {reason}", pytrace=False)
    pytest.skip(reason)
