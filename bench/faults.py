"""Fault campaign: ``kill -9`` a real detached training run again and again, resume it each time, let it finish.

A small run (demo AOI of a few tiles, Unet/resnet18 from scratch, crop 64, batch 2, CPU) is started with
``runs.launch``; each trial kills the trainer's whole process group with SIGKILL at a random moment, some trials
deliberately while ``last.pt`` is being written (the kill lands as soon as bdcore.atomic's temp file
``.last.pt.*.tmp`` has reached a random fraction of a checkpoint's size), then ``runs.resume_run`` continues it.

Per trial: step/epoch at the kill (metrics.jsonl is fsynced per step; status.json is up to one heartbeat old),
the checkpoint step the resume starts from, steps/epochs lost, whether ``last.pt``/``best.pt`` load, which temp
files the kill left and whether any survives the resume. At the end: every step 1..N logged exactly once, every
epoch once, final state ``finished``, ``last.pt`` at step N.

Goals: <= 1 epoch lost per kill, 0 corrupt files, 0 duplicated (or missing) steps.

    python bench/faults.py [--trials 10] [--seed 0] [--json OUT] [--workdir DIR] [--keep] [--markdown]

Prints one JSON document (also written to OUT with --json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bdcore.atomic import atomic_write_json
from bdcore.data.demo import write_demo_aoi
from bdcore.engine import runs
from bdcore.engine.config import RunConfig
from bdcore.engine.models import CheckpointError, load_checkpoint
from bdcore.engine.rundir import TIME_FIELDS, RunDir, log_tail, read_metrics, read_status

CHECKPOINTS = (RunDir.LAST, RunDir.BEST)
POLL_S = 0.002  # checkpoint temp files live ~0.5 s; 2 ms polling lands the kill inside the write


class CampaignError(RuntimeError):
    """The campaign itself could not proceed (trainer failed on its own, a wait timed out)."""


def tiny_config(data_root: Path, epochs: int, steps_per_epoch: int, **overrides: Any) -> RunConfig:
    base = dict(data_root=str(data_root), arch="Unet", encoder="resnet18", encoder_weights=None, crop_size=64,
                batch_size=2, epochs=epochs, steps_per_epoch=steps_per_epoch, workers=0, device="cpu",
                log_every=1, val_fraction=0.2, building_f1_tiles=0, seed=0)
    base.update(overrides)
    return RunConfig(**base)


# ------------------------------------------------------------------------------------------------ observation
def temp_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.glob(".*.tmp")}


def checkpoint_state(path: Path, cfg: RunConfig) -> dict:
    """{'exists', 'loads', 'step', 'epoch', 'error'} for one checkpoint file."""
    if not path.exists():
        return {"exists": False, "loads": None, "step": None, "epoch": None, "error": None}
    try:
        ck = load_checkpoint(path, expect=cfg)
    except CheckpointError as exc:
        return {"exists": True, "loads": False, "step": None, "epoch": None, "error": str(exc)[:300]}
    return {"exists": True, "loads": True, "step": int(ck["step"]), "epoch": int(ck["epoch"]), "error": None}


def last_logged(run_dir: Path, since: float = 0.0) -> Optional[dict]:
    """The newest step/epoch record (by step) written at or after ``since`` (epoch seconds)."""
    recs = [r for r in read_metrics(run_dir) if float(r.get("time", 0)) >= since]
    return max(recs, key=lambda r: (int(r.get("step", 0)), r.get("kind") == "epoch")) if recs else None


def _log_tail(run_dir: Path, n: int = 15) -> str:
    return log_tail(run_dir, n)


def _wait(pred: Callable[[], Any], run_dir: Path, timeout: float, what: str, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if not runs.is_alive(run_dir):
            value = pred()
            if value:
                return value
            raise CampaignError(f"trainer exited (state {runs.effective_state(run_dir)}) while waiting for {what}; "
                                f"train.log:\n{_log_tail(run_dir)}")
        if time.monotonic() > deadline:
            raise CampaignError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def kill_group(run_dir: Path, pid: int, timeout: float = 30.0) -> None:
    """SIGKILL the trainer's process group (launch() gives it its own session: pgid == pid), wait until gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    state = runs.wait_run(run_dir, timeout=timeout, poll=0.02)
    if runs.is_alive(run_dir):
        raise CampaignError(f"pid {pid} still alive {timeout:.0f} s after SIGKILL (state {state})")


