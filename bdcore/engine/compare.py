"""Runs side by side: the config fields that differ, a best/last metrics table and overlaid curves.

``compare_runs(["run-a", "run-b"])`` reads each run folder (``config.json``, ``metrics.jsonl``, ``status.json``
through ``bdcore.engine.rundir``/``runs``) and returns a :class:`Comparison`: the table the Compare page and
``python -m bdcore compare`` show, and per-run curve series the figures draw (``bdcore.viz.figures``).

Decisions:

- Every ``RunConfig`` field is compared: ``config.json`` holds no per-run identity (the run id, times and pid live
  in ``status.json``/``launch.json``), so no field is ignored. A field an older ``config.json`` lacks counts as its
  ``RunConfig`` default, which is what loading that config gives the trainer.
- Wall time is the trainer's ``elapsed`` (seconds of training since the run's start; the pause of a stopped and
  resumed run is not counted); a record without it (an older log) uses its ``time`` minus the first record's.
- "best val F1" is the highest ``val_f1`` over the epochs (not necessarily the best-IoU epoch), the same for the
  SpaceNet building F1; "last" is the latest epoch record's value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bdcore.engine.config import RunConfig
from bdcore.engine.rundir import RunDir, read_config, read_metrics, read_status
from bdcore.engine.runs import run_info, run_path
from bdcore.progress import format_eta

MIN_RUNS, MAX_RUNS = 2, 8
LABEL_FIELDS = 3  # a legend label names at most this many differing settings, then "+N more"
DASH = "-"
WALL = "wall time (s)"
# Table columns; the differing config fields come right after "run" (where a wide table is still on screen).
# Numbers are NaN where a run has no such record yet.
METRIC_COLUMNS = ("run", "state", "epochs done", "best val IoU", "best epoch", "best val F1", "best building F1",
                  "last val IoU", "last val F1", "last train loss", WALL, "img/s", "weights")
_FORMATS = {"best val IoU": "{:.3f}", "best val F1": "{:.3f}", "best building F1": "{:.3f}", "last val IoU": "{:.3f}",
            "last val F1": "{:.3f}", "last train loss": "{:.4f}", "img/s": "{:.1f}"}


class CompareError(ValueError):
    """The runs asked for cannot be compared (too few, too many, an unreadable config); the message says what to do."""


@dataclass
class RunCurves:
    """One run's curves: ``train`` (step records: epoch, wall_s, loss) and ``val`` (epoch records: epoch, wall_s,
    val_iou, val_f1). ``epoch`` is fractional for step records (2.5 = half-way through the third epoch)."""

    run_id: str
    label: str
    train: pd.DataFrame
    val: pd.DataFrame


@dataclass
class Comparison:
    table: pd.DataFrame            # run, one column per differing config field, METRIC_COLUMNS; one row per run
    differing: list[str]           # config fields whose values differ, in RunConfig order
    same: list[str]                # config fields equal in every run
    curves: list[RunCurves]        # in the order the runs were given

    def display_table(self) -> pd.DataFrame:
        """The table as text, rounded, a dash where a run has no value yet (what the CLI prints and the page shows);
        wall time as ``4m07s``."""
        shown = pd.DataFrame({col: [_cell(col, v) for v in self.table[col]] for col in self.table.columns})
        return shown.rename(columns={WALL: "wall time"})

    def to_text(self) -> str:
        """Aligned columns, run ids on the left."""
        shown = self.display_table()
        width = max(len(c) for c in [*shown["run"], "run"])
        shown = shown.rename(columns={"run": "run".ljust(width)})
        return shown.to_string(index=False, formatters={"run".ljust(width): lambda v: v.ljust(width)})

    def to_csv(self) -> str:
        """Numbers unrounded, an empty cell where a run has no value yet."""
        return self.table.to_csv(index=False)


# ------------------------------------------------------------------------------------------------ config fields
def _defaults() -> dict[str, Any]:
    return {name: info.default for name, info in RunConfig.model_fields.items()}


def _key(value: Any) -> str:
    """A comparable spelling of a config value (1e-3 and 0.001 are the same number)."""
    return json.dumps(value, sort_keys=True, default=str)


def differing_config(configs: Sequence[dict]) -> list[str]:
    """The config fields whose values are not the same in every config, ``RunConfig`` order first (then unknown
    fields, sorted). A field a config lacks counts as its ``RunConfig`` default."""
    defaults = _defaults()
    full = [{**defaults, **cfg} for cfg in configs]
    names = list(defaults) + sorted({k for cfg in full for k in cfg} - set(defaults))
    return [n for n in names if len({_key(cfg.get(n)) for cfg in full}) > 1]


def format_value(value: Any) -> str:
    """A config value as a label shows it: ``0.001``, ``none``, ``true``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)  # a float's shortest exact spelling: 0.001, 1e-05


