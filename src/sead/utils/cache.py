"""Where sead caches what it prepares once: built-in task models, fetched checkpoints, converted GGUF files."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SEAD_CACHE_DIR`` if set, else ``~/.cache/sead``."""
    env = os.environ.get("SEAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sead"