# ------------------------------------------------------------------------------------------------ kill moments
def _kill_at_step(run_dir: Path, pid: int, since: float, target: int, step_s: float, rng: random.Random,
                  timeout: float) -> dict:
    """Wait until global step ``target`` is logged by this process, then a random fraction of a step more."""
    _wait(lambda: (r := last_logged(run_dir, since)) and int(r["step"]) >= target, run_dir, timeout,
          f"step {target}")
    time.sleep(rng.uniform(0.0, step_s))
    kill_group(run_dir, pid)
    return {"moment": f"after step {target} + random fraction of a step", "target_step": target}


def _kill_in_checkpoint_write(run_dir: Path, pid: int, known_tmp: set[str], rng: random.Random,
                              timeout: float, names: tuple[str, ...] = (RunDir.LAST,)) -> dict:
    """Kill while one of ``names`` is being written (the first such write to start): as soon as its temp file
    has a random fraction of a checkpoint's bytes (0 = the moment it appears)."""
    sizes = [(run_dir / n).stat().st_size for n in CHECKPOINTS if (run_dir / n).exists()]
    expect = sizes[0] if sizes else 0  # before the first checkpoint: kill the moment the temp file appears
    frac = rng.choice([0.0, rng.uniform(0.05, 0.95)])
    want = int(frac * expect)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tmps = [p for n in names for p in run_dir.glob(f".{n}.*.tmp") if p.name not in known_tmp]
        for tmp in tmps:
            name = tmp.name[1:].rsplit(".", 2)[0]
            try:
                size = tmp.stat().st_size
            except FileNotFoundError:  # renamed into place before we got there: wait for the next write
                known_tmp.add(tmp.name)
                continue
            if size >= want:
                kill_group(run_dir, pid)
                try:
                    size = tmp.stat().st_size
                except FileNotFoundError:
                    size = None
                return {"moment": f"during {name} write", "tmp_bytes_at_kill": size,
                        "tmp_fraction_at_kill": None if not expect or size is None else round(size / expect, 3)}
        if not runs.is_alive(run_dir):
            raise CampaignError(f"trainer exited (state {runs.effective_state(run_dir)}) before writing "
                                f"{' or '.join(names)}; train.log:\n{_log_tail(run_dir)}")
        time.sleep(POLL_S)
    raise CampaignError(f"timed out after {timeout:.0f} s waiting for a {' or '.join(names)} write")


def _kill_in_startup(run_dir: Path, pid: int, since: float, delay: float) -> dict:
    """Kill ``delay`` s after the (re)launch, whatever the trainer is doing by then."""
    time.sleep(max(0.0, since + delay - time.time()))
    started = last_logged(run_dir, since) is not None
    kill_group(run_dir, pid)
    return {"moment": f"during start-up ({delay:.1f} s after launch" + (", first step already done)" if started
                                                                         else ", before its first step)"),
            "delay_s": round(delay, 2)}


# ------------------------------------------------------------------------------------------------ the campaign
@dataclass
class _Live:
    """The campaign's run and its current trainer process."""

    run_dir: Path
    cfg: RunConfig
    steps_per_epoch: int
    total_steps: int
    timeout: float
    pid: int
    since: float            # launch time of the current trainer: its metrics records are newer
    resumed_from: int = 0   # checkpoint step the current trainer started from
    startup_s: float = 5.0  # launch -> first step, measured at each resume; start-up kills land inside it
    max_steps_per_kill: Optional[int] = None  # random-step kills land 1..this many steps past the resume point


def _plan(trials: int, rng: random.Random, srng: random.Random, checkpoint_trials: Optional[int],
          checkpoint_trial_ids: Optional[list[int]], startup_trials: int) -> tuple[set[int], set[int]]:
    """(0-based trials that kill during a checkpoint write, trials that kill during start-up)."""
    if checkpoint_trial_ids is not None:  # explicit 0-based trial numbers (tests)
        ck_trials = {int(i) for i in checkpoint_trial_ids if 0 <= int(i) < trials}
    else:
        n = max(3, round(0.3 * trials)) if checkpoint_trials is None else checkpoint_trials
        ck_trials = set(rng.sample(range(trials), min(n, trials)))
    others = sorted(set(range(1, trials)) - ck_trials)
    return ck_trials, set(srng.sample(others, min(startup_trials, len(others))))


