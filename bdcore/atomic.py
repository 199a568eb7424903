"""Atomic file writes: temp file in the same folder, fsync, os.replace. A reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Self


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and atomically move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # ENOSPC from write/fsync names no file: say which one (it is left unchanged)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str)), "w")


class StagedFiles:
    """Several outputs that appear together or not at all: each is written to a hidden temporary name beside its
    final path (:meth:`path`), :meth:`commit` renames them all into place; leaving the ``with`` block by any exception
    (an error, Ctrl-C, SIGTERM turned into KeyboardInterrupt, Streamlit stopping the script) deletes every temporary
    file, and a commit cut short deletes what it had already renamed, so no ``*.tmp`` and no partial set is left."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final)
        self._committed: list[Path] = []

    def path(self, final: str | os.PathLike) -> Path:
        """The temporary path to write ``final`` to (``.<name>.tmp`` in the same folder)."""
        final = Path(final)
        tmp = final.with_name(f".{final.name}.tmp")
        self._staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        try:
            for tmp, final in self._staged:
                os.replace(tmp, final)
                self._committed.append(final)
        except BaseException:
            for final in self._committed:  # outputs of this run only: an incomplete set is worse than none
                final.unlink(missing_ok=True)
            raise
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()  # after a commit nothing is staged; otherwise the temporary files go
