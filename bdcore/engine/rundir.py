"""The run folder: every file name in it, its writers (status, metrics log) and its readers.

A run is a folder ``runs_dir()/<run-id>/``; the files in it are the interface between the app/CLI and a training
process, so their names are spelled here and nowhere else::

    config.json     RunConfig (runs.create_run)           launch.json  pid, command, time (runs.launch)
    status.json     state + progress, heartbeat (trainer)  .lock        flock held while the trainer lives
    metrics.jsonl   one JSON record per step/epoch         train.log    the trainer's stdout/stderr
    last.pt/best.pt checkpoints (trainer)                  predictions/ cached evaluation outputs
    export/<which>/ model.onnx + model.json (inference.modelfile, ``python -m bdcore export``)

One writer per file at a time: the trainer (rank 0) writes status/metrics/checkpoints while it lives;
``bdcore.engine.runs`` writes config/launch and a final status only when no trainer is alive. Every write is
atomic (``bdcore.atomic``) except the metrics log, which is append-only with one fsync per line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from bdcore.atomic import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

# Metric record fields that depend on the wall clock (everything else is reproducible from the config and seed).
TIME_FIELDS = ("time", "elapsed", "img_per_s")
HEARTBEAT_S = 2.0


class RunDir:
    """A run folder's path and the names of the files in it."""

    CONFIG = "config.json"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    LOG = "train.log"
    LAST = "last.pt"
    BEST = "best.pt"
    LAUNCH = "launch.json"
    LOCK = ".lock"
    PREDICTIONS = "predictions"
    EXPORT = "export"
    CHECKPOINTS = ("best", "last")  # ``which`` names: ``<which>.pt``

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def launch(self) -> Path:
        return self.path / self.LAUNCH

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    def export(self, which: str) -> Path:
        """Folder of the exported ``which`` checkpoint (``export/best/model.onnx`` + ``model.json``)."""
        return self.path / self.EXPORT / self.checkpoint(which).stem

    def checkpoint(self, which: str) -> Path:
        """``best.pt`` or ``last.pt`` (``which`` = "best" / "last")."""
        if which not in self.CHECKPOINTS:
            raise ValueError(f"which must be one of {', '.join(self.CHECKPOINTS)}, got {which!r}")
        return self.path / f"{which}.pt"

    def checkpoints(self) -> dict[str, Path]:
        """The checkpoints that exist, ``{"best": …, "last": …}`` in that order."""
        return {w: p for w in self.CHECKPOINTS if (p := self.checkpoint(w)).is_file()}

    def is_run(self) -> bool:
        """Has a ``config.json`` (what makes a folder a run)."""
        return self.config.is_file()

    def metrics_aside(self) -> Optional[Path]:
        """Move ``metrics.jsonl`` to ``metrics-before-restart-<time>.jsonl`` (a restart from scratch keeps the old
        records for reference); returns the new path, None when there was no log."""
        if not self.metrics.exists():
            return None
        aside = self.path / f"metrics-before-restart-{int(time.time())}.jsonl"
        os.replace(self.metrics, aside)
        return aside

    def clean_temp_files(self) -> None:
        """Remove temp files a killed writer left (``.last.pt.*.tmp`` …); the files they were replacing are intact."""
        for name in (self.LAST, self.BEST, self.STATUS, self.METRICS):
            for tmp in self.path.glob(f".{name}.*.tmp"):
                try:
                    tmp.unlink()
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------------- readers
def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}


def _read_jsonl(path: Path, kind: Optional[str] = None) -> list[dict]:
    """Records of a JSON-lines file; a partial or corrupt line (e.g. the one being written) is skipped."""
    out: list[dict] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return out
    for line in data.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and (kind is None or rec.get("kind") == kind):
            out.append(rec)
    return out


def read_status(run_dir: str | os.PathLike) -> dict:
    """``status.json`` as a dict ({} if missing or unreadable; writes are atomic, so a partial file is not expected)."""
    return _read_json(RunDir(run_dir).status)


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` as a plain dict ({} if missing or unreadable); ``RunConfig.load`` validates it."""
    return _read_json(RunDir(run_dir).config)


def read_launch(run_dir: str | os.PathLike) -> dict:
    """``launch.json`` (pid, cmd, time, resume) or {}."""
    return _read_json(RunDir(run_dir).launch)


def read_metrics(run_dir: str | os.PathLike, kind: Optional[str] = None) -> list[dict]:
    """Records of the run's ``metrics.jsonl`` (optionally only ``kind`` = "step" or "epoch"); a torn last line is
    skipped."""
    return _read_jsonl(RunDir(run_dir).metrics, kind)


def log_tail(run_dir: str | os.PathLike, lines: int = 1) -> str:
    """Last non-empty lines of ``train.log`` (where a trainer that died early left its traceback)."""
    try:
        with open(RunDir(run_dir).log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("=== ")]
    return "\n".join(kept[-lines:])


def update_status(run_dir: str | os.PathLike, **fields: Any) -> dict:
    """Merge ``fields`` into ``status.json`` (atomic). Only for writers outside a live trainer: a run that never
    started, or one killed before it could record its final state."""
    status = {**read_status(run_dir), **fields}
    atomic_write_json(RunDir(run_dir).status, status)
    return status


# --------------------------------------------------------------------------------------------------- writers
class StatusWriter:
    """``status.json`` owner while a trainer lives: the main thread updates fields, a daemon thread rewrites the
    file every ``HEARTBEAT_S`` (so a stale heartbeat means a dead or hung trainer)."""

    def __init__(self, path: Path, enabled: bool, base: dict):
        self.path, self.enabled = path, enabled
        self.data = dict(base)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def update(self, write: bool = False, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            if write:
                self._write_locked()

    def _write_locked(self) -> None:
        if not self.enabled:
            return
        now = time.time()
        self.data["heartbeat"] = now
        self.data["updated"] = now
        atomic_write_json(self.path, self.data)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    self._write_locked()
                except OSError as exc:  # a full disk must not kill training; the next beat retries
                    log.warning("status heartbeat failed: %s", exc)

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._beat, name="bdcore-heartbeat", daemon=True)
        self._thread.start()

    def finish(self, **fields: Any) -> None:
        """Final state: stop the heartbeat first so it can never overwrite the final state."""
        self._stop.set()
        with self._lock:
            self.data.update(fields)
            self._write_locked()
        if self._thread is not None:
            self._thread.join(timeout=5)


class MetricsLog:
    """``metrics.jsonl``: append-only JSON lines, each flushed and fsynced (a kill loses at most the line being
    written)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, sort_keys=True, allow_nan=False, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        return _read_jsonl(self.path)

    def truncate_after(self, step: int) -> int:
        """Keep only records up to ``step`` (those after it belong to work the checkpoint lost); atomic rewrite.
        Returns the number of records dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                dropped += 1  # a line cut short by a kill
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                kept.append(raw)
            else:
                dropped += 1
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.path, lambda f: f.write(text), "w")
        return dropped