def _kill(live: _Live, kind: str, n_ck_before: int, rng: random.Random, srng: random.Random) -> dict:
    """Kill the trainer the way ``kind`` says; returns what the kill moment was."""
    if kind == "start-up":
        return _kill_in_startup(live.run_dir, live.pid, live.since, srng.uniform(0.1, 0.6) * live.startup_s)
    if kind == "checkpoint-write":
        # every other one: the first checkpoint write of the epoch end (best.pt when the epoch improved)
        names = (RunDir.LAST,) if n_ck_before % 2 == 0 else (RunDir.BEST, RunDir.LAST)
        return _kill_in_checkpoint_write(live.run_dir, live.pid, temp_files(live.run_dir), rng, live.timeout, names)
    # resume points are epoch ends (kill -9 never lets a mid-epoch checkpoint happen), so this stays at least one
    # step past the resume point and short of the run's last step
    target = min(live.resumed_from + rng.randint(1, live.max_steps_per_kill or 2 * live.steps_per_epoch - 1),
                 live.total_steps - 1)
    step_s = 0.3  # the random part of a random-step kill: up to about one CPU step past the target step
    return _kill_at_step(live.run_dir, live.pid, live.since, target, step_s, rng, live.timeout)


def _resume_after_kill(live: _Live, number: int, kind: str, info: dict) -> dict:
    """Look at what the kill left, resume the run, wait for its first step; the trial's report row."""
    run_dir, S = live.run_dir, live.steps_per_epoch
    t_kill, killed_pid = time.time(), live.pid
    status = read_status(run_dir)
    # this process's newest record (older ones may still be there if it died before truncating the log)
    rec = last_logged(run_dir, live.since) or {"step": live.resumed_from, "epoch": live.resumed_from // S}
    step_at_kill = int(rec.get("step", 0))
    cks = {n: checkpoint_state(run_dir / n, live.cfg) for n in CHECKPOINTS}
    tmp_at_kill = sorted(temp_files(run_dir))
    last = cks[RunDir.LAST]
    new_from = last["step"] if last["loads"] else 0
    work_lost_s = _work_lost_s(run_dir, new_from, t_kill, live.since)
    times = sorted(float(r["time"]) for r in read_metrics(run_dir) if r.get("kind") == "step"
                   and float(r.get("time", 0)) >= live.since)
    max_step_gap_s = round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 2)
    state_before = runs.effective_state(run_dir)
    t_resume = time.time()
    live.pid = runs.resume_run(run_dir)
    live.since = t_resume
    # the resumed trainer cleans temp files and truncates the log before its first step; wait for that step
    first = _wait(lambda: (r := last_logged(run_dir, t_resume)) and r, run_dir, live.timeout,
                  "the first resumed step")
    live.startup_s = recovery_s = time.time() - t_resume
    live.resumed_from = new_from
    lost = step_at_kill - new_from
    return {
        "trial": number, "kind": kind, **info, "pid_killed": killed_pid,
        "step_at_kill": step_at_kill, "epoch_at_kill": int(rec.get("epoch", 0)),
        "epoch_record_at_kill": rec.get("kind") == "epoch",
        "status_step_at_kill": status.get("step"), "state_after_kill": state_before,
        "resumed_from_step": new_from, "resumed_from_epoch": last["epoch"] if last["loads"] else 0,
        "restart_from_scratch": not last["exists"],
        "steps_lost": lost, "epochs_lost": round(lost / S, 3), "work_lost_s": work_lost_s,
        "max_step_gap_s": max_step_gap_s,
        "last_pt": {"exists": last["exists"], "loads": last["loads"], "step": last["step"]},
        "best_pt": {k: cks[RunDir.BEST][k] for k in ("exists", "loads", "step")},
        "checkpoint_errors": [c["error"] for c in cks.values() if c["error"]],
        "tmp_left_by_kill": tmp_at_kill, "tmp_left_after_resume": sorted(set(tmp_at_kill) & temp_files(run_dir)),
        "first_resumed_step": int(first.get("step", 0)), "recovery_s": round(recovery_s, 2),
        "kill_to_resume_s": round(t_resume - t_kill, 2),
    }