def run_label(run_id: str, cfg: dict, fields: Sequence[str]) -> str:
    """``run-a (lr=0.001, batch_size=4)``: the run and its values of the differing fields (at most
    ``LABEL_FIELDS``, then ``+N more``); just the run id when nothing differs."""
    if not fields:
        return run_id
    full = {**_defaults(), **cfg}
    parts = [f"{f}={format_value(full.get(f))}" for f in fields[:LABEL_FIELDS]]
    if len(fields) > LABEL_FIELDS:
        parts.append(f"+{len(fields) - LABEL_FIELDS} more")
    return f"{run_id} ({', '.join(parts)})"


# ------------------------------------------------------------------------------------------------ metrics
def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _wall_times(records: list[dict]) -> list[float]:
    """Seconds since the run's start for each record: ``elapsed``, else ``time`` minus the first record's time."""
    t0 = next((_num(r.get("time")) for r in records if not math.isnan(_num(r.get("time")))), math.nan)
    return [_num(r["elapsed"]) if r.get("elapsed") is not None else _num(r.get("time")) - t0 for r in records]


def _step_epoch(rec: dict, steps_per_epoch: float) -> float:
    """A step record's position in epochs: ``epoch`` is 1-based (the epoch in progress), ``epoch_step`` its batches."""
    epoch, within = _num(rec.get("epoch")), _num(rec.get("epoch_step"))
    if math.isnan(within) or not steps_per_epoch > 0:
        return epoch
    return epoch - 1 + within / steps_per_epoch


def run_curves(records: list[dict], label: str, run_id: str, steps_per_epoch: float | None = None) -> RunCurves:
    """The curve series of one run's metrics records (``bdcore.engine.rundir.read_metrics``)."""
    wall = _wall_times(records)
    steps = [(r, w) for r, w in zip(records, wall) if r.get("kind") == "step" and r.get("loss") is not None]
    epochs = [(r, w) for r, w in zip(records, wall) if r.get("kind") == "epoch"]
    spe = _num(steps_per_epoch)
    train = pd.DataFrame({"epoch": [_step_epoch(r, spe) for r, _ in steps], "wall_s": [w for _, w in steps],
                          "loss": [_num(r["loss"]) for r, _ in steps]}, dtype=float)
    val = pd.DataFrame({"epoch": [_num(r.get("epoch")) for r, _ in epochs], "wall_s": [w for _, w in epochs],
                        "val_iou": [_num(r.get("val_iou")) for r, _ in epochs],
                        "val_f1": [_num(r.get("val_f1")) for r, _ in epochs]}, dtype=float)
    return RunCurves(run_id=run_id, label=label, train=train, val=val)


def _best(epochs: list[dict], key: str) -> tuple[float, float]:
    """(highest value of ``key``, its epoch) over the epoch records; NaN when none has it."""
    scored = [(_num(r.get(key)), _num(r.get("epoch"))) for r in epochs]
    scored = [s for s in scored if not math.isnan(s[0])]
    return max(scored, key=lambda s: s[0]) if scored else (math.nan, math.nan)


