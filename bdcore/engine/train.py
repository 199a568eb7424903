"""Train a run: ``train(cfg, run_dir, resume=False)`` in-process, and ``python -m bdcore.engine.train --run-dir DIR
[--resume]``, the entry point of a detached run (``runs.launch``) and of every torchrun process.

This module wires the run folder's writers (``rundir``), the device/process group (``device``) and signal handling
around a :class:`bdcore.engine.trainer.Trainer`, and turns any failure into ``status.json`` state ``failed``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import Dataset

from bdcore.engine.config import RunConfig
from bdcore.engine.device import configure_determinism, device_name, setup_distributed, teardown_distributed
from bdcore.engine.rundir import MetricsLog, RunDir, StatusWriter, read_status, update_status
from bdcore.engine.runs import process_start_time
from bdcore.engine.trainer import StopFlag, Trainer

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False, *,
          datasets: Optional[tuple[Dataset, Dataset]] = None, stop_at_step: Optional[int] = None) -> dict:
    """Train ``cfg`` in ``run_dir`` (resuming from ``last.pt`` with ``resume=True``); returns a summary dict
    (state, epoch, step, best_val_iou, last epoch record, run_dir).

    ``datasets``: ``(train_ds, val_ds)`` instead of ``bdcore.data.dataset.build_datasets(cfg)``.
    ``stop_at_step``: behave as if SIGTERM arrived once this global step is done (tests, benchmarks).
    """
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    configure_determinism(cfg.deterministic)  # before the process group and the first GPU kernel
    dist_info, device = setup_distributed(cfg.device)
    old_status = read_status(run)
    started = time.time()
    status = StatusWriter(run.status, dist_info.main, {
        "created": old_status.get("created", started), "state": "running", "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()),  # with the pid, names this process (runs.stop_run checks it)
        "host": socket.gethostname(), "device": device_name(device), "world_size": dist_info.world,
        "epoch": 0, "step": 0, "total_epochs": cfg.epochs, "steps_per_epoch": None, "started": started,
        "error": None, "resumed": bool(resume), "weights": old_status.get("weights"), "phase": "starting",
    })
    stop = StopFlag()
    stop.install()
    try:
        status.update(write=True)
        status.start()
        trainer = Trainer(cfg, run, dist_info, device, status, MetricsLog(run.metrics, dist_info.main), stop,
                          stop_at_step)
        trainer.setup(resume, datasets)
        trainer.fit()
        summary, final = trainer.result()
        status.finish(**final)
        return summary
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            status.finish(state="stopped", error="interrupted (second Ctrl-C) before a checkpoint was written")
        else:
            msg = str(exc) or type(exc).__name__
            status.finish(state="failed", error=f"{type(exc).__name__}: {msg}")
            log.error("training failed: %s", msg)
        raise
    finally:
        stop.restore()
        teardown_distributed(dist_info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdcore.engine.train",
                                     description="train the run in RUN_DIR (reads RUN_DIR/config.json)")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run = RunDir(args.run_dir)
    try:
        cfg = RunConfig.load(run.config)
    except ValueError as exc:  # never started: say so in status.json too, so the app shows why
        if run.path.is_dir():
            now = time.time()
            update_status(run, state="failed", error=str(exc), pid=os.getpid(), heartbeat=now, updated=now)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, run, resume=args.resume)
    except ValueError as exc:  # status.json already says failed, with this message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _start_next_queued(run)
    return 0 if result["state"] in ("finished", "stopped") else 1


def _start_next_queued(run: RunDir) -> None:
    """This run's slot frees now: start the next queued run(s) (rank 0 only; a failure here never fails the run)."""
    if os.environ.get("RANK", "0") != "0":
        return
    from bdcore.engine import queue

    try:
        started = queue.pump(run.path.parent, finishing=run.path.name)
    except Exception as exc:  # noqa: BLE001 - the next app or CLI call pumps again
        log.warning("could not start the next queued run: %s", exc)
        return
    if started:
        log.info("started the next queued run(s): %s", ", ".join(started))


if __name__ == "__main__":
    raise SystemExit(main())