def _work_lost_s(run_dir: Path, resumed_from: int, t_kill: float, since: float) -> Optional[float]:
    """Training time the kill threw away: from the end of the step the resume starts after to the kill, counting
    only the killed trainer's own training (not its start-up: when that step was logged by an earlier trainer, from
    one step before the killed trainer's first step record)."""
    if resumed_from == 0:
        return None  # restart from scratch: the loss is the start-up plus every step so far
    recs = [r for r in read_metrics(run_dir) if r.get("kind") == "step"]
    mine = sorted(float(r["time"]) for r in recs if float(r.get("time", 0)) >= since)
    ref = [float(r["time"]) for r in recs if int(r["step"]) == resumed_from and float(r.get("time", 0)) >= since]
    if ref:
        return round(t_kill - max(ref), 2)
    if not mine:
        return 0.0  # killed in start-up: no training lost beyond the checkpoint
    gaps = [b - a for a, b in zip(mine, mine[1:])]
    step_s = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    return round(t_kill - (mine[0] - step_s), 2)


def _final_report(live: _Live, epochs: int) -> dict:
    """Let the run finish; what its files say (every step and epoch once, checkpoints, temp files)."""
    run_dir, total_steps = live.run_dir, live.total_steps
    state = runs.wait_run(run_dir, timeout=max(live.timeout, 60.0 * epochs), poll=0.2)
    recs = read_metrics(run_dir)
    step_ids = [int(r["step"]) for r in recs if r.get("kind") == "step"]
    epoch_ids = [int(r["epoch"]) for r in recs if r.get("kind") == "epoch"]
    cks = {n: checkpoint_state(run_dir / n, live.cfg) for n in CHECKPOINTS}
    status = read_status(run_dir)
    return {
        "state": state, "status_state": status.get("state"), "status_step": status.get("step"),
        "steps_logged": len(step_ids), "expected_steps": total_steps, "in_order": step_ids == sorted(step_ids),
        "duplicated_steps": sorted({s for s in step_ids if step_ids.count(s) > 1}),
        "missing_steps": sorted(set(range(1, total_steps + 1)) - set(step_ids)),
        "duplicated_epochs": sorted({e for e in epoch_ids if epoch_ids.count(e) > 1}),
        "missing_epochs": sorted(set(range(1, epochs + 1)) - set(epoch_ids)),
        "last_pt": {k: cks[RunDir.LAST][k] for k in ("loads", "step", "epoch")},
        "best_pt": {k: cks[RunDir.BEST][k] for k in ("loads", "step", "epoch")},
        "tmp_files_left": sorted(temp_files(run_dir)),
        "restarts_kept_aside": sorted(p.name for p in run_dir.glob("metrics-before-restart-*.jsonl")),
    }


def _time_bound(trials: list[dict], cfg: RunConfig) -> dict:
    """With ``checkpoint_minutes`` set, a kill loses at most the interval plus one step and one checkpoint write
    (measured: the longest step-to-step gap in the trials, which includes a write)."""
    lost = [t["work_lost_s"] for t in trials if t.get("work_lost_s") is not None]
    out = {"checkpoint_interval_s": round(cfg.checkpoint_minutes * 60, 2),
           "max_work_lost_s": max(lost, default=None), "kills_measured": len(lost)}
    if cfg.checkpoint_minutes and lost:
        out["bound_s"] = round(cfg.checkpoint_minutes * 60 + max(t.get("max_step_gap_s") or 0 for t in trials), 2)
        out["bound_held"] = max(lost) <= out["bound_s"]
    return out


def _goals(trials: list[dict], final: dict, cfg: Optional[RunConfig] = None) -> dict:
    max_epochs_lost = max((t["epochs_lost"] for t in trials), default=0.0)
    goals = {
        "max_epochs_lost_per_kill": max_epochs_lost,
        "total_steps_lost": sum(t["steps_lost"] for t in trials),
        # a checkpoint that exists but does not load is corrupt (its error is recorded)
        "corrupt_files": sum(len(t["checkpoint_errors"]) for t in trials)
        + sum(final[k]["loads"] is False for k in ("last_pt", "best_pt")),
        "duplicated_steps": len(final["duplicated_steps"]),
        "missing_steps": len(final["missing_steps"]),
        "tmp_left_after_resume": sum(len(t["tmp_left_after_resume"]) for t in trials) + len(final["tmp_files_left"]),
        "checkpoint_write_kills": sum(1 for t in trials if t["kind"] == "checkpoint-write"),
    }
    if cfg is not None and cfg.checkpoint_minutes:
        goals["time_bound"] = _time_bound(trials, cfg)
    goals["all_met"] = bool(goals.get("time_bound", {}).get("bound_held", True) and
        max_epochs_lost <= 1.0 and goals["corrupt_files"] == 0 and not final["duplicated_steps"]
        and not final["missing_steps"] and not final["duplicated_epochs"] and not final["missing_epochs"]
        and goals["tmp_left_after_resume"] == 0 and final["state"] == "finished"
        and final["last_pt"]["step"] == final["expected_steps"] and final["in_order"]
    )
    return goals


