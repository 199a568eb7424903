"""Commands: ``train`` (a run from a config file and/or flags), ``resume``, ``runs`` (the table), ``stop``,
``cancel`` (take a queued run out of the queue), ``compare`` (2-8 runs side by side: best/last metrics and the config fields that differ).

``train`` has one flag per ``RunConfig`` field, generated from its annotations (``--crop-size 256``,
``--crop-size none`` for an optional int, ``--amp/--no-amp`` for a bool); values are validated by ``RunConfig``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from bdcore.atomic import atomic_write
from bdcore.engine.compare import MAX_RUNS, MIN_RUNS, compare_runs
from bdcore.engine.config import RunConfig
from bdcore.engine.rundir import RunDir
from bdcore.engine import queue
from bdcore.engine.runs import (
    RunInfo, create_checked_run, effective_state, is_alive, list_runs, resume_run, run_info, run_path,
    status_problem, stop_run, submit,
)
from bdcore.paths import runs_dir
from bdcore.progress import format_eta


# ------------------------------------------------------------------------------------------ RunConfig flags
def _int_or_none(text: str) -> Optional[int]:
    return None if text.strip().lower() in ("none", "null", "") else int(text)


def _flag_type(annotation: Any) -> Optional[Callable[[str], Any]]:
    """The argparse ``type`` for a field annotation; None for a bool (an on/off flag). Optional ints accept
    ``none``; ``Literal`` choices and every value are checked by ``RunConfig`` itself (its messages)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else annotation
    if base is bool:
        return None
    if base is int:
        return _int_or_none if optional else int
    if base is float:
        return float
    return str  # str and Literal[...] of strings


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--field-name`` per ``RunConfig`` field, absent from the namespace unless given."""
    for name, info in RunConfig.model_fields.items():
        typ = _flag_type(info.annotation)
        flag = f"--{name.replace('_', '-')}"
        doc = info.description.replace("%", "%%") if info.description else None
        if typ is None:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=doc)
        else:
            p.add_argument(flag, dest=name, type=typ, default=argparse.SUPPRESS, help=doc)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """``--config`` (or the defaults) with the flags given on top."""
    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    updates = {k: getattr(args, k) for k in RunConfig.model_fields if hasattr(args, k)}
    if updates:
        cfg = RunConfig.from_dict({**cfg.model_dump(), **updates}, source="command-line flags")
    return cfg


# ------------------------------------------------------------------------------------------ following a run
def _progress_line(info: RunInfo) -> str:
    m = info.metrics
    bits = [f"{info.run_id}", info.state, f"epoch {info.epoch}/{info.total_epochs}", f"step {info.step}",
            f"{info.progress * 100:5.1f}%"]
    if info.phase and info.phase not in ("train", "starting"):
        bits.append(info.phase)
    if info.img_per_s:
        bits.append(f"{info.img_per_s:.1f} img/s")
    if m.get("val_iou") is not None:
        bits.append(f"val_iou {m['val_iou']:.3f}")
    if info.eta_s is not None:
        bits.append(f"eta {format_eta(info.eta_s)}")
    return "  ".join(bits)


def _follow(run_dir: Path) -> int:
    """Print a progress line until the process ends; Ctrl-C stops the run (it saves first)."""
    last = ""
    try:
        while is_alive(run_dir) or effective_state(run_dir) == "queued":
            if not is_alive(run_dir):  # waiting for a slot: this process also starts it when one frees
                queue.pump(run_dir.parent)
            line = _progress_line(run_info(run_dir))
            if line != last:
                print("\r" + line.ljust(100), end="", flush=True)
                last = line
            time.sleep(1.0)
    except KeyboardInterrupt:
        print(f"\nstopping (saving {RunDir.LAST})...", flush=True)
        stop_run(run_dir)
    info = run_info(run_dir)
    print("\r" + _progress_line(info).ljust(100))
    if info.state == "failed":
        print(f"run failed: {info.error or 'see ' + str(RunDir(run_dir).log)}", file=sys.stderr)
        return 1
    return 0


def _report_started(run_dir: Path, pid: int | None, detach: bool, what: str) -> int:
    """--detach: print the run id and return; else follow the run in the foreground until it ends."""
    if pid is None:
        print(f"{what}: queued (position {queue.position(run_dir)}; {queue.capacity()} run(s) at a time on this "
              f"machine); it starts by itself when a slot frees", file=sys.stderr)
    if detach:
        print(run_dir.name)
        return 0
    if pid is not None:
        print(f"{what} (pid {pid}, log {RunDir(run_dir).log})")
    return _follow(run_dir)


# ------------------------------------------------------------------------------------------ commands
EXCLUDE_HINT = "rerun with --exclude-bad-labels to leave those tiles out (the run records which)"


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    # a bad data folder or labels file is refused now, not in the detached trainer
    run_dir, excluded = create_checked_run(cfg, name=args.name, fix=EXCLUDE_HINT)
    if excluded:
        print(f"note: {len(excluded)} tile(s) with bad labels left out (recorded in {RunDir(run_dir).status}): "
              f"{', '.join(excluded[:10])}{' ...' if len(excluded) > 10 else ''}", file=sys.stderr)
    if args.create_only:  # e.g. for `torchrun ... -m bdcore.engine.train --run-dir RUN_DIR`
        print(run_dir)
        return 0
    return _report_started(run_dir, submit(run_dir), args.detach, f"run {run_dir.name}")


def _cmd_resume(args: argparse.Namespace) -> int:
    run_dir = run_path(args.run)
    return _report_started(run_dir, resume_run(run_dir), args.detach, f"resumed {run_dir.name}")


def _cmd_runs(args: argparse.Namespace) -> int:
    queue.pump(runs_dir())  # a slot may have freed without anyone starting the next run (e.g. a kill -9)
    infos = list_runs()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2, default=str))
        return 0
    if not infos:
        print(f"no runs in {runs_dir()}")
        return 0
    header = f"{'RUN':<40} {'STATE':<12} {'EPOCH':>7} {'PROG':>6} {'VAL_IOU':>8} {'ETA':>8} {'WEIGHTS':<10}  CONFIG"
    print(header)
    for i in infos:
        iou = i.metrics.get("val_iou")
        enc = i.weights_source or "-"
        state = f"queued #{i.queue_position}" if i.queue_position else i.state
        print(f"{i.run_id:<40} {state:<12} {f'{i.epoch}/{i.total_epochs}':>7} {i.progress * 100:5.1f}% "
              f"{'-' if iou is None else f'{iou:.3f}':>8} {format_eta(i.eta_s, none='-'):>8} {enc:<10}  {i.config}")
        if i.weights:
            print(f"  weights: {i.weights}")
        if i.excluded_tiles:
            print(f"  excluded (bad labels): {', '.join(i.excluded_tiles)}")
        problem = status_problem(i.path)
        if problem:
            print(f"  note: {problem}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state = stop_run(run_path(args.run), timeout=args.timeout)
    print(f"{args.run}: {state}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    queue.cancel(run_path(args.run))
    print(f"{args.run}: cancelled (removed from the queue)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    cmp = compare_runs(args.runs)
    if args.csv:
        atomic_write(args.csv, lambda f: f.write(cmp.to_csv()), "w")
        print(f"wrote {args.csv} ({len(cmp.table)} runs, {len(cmp.table.columns)} columns)")
        return 0
    print(cmp.to_text())
    if cmp.differing:
        print(f"\nconfig fields that differ: {', '.join(cmp.differing)} ({len(cmp.same)} others are the same)")
    else:
        print(f"\nthe runs have the same config ({len(cmp.same)} fields)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="start a training run (foreground progress, or --detach)")
    p.add_argument("--config", help="RunConfig YAML/JSON file; flags below override it")
    p.add_argument("--name", help="run id (default: timestamp + arch/encoder)")
    p.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")
    p.add_argument("--create-only", action="store_true",
                   help="write the run folder (config.json) and print its path without starting it (for torchrun)")
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("resume", help="resume a stopped/interrupted/failed run from last.pt")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--detach", action="store_true")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("runs", help="list training runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("stop", help="stop a running run (it saves last.pt first)")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("cancel", help="take a queued run out of the queue (it never starts)")
    p.add_argument("run", help="run id or folder")
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("compare", help=f"{MIN_RUNS}-{MAX_RUNS} runs side by side: best/last metrics, differing config")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids or folders (from `python -m bdcore runs`)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV (unrounded numbers) instead of printing it")
    p.set_defaults(func=_cmd_compare)