def metrics_row(records: list[dict]) -> dict[str, float | int]:
    """Best/last metrics of one run's records (NaN where there is no record yet)."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step" and r.get("loss") is not None]
    last = epochs[-1] if epochs else {}
    best_iou, best_epoch = _best(epochs, "val_iou")
    wall = _wall_times(records)
    last_loss = steps[-1]["loss"] if steps else last.get("loss")
    return {
        "epochs done": len({r.get("epoch") for r in epochs}),
        "best val IoU": best_iou, "best epoch": best_epoch,
        "best val F1": _best(epochs, "val_f1")[0], "best building F1": _best(epochs, "val_building_f1")[0],
        "last val IoU": _num(last.get("val_iou")), "last val F1": _num(last.get("val_f1")),
        "last train loss": _num(last_loss), WALL: wall[-1] if wall else math.nan,
    }


# ------------------------------------------------------------------------------------------------ comparison
def _distinct_runs(runs: Iterable[str | os.PathLike]) -> list[Path]:
    paths = list(dict.fromkeys(run_path(r).resolve() for r in runs))
    if not MIN_RUNS <= len(paths) <= MAX_RUNS:
        raise CompareError(f"compare takes {MIN_RUNS} to {MAX_RUNS} different runs, got {len(paths)}: "
                           f"pick {'more' if len(paths) < MIN_RUNS else 'fewer'} runs "
                           "(list them with `python -m bdcore runs`)")
    return paths


def compare_runs(runs: Iterable[str | os.PathLike]) -> Comparison:
    """Compare 2-8 runs (run ids or folders, as ``runs.run_path`` takes them; a run named twice counts once).

    Unknown runs raise ``RunError``; too few or too many ``CompareError``. A run with no metrics yet is a row of
    NaN (dashes in ``display_table``) and empty curves."""
    paths = _distinct_runs(runs)
    configs = [_config_of(p) for p in paths]
    differing = differing_config(configs)
    rows, curves = [], []
    for path, cfg in zip(paths, configs):
        info = run_info(path)
        records = read_metrics(path)
        label = run_label(info.run_id, cfg, differing)
        curves.append(run_curves(records, label, info.run_id, _steps_per_epoch(path, cfg, records)))
        full = {**_defaults(), **cfg}
        rows.append({"run": info.run_id, "state": info.state, **metrics_row(records),
                     "img/s": _num(info.img_per_s), "weights": info.weights_source or "",
                     **{f: format_value(full.get(f)) for f in differing}})  # as text: as the labels spell them
    table = pd.DataFrame(rows, columns=[METRIC_COLUMNS[0], *differing, *METRIC_COLUMNS[1:]])
    table["best epoch"] = table["best epoch"].astype("Int64")  # a whole number, or <NA> (an empty CSV cell)
    same = [n for n in _defaults() if n not in differing]
    return Comparison(table=table, differing=differing, same=same, curves=curves)


def _config_of(path: Path) -> dict:
    """The run's ``config.json``; an unreadable one is refused (read as defaults it would show settings the run
    may never have had)."""
    cfg = read_config(path)
    if not cfg:  # missing, corrupt, not an object, or just "{}" (all defaults, which is fine)
        try:
            ok = isinstance(json.loads(RunDir(path).config.read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise CompareError(f"{RunDir(path).config} is unreadable (corrupt or not a JSON object), so the settings "
                               f"of run {path.name} are unknown: restore the file or leave the run out")
    return cfg


def _steps_per_epoch(path: Path, cfg: dict, records: list[dict]) -> float:
    """Batches per epoch: the trainer's (``status.json``), else the config's cap, else the highest ``epoch_step`` in
    the log; NaN when none says."""
    for value in (read_status(path).get("steps_per_epoch"), cfg.get("steps_per_epoch")):
        if _num(value) > 0:
            return _num(value)
    seen = [_num(r.get("epoch_step")) for r in records if r.get("kind") == "step"]
    seen = [s for s in seen if not math.isnan(s)]
    return max(seen) if seen else math.nan


def _cell(column: str, value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == "":
        return DASH
    if column in _FORMATS:
        return _FORMATS[column].format(value)
    if column in ("epochs done", "best epoch"):
        return str(int(value))
    if column == WALL:
        return format_eta(value)
    return format_value(value)