def run_campaign(workdir: str | os.PathLike, trials: int = 10, seed: int = 0, checkpoint_trials: Optional[int] = None,
                 checkpoint_trial_ids: Optional[list[int]] = None, startup_trials: int = 0,
                 epochs: Optional[int] = None, steps_per_epoch: int = 4, n_tiles: int = 6,
                 timeout: float = 300.0, reference: bool = False, log: Callable[[str], None] = lambda s: None,
                 max_steps_per_kill: Optional[int] = None, **overrides: Any) -> dict:
    """Run the campaign in ``workdir`` (demo AOI + run folder go there); returns the report dict.

    ``checkpoint_trials`` (default max(3, 30 % of trials), at most ``trials``; or the 0-based
    ``checkpoint_trial_ids``) of the trials kill during a checkpoint write (``last.pt``; every other one the
    epoch end's first write, ``best.pt`` when the epoch improved); the others at a random step
    (1 .. 2 epochs - 1 past the resume point) plus a random fraction of a step, except ``startup_trials`` of them
    (never the first) which kill the resumed trainer during its start-up (imports, data, log truncation), at a
    random 10-60 % of the previous resume's launch-to-first-step time. ``reference``: also train the
    config uninterrupted and compare metrics and weights. ``overrides`` go into the RunConfig.
    """
    t_campaign = time.time()
    rng = random.Random(seed)
    srng = random.Random(seed + 1)  # start-up kills draw from their own stream (other trials keep their plan)
    ck_trials, startup_ids = _plan(trials, rng, srng, checkpoint_trials, checkpoint_trial_ids, startup_trials)
    if epochs is None:  # random trials advance ~0.5 epoch on average, checkpoint-write trials never do
        epochs = max(3, math.ceil((trials - len(ck_trials)) * 0.5) + 2)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    aoi = workdir / "aoi"
    if not aoi.exists():
        write_demo_aoi(aoi, n_tiles=n_tiles, seed=seed)
    cfg = tiny_config(aoi, epochs, steps_per_epoch, **overrides)
    run_dir = runs.create_run(cfg, name=f"faults-seed{seed}-{int(time.time())}", root=workdir / "runs")
    log(f"run {run_dir} ({epochs} epochs x {steps_per_epoch} steps), {trials} trials, "
        f"{len(ck_trials)} during last.pt writes")
    live = _Live(run_dir, cfg, steps_per_epoch, epochs * steps_per_epoch, timeout, pid=runs.launch(run_dir),
                 since=time.time() - 1.0, max_steps_per_kill=max_steps_per_kill)
    report_trials: list[dict] = []
    for i in range(trials):
        kind = "checkpoint-write" if i in ck_trials else ("start-up" if i in startup_ids else "random-step")
        info = _kill(live, kind, sum(1 for t in report_trials if t["kind"] == kind), rng, srng)
        trial = _resume_after_kill(live, i + 1, kind, info)
        report_trials.append(trial)
        log(f"trial {i + 1}/{trials} {kind}: killed at step {trial['step_at_kill']}, resumed from "
            f"{trial['resumed_from_step']} (lost {trial['steps_lost']} steps), tmp left {trial['tmp_left_by_kill']} "
            f"-> {trial['tmp_left_after_resume']}")
    final = _final_report(live, epochs)
    goals = _goals(report_trials, final, cfg)
    ref = None
    if reference:
        log("training the same config uninterrupted for comparison")
        ref = compare_with_reference(run_dir, cfg, workdir / "runs", max(timeout, 60.0 * epochs))
    return {
        "reference": ref,
        "benchmark": "faults", "seed": seed, "trials_requested": trials,
        "config": {k: v for k, v in cfg.model_dump(mode="json").items() if k != "data_root"} | {"n_tiles": n_tiles},
        "run_dir": str(run_dir), "trials": report_trials, "final": final, "goals": goals,
        "mean_recovery_s": round(sum(t["recovery_s"] for t in report_trials) / max(1, len(report_trials)), 2),
        "wall_s": round(time.time() - t_campaign, 1),
    }


