"""Fault campaign, CI size: a real detached training run is ``kill -9``-ed three times (once while ``last.pt``
is being overwritten), resumed each time with ``runs.resume_run``, and must still finish with an exact log.

The full campaign (10 trials, JSON report) is ``python bench/faults.py``; this imports the same function.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from bdcore.engine.models import load_checkpoint
from bdcore.engine.rundir import read_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _faults_module():
    spec = importlib.util.spec_from_file_location("bench_faults", PROJECT_ROOT / "bench" / "faults.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_faults", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_kill_9_campaign_loses_at_most_one_epoch_and_nothing_else(tmp_path):
    faults = _faults_module()
    # seed 0: trial 1 kills in epoch 2 (so last.pt exists), trial 2 kills while last.pt of epoch 2 is being
    # written over the epoch-1 one, trial 3 at a random step; 3 epochs x 4 steps in all
    report = faults.run_campaign(tmp_path, trials=3, seed=0, checkpoint_trial_ids=[1], steps_per_epoch=4)
    trials, final, goals = report["trials"], report["final"], report["goals"]
    assert [t["kind"] for t in trials] == ["random-step", "checkpoint-write", "random-step"]

    # the campaign really exercised what it claims to
    ck_trial = trials[1]
    assert ck_trial["moment"] == "during last.pt write"
    assert any(name.startswith(".last.pt.") for name in ck_trial["tmp_left_by_kill"]), ck_trial
    assert ck_trial["last_pt"]["exists"], "the checkpoint-write kill should hit an overwrite of an existing last.pt"
    assert any(t["resumed_from_step"] > 0 and not t["restart_from_scratch"] for t in trials)

    for t in trials:
        assert t["state_after_kill"] == "interrupted"
        # at most one epoch of work lost, and the resume starts exactly at the checkpoint
        assert 0 <= t["steps_lost"] <= 4 and t["epochs_lost"] <= 1.0, t
        assert t["first_resumed_step"] == t["resumed_from_step"] + 1, t
        # nothing half-written: whatever checkpoint exists loads, and the kill's temp files are gone after resume
        for ck in (t["last_pt"], t["best_pt"]):
            assert ck["loads"] is (True if ck["exists"] else None), t
        assert t["tmp_left_after_resume"] == [] and t["checkpoint_errors"] == [], t
    # the overwritten last.pt survived the kill intact: still the previous epoch's
    assert ck_trial["last_pt"]["step"] == ck_trial["resumed_from_step"] == ck_trial["step_at_kill"] - 4

    assert final["state"] == "finished" and final["status_state"] == "finished"
    assert final["duplicated_steps"] == [] and final["missing_steps"] == [] and final["in_order"]
    assert final["duplicated_epochs"] == [] and final["missing_epochs"] == []
    assert final["steps_logged"] == final["expected_steps"] == 12
    assert final["tmp_files_left"] == []
    assert goals["all_met"] and goals["corrupt_files"] == 0 and goals["max_epochs_lost_per_kill"] <= 1.0

    # cross-check the report against the files themselves
    run_dir = Path(report["run_dir"])
    assert [r["step"] for r in read_metrics(run_dir, "step")] == list(range(1, 13))
    assert [r["epoch"] for r in read_metrics(run_dir, "epoch")] == [1, 2, 3]
    assert load_checkpoint(run_dir / "last.pt")["step"] == 12
    assert not list(run_dir.glob(".*.tmp"))


def test_checkpoint_state_reports_a_truncated_checkpoint_as_corrupt(tmp_path):
    """The campaign's corruption probe must be able to fail: a half-written last.pt is reported, not hidden."""
    import torch

    from bdcore.engine.config import RunConfig
    from bdcore.engine.models import save_checkpoint

    faults = _faults_module()
    cfg = RunConfig(encoder="resnet18", encoder_weights=None)
    good = tmp_path / "last.pt"
    save_checkpoint(good, {"model": {"w": torch.zeros(1000)}, "arch": cfg.arch, "encoder": cfg.encoder,
                           "in_channels": cfg.in_channels, "classes": cfg.classes, "step": 8, "epoch": 2})
    assert faults.checkpoint_state(good, cfg) == {"exists": True, "loads": True, "step": 8, "epoch": 2,
                                                  "error": None}
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    state = faults.checkpoint_state(cut, cfg)
    assert state["exists"] and state["loads"] is False and "cut.pt" in state["error"]
    assert faults.checkpoint_state(tmp_path / "absent.pt", cfg)["exists"] is False
