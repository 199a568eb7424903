"""Where bdcore keeps derived files (caches, the embedded demo) and where runs live."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PathsError(ValueError):
    """bdcore's cache or runs folder cannot be used (a file is in the way, no permission, ...)."""


def _ensure_dir(root: Path, env: str, what: str) -> Path:
    if root.exists() and not root.is_dir():
        raise PathsError(f"{root}: is a file, not a folder, so it cannot be the {what}; "
                         f"set {env} to a folder you can write, or move the file away")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathsError(
            f"{root}: cannot use it as the {what} ({exc.strerror or exc}); "
            f"set {env} to a folder you can write, or move what is in the way"
        ) from None
    return root


def cache_dir() -> Path:
    """Root for derived data (catalog cache, decoded arrays, demo AOI). Override with BDCORE_CACHE_DIR."""
    root = Path(os.environ.get("BDCORE_CACHE_DIR", Path.home() / ".cache" / "bdcore"))
    return _ensure_dir(root, "BDCORE_CACHE_DIR", "cache folder")


def runs_dir() -> Path:
    """Where training runs write (``checkpoints/<run-id>/``). Override with BDCORE_RUNS_DIR."""
    root = Path(os.environ.get("BDCORE_RUNS_DIR", PROJECT_ROOT / "checkpoints"))
    return _ensure_dir(root, "BDCORE_RUNS_DIR", "runs folder")