def compare_with_reference(run_dir: Path, cfg: RunConfig, root: Path, timeout: float) -> dict:
    """Train the same config once more without interruption (detached, like the campaign) and compare: the
    trainer promises the same metrics (time fields aside) and the same weights however often it was killed."""
    ref = runs.create_run(cfg, name=f"{run_dir.name}-reference", root=root)
    runs.launch(ref)
    state = runs.wait_run(ref, timeout=timeout, poll=0.2)

    def strip(rd: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in read_metrics(rd)]

    got, want = strip(run_dir), strip(ref)
    loss_diff = max((abs(float(a.get("loss", 0)) - float(b.get("loss", 0))) for a, b in zip(got, want)),
                    default=None)
    a, b = load_checkpoint(RunDir(run_dir).last)["model"], load_checkpoint(RunDir(ref).last)["model"]
    w_diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a) \
        if a.keys() == b.keys() else None
    return {"reference_state": state, "metrics_identical": got == want, "records": [len(got), len(want)],
            "max_loss_abs_diff": loss_diff, "max_weight_abs_diff": w_diff,
            "weights_identical": w_diff == 0.0}


def markdown_table(report: dict) -> str:
    """The trials as a Markdown table (for docs/robustness.md)."""
    rows = ["| # | kill moment | step (epoch) at kill | resumed from step | steps (epochs) lost | last.pt / best.pt "
            "after kill | temp files left by kill -> after resume | resume to first step (s) |",
            "|---|---|---|---|---|---|---|---|"]

    def ck(c: dict) -> str:
        return "absent" if not c["exists"] else ("loads" if c["loads"] else "CORRUPT")

    for t in report["trials"]:
        moment = t["moment"]
        if t.get("tmp_fraction_at_kill") is not None:
            moment += f" ({t['tmp_fraction_at_kill'] * 100:.0f} % written)"
        elif t["kind"] == "checkpoint-write":
            moment += " (as the temp file appeared)"
        resumed = f"{t['resumed_from_step']}" + (" (restart: no last.pt yet)" if t["restart_from_scratch"] else "")
        tmp = ", ".join(f"`{n}`" for n in t["tmp_left_by_kill"]) or "none"
        after = ", ".join(f"`{n}`" for n in t["tmp_left_after_resume"]) or "none"
        rows.append(f"| {t['trial']} | {moment} | {t['step_at_kill']} ({t['epoch_at_kill']}) | {resumed} | "
                    f"{t['steps_lost']} ({t['epochs_lost']:g}) | {ck(t['last_pt'])} / {ck(t['best_pt'])} | "
                    f"{tmp} -> {after} | {t['recovery_s']:.1f} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-trials", type=int, default=None,
                   help="trials killed during a last.pt write (default max(3, 30%% of trials))")
    p.add_argument("--startup-trials", type=int, default=2,
                   help="trials killed while the resumed trainer starts up (before its first step)")
    p.add_argument("--epochs", type=int, default=None, help="default: enough that the kills never finish the run")
    p.add_argument("--steps-per-epoch", type=int, default=4)
    p.add_argument("--tiles", type=int, default=6)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--max-steps-per-kill", type=int, default=None,
                   help="random-step kills land 1..N steps past the resume point (default 2 epochs - 1)")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="RunConfig.checkpoint_minutes (time-based last.pt inside an epoch); default: the config's")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work folder (run folder, train.log)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON document here")
    p.add_argument("--reference", action="store_true",
                   help="also train uninterrupted and compare metrics/weights with the killed-and-resumed run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the trials as a Markdown table on stderr too")
    a = p.parse_args(argv)
    if a.trials < 1:
        p.error("--trials must be >= 1")
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="bdcore-faults-"))
    os.environ.setdefault("BDCORE_CACHE_DIR", str(workdir / "cache"))  # the trainer inherits it
    os.environ.setdefault("BDCORE_RUNS_DIR", str(workdir / "runs"))
    say = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        report = run_campaign(workdir, trials=a.trials, seed=a.seed, checkpoint_trials=a.checkpoint_trials,
                              epochs=a.epochs, steps_per_epoch=a.steps_per_epoch, n_tiles=a.tiles, log=say,
                              reference=a.reference, startup_trials=a.startup_trials,
                              encoder=a.encoder, max_steps_per_kill=a.max_steps_per_kill, **({} if a.checkpoint_minutes is None else
                                                    {"checkpoint_minutes": a.checkpoint_minutes}))
    finally:
        if a.workdir is None and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if a.json:
        atomic_write_json(a.json, report)
    print(json.dumps(report, indent=2))
    if a.markdown:
        print(markdown_table(report), file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["goals"]["all_met"] else 1)
