"""Where trajdistill keeps what it can recompute: converted models, tokenizers, twx game data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$TRAJDISTILL_CACHE, else ~/.cache/trajdistill."""
    return Path(os.environ.get("TRAJDISTILL_CACHE") or Path.home() / ".cache" / "trajdistill").expanduser()
