"""The run queue: a run waits in state ``queued`` until the machine has a free slot, then starts by itself, in order.

No service. The queue is ``<runs folder>/.queue.json`` (entries in order) under an ``flock`` on
``<runs folder>/.queue.lock``. Whoever touches the runs calls :func:`pump`, which starts queued runs while slots are
free: a trainer that ends (``bdcore.engine.train``), the Train page's poll, ``python -m bdcore runs`` / ``train`` /
``resume`` / ``cancel``. So a queued run starts when a slot frees even if the app is closed, and after a
``kill -9`` of whichever process would have started it, the next app or CLI call starts it.

- **Never started twice**: :func:`pump` launches under the queue lock, ``runs.launch`` takes the run's own lock,
  and an entry whose run is no longer waiting (running, finished, cancelled, deleted) is dropped, not launched.
- **Never forgotten**: an entry leaves the file only after its launch succeeded (or its run is gone); a kill
  between the launch and the write leaves an entry whose run is now running, which the next pump drops.

Slots (:func:`capacity`): one run per GPU (a run needs ``cfg.gpus`` of them, default 1), one run on a CPU-only
machine; ``BDCORE_MAX_RUNS`` overrides the number. Strictly first in, first out: a run that needs more slots than
are free waits, and the runs behind it wait too (no starvation of multi-GPU runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from bdcore.atomic import atomic_write_json
from bdcore.engine.rundir import RunDir, read_config, read_status, update_status

QUEUE_FILE = ".queue.json"
QUEUE_LOCK = ".queue.lock"
MAX_RUNS_ENV = "BDCORE_MAX_RUNS"


class QueueError(ValueError):
    """A queue operation that cannot be done (names the run and what to do instead)."""


def capacity() -> int:
    """Slots on this machine: ``BDCORE_MAX_RUNS`` if set, else the number of CUDA GPUs, else 1."""
    env = os.environ.get(MAX_RUNS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise QueueError(f"{MAX_RUNS_ENV}={env!r} is not a whole number; set it to the runs allowed at once") \
                from None
        if n < 1:
            raise QueueError(f"{MAX_RUNS_ENV}={env!r}: at least 1 run must be allowed")
        return n
    return max(1, gpu_count())


def gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch (the app and ``bdcore runs`` stay quick):
    ``CUDA_VISIBLE_DEVICES`` when set, else the driver's device list; torch's count if torch is loaded already."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        with contextlib.suppress(Exception):
            return int(torch.cuda.device_count())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def need(run_dir: Path) -> int:
    """Slots a run takes: its number of GPUs (``gpus`` in config.json, default 1)."""
    try:
        return max(1, int(read_config(run_dir).get("gpus") or 1))
    except (TypeError, ValueError):
        return 1


@contextmanager
def _locked(root: Path) -> Iterator[list[dict]]:
    """The queue's entries under the exclusive lock; changes to the list are written back atomically."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / QUEUE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries = _read(root)
        before = json.dumps(entries)
        yield entries
        if json.dumps(entries) != before:
            atomic_write_json(root / QUEUE_FILE, {"entries": entries})
    finally:
        os.close(fd)


def _read(root: Path) -> list[dict]:
    try:
        data = json.loads((root / QUEUE_FILE).read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("run"), str)] if isinstance(entries, list) \
        else []


def entries(root: Path) -> list[dict]:
    """The queue as it is on disk (no lock: for display)."""
    return _read(Path(root))


def position(run_dir: Path) -> Optional[int]:
    """1-based place of the run in its runs folder's queue, or None when it is not waiting."""
    run_dir = Path(run_dir)
    names = [e["run"] for e in _read(run_dir.parent)]
    return names.index(run_dir.name) + 1 if run_dir.name in names else None


def _waiting(run_dir: Path) -> bool:
    """Still a run that waits for a slot (exists, queued, no trainer)."""
    from bdcore.engine.runs import is_alive

    return RunDir(run_dir).is_run() and read_status(run_dir).get("state") == "queued" and not is_alive(run_dir)


def _in_use(root: Path, ignore: Optional[str]) -> int:
    from bdcore.engine.runs import is_alive

    used = 0
    for d in root.iterdir() if root.is_dir() else []:
        if d.name != ignore and d.is_dir() and RunDir(d).is_run() and is_alive(d):
            used += need(d)
    return used


def enqueue(run_dir: Path, resume: bool = False, module: Optional[str] = None) -> None:
    """Put the run at the end of the queue (state ``queued``); :func:`pump` starts it when its turn comes, with
    ``python -m <module>`` (default: ``runs.TRAIN_MODULE`` at the time of the call)."""
    from bdcore.engine import runs

    run_dir = Path(run_dir)
    update_status(run_dir, state="queued", pid=None, queued_at=time.time(), phase=None)
    with _locked(run_dir.parent) as q:
        if not any(e["run"] == run_dir.name for e in q):
            q.append({"run": run_dir.name, "resume": bool(resume), "time": time.time(),
                      "module": module or runs.TRAIN_MODULE})


def pump(root: Path, finishing: Optional[str] = None) -> dict[str, int]:
    """Start queued runs, in order, while slots are free; returns {name: pid} of those started.

    ``finishing``: a run whose trainer is ending right now (it still holds its lock while it calls this), counted as
    free.
    """
    from bdcore.engine.runs import launch

    root = Path(root)
    if not _read(root):  # nothing waits (the usual case on every page poll): no lock, no scan of the runs
        return {}
    started: dict[str, int] = {}
    with _locked(root) as q:
        free = capacity() - _in_use(root, finishing)
        while q:
            head = q[0]
            run_dir = root / head["run"]
            if not _waiting(run_dir):
                q.pop(0)  # started by an earlier pump that died before writing, cancelled, or deleted
                continue
            if need(run_dir) > free:
                break
            q.pop(0)
            try:
                pid = launch(run_dir, resume=bool(head.get("resume")) and RunDir(run_dir).last.exists(),
                             module=head.get("module"))
            except (OSError, ValueError) as exc:  # it cannot start (disk full, ...): say so, go on with the next
                update_status(run_dir, state="failed", queued_at=None, error=f"could not start from the queue: {exc}")
                continue
            free -= need(run_dir)
            started[run_dir.name] = pid
    return started


def cancel(run_dir: Path) -> None:
    """Take a queued run out of the queue (state ``cancelled``); a running run is stopped with ``stop``, not here."""
    run_dir = Path(run_dir)
    with _locked(run_dir.parent) as q:
        if not any(e["run"] == run_dir.name for e in q):
            state = read_status(run_dir).get("state")
            raise QueueError(f"run {run_dir.name} is not queued (state {state}); "
                             + ("stop it with `python -m bdcore stop " + run_dir.name + "`" if state == "running"
                                else "nothing to cancel"))
        q[:] = [e for e in q if e["run"] != run_dir.name]
        update_status(run_dir, state="cancelled", queued_at=None)
