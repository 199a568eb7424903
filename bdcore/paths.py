"""Where bdcore keeps derived files (caches, the embedded demo) and where runs live."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root for derived data (catalog cache, decoded arrays, demo AOI). Override with BDCORE_CACHE_DIR."""
    root = Path(os.environ.get("BDCORE_CACHE_DIR", Path.home() / ".cache" / "bdcore"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir() -> Path:
    """Where training runs write (``checkpoints/<run-id>/``). Override with BDCORE_RUNS_DIR."""
    root = Path(os.environ.get("BDCORE_RUNS_DIR", PROJECT_ROOT / "checkpoints"))
    root.mkdir(parents=True, exist_ok=True)
    return root
