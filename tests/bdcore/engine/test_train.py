"""The training loop: real learning, exact resume, kill -9 / SIGTERM recovery, DDP, and failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import synth
from bdcore.engine.config import RunConfig
from bdcore.engine.models import CheckpointError, load_checkpoint
from bdcore.engine.rundir import TIME_FIELDS, read_metrics
from bdcore.engine.train import main, train
from bdcore.engine.trainer import TrainError, epoch_batches, rng_state, set_rng_state

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tiny_cfg(root: Path, **kw) -> RunConfig:
    base = dict(data_root=str(root), encoder="resnet18", encoder_weights=None, crop_size=32, batch_size=4, epochs=3,
                steps_per_epoch=6, workers=0, log_every=1, device="cpu", lr=2e-3, warmup_epochs=0.5,
                val_fraction=0.34, building_f1_tiles=1)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def tiny_aoi(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-aoi")
    synth.make_aoi(root, n_tiles=6, size=48, buildings_per_tile=3, seed=11)
    return root


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def _wait_for(pred, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"trainer exited ({proc.returncode}) while waiting for {what}:\n{out[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _launch(run_dir: Path, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bdcore.engine.train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _check_complete_log(run_dir: Path, epochs: int, steps: int) -> list[dict]:
    recs = read_metrics(run_dir)
    step_recs = [r["step"] for r in recs if r["kind"] == "step"]
    assert step_recs == list(range(1, epochs * steps + 1))  # every step logged exactly once (log_every=1)
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == list(range(1, epochs + 1))
    for r in recs:
        assert {"kind", "epoch", "step", "time", "elapsed", "lr", "loss", "img_per_s"} <= r.keys()
    return recs


# --------------------------------------------------------------------------- unit pieces
def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    a = epoch_batches(10, 4, 5, seed=0, epoch=3)
    assert a == epoch_batches(10, 4, 5, seed=0, epoch=3)
    assert a != epoch_batches(10, 4, 5, seed=0, epoch=4)
    assert a != epoch_batches(10, 4, 5, seed=1, epoch=3)
    assert len(a) == 5 and all(len(b) == 4 for b in a)
    flat = [i for b in a for i in b]
    assert sorted(flat[:10]) == list(range(10))  # first pass is a permutation; a small set is cycled
    r0 = [i for b in epoch_batches(10, 2, 3, 0, 1, rank=0, world=2) for i in b]
    r1 = [i for b in epoch_batches(10, 2, 3, 0, 1, rank=1, world=2) for i in b]
    assert not set(r0[:5]) & set(r1[:5]) and sorted(r0[:5] + r1[:5]) == list(range(10))


def test_rng_state_round_trip_restores_all_generators():
    import random

    import numpy as np

    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_learns_real_vegas_buildings(vegas_root, tmp_path):
    """Two real SpaceNet 2 Vegas tiles with many buildings: pixel IoU on those tiles > 0.5 after ~1 minute."""
    from bdcore.data import imagery
    from bdcore.data.catalog import load_catalog
    from bdcore.data.augment import Augment
    from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation

    cat = load_catalog(vegas_root)
    ids = ["img1265", "img225"]  # 49 and 46 buildings
    stats = imagery.band_stats(cat, "PS-RGB")
    tr = SpaceNetSegmentation(cat, ids, SampleSpec(crop_size=64, augment=Augment(), seed=0), stats=stats)
    va = SpaceNetSegmentation(cat, ids, SampleSpec(crop_size=None, seed=0, pad_multiple=32), stats=stats)
    cfg = RunConfig(data_root=str(vegas_root), encoder="resnet18", encoder_weights=None, crop_size=64,
                    batch_size=16, epochs=4, steps_per_epoch=20, workers=0, lr=1e-3, warmup_epochs=0.2,
                    device="cpu", log_every=5, eval_every=4, building_f1_tiles=2)
    out = train(cfg, tmp_path / "run", datasets=(tr, va))
    assert out["state"] == "finished"
    last = out["last_epoch"]
    assert last["val_iou"] > 0.5, last
    assert 0.0 <= last["val_building_f1"] <= 1.0


@pytest.mark.slow
def test_learns_demo_aoi_on_held_out_tiles(tmp_path):
    """The synthetic demo AOI through the real dataset pipeline; IoU measured on tiles never trained on."""
    from bdcore.data.demo import write_demo_aoi

    root = write_demo_aoi(tmp_path / "demo", n_tiles=6, seed=0)
    cfg = RunConfig(data_root=str(root), encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=16,
                    epochs=4, steps_per_epoch=20, workers=0, lr=1e-3, warmup_epochs=0.2, val_fraction=0.34,
                    device="cpu", log_every=5, eval_every=4, building_f1_tiles=2)
    out = train(cfg, tmp_path / "run")
    last = out["last_epoch"]
    assert last["val_tiles"] == 2
    assert last["val_iou"] > 0.5, last
    assert (tmp_path / "run" / "best.pt").exists()


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stop_step", [7, 4])  # mid-epoch (epoch 2, batch 3 of 4) and an epoch boundary
def test_resume_is_exact(tiny_aoi, tmp_path, stop_step):
    cfg = _tiny_cfg(tiny_aoi, epochs=3, steps_per_epoch=4)
    straight = train(cfg, tmp_path / "a")
    part = train(cfg, tmp_path / "b", stop_at_step=stop_step)
    assert part["state"] == "stopped" and part["step"] == stop_step
    assert json.loads((tmp_path / "b" / "status.json").read_text())["state"] == "stopped"
    resumed = train(cfg, tmp_path / "b", resume=True)
    assert straight["state"] == resumed["state"] == "finished"
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ra = _strip(read_metrics(tmp_path / "a"))
    rb = _strip(read_metrics(tmp_path / "b"))
    assert ra == rb
    assert len(ra) == 3 * 4 + 3


def test_eval_every_and_weights_only_best_checkpoint(tiny_aoi, tmp_path):
    """eval_every=2 over 5 epochs: validation on epochs 2, 4 and the last; best.pt holds the weights without the
    optimizer/scheduler/RNG state (that is last.pt's) and still predicts and evaluates."""
    import numpy as np

    from bdcore.inference.evaluate import evaluate_checkpoint
    from bdcore.inference.predictor import Predictor

    cfg = _tiny_cfg(tiny_aoi, epochs=5, steps_per_epoch=1, eval_every=2)
    (tmp_path / "r").mkdir()
    cfg.save(tmp_path / "r" / "config.json")  # what a created run folder has (evaluate_checkpoint reads it)
    train(cfg, tmp_path / "r")
    epochs = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs if "val_iou" in r] == [2, 4, 5]
    best, last = load_checkpoint(tmp_path / "r" / "best.pt"), load_checkpoint(tmp_path / "r" / "last.pt")
    assert not {"optimizer", "scheduler", "scaler", "rng"} & best.keys() and best["weights_only"]
    assert {"optimizer", "scheduler", "rng"} <= last.keys()
    assert best["val"]["val_iou"] == max(r["val_iou"] for r in epochs if "val_iou" in r)
    assert best["band_stats"] == last["band_stats"] and best["config"] == last["config"]
    pred = Predictor.from_checkpoint(tmp_path / "r" / "best.pt", device="cpu")
    prob = pred.predict_array(np.full((3, 48, 48), 500, np.uint16))
    assert prob.shape == (1, 48, 48) and np.isfinite(prob).all()
    per_tile, summary = evaluate_checkpoint(tmp_path / "r", "best", device="cpu")
    assert len(per_tile) == 2 and summary["which"] == "best" and per_tile["pixel_iou"].notna().all()


def test_fresh_start_over_a_checkpoint_is_refused(tiny_aoi, tmp_path):
    cfg = _tiny_cfg(tiny_aoi, epochs=1, steps_per_epoch=2)
    train(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "last.pt").read_bytes()
    with pytest.raises(TrainError, match="resume this run"):
        train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "last.pt").read_bytes() == before


def test_resume_with_another_architecture_names_both(tiny_aoi, tmp_path):
    train(_tiny_cfg(tiny_aoi, epochs=1, steps_per_epoch=2), tmp_path / "r")
    other = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=2, arch="FPN")
    with pytest.raises(CheckpointError, match=r"Unet/resnet18/3 bands.*FPN/resnet18/3 bands"):
        train(other, tmp_path / "r", resume=True)
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed" and "FPN" in status["error"]


def test_truncated_last_checkpoint_fails_the_resume_clearly(tiny_aoi, tmp_path):
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=2)
    train(cfg, tmp_path / "r", stop_at_step=2)
    last = tmp_path / "r" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(cfg, tmp_path / "r", resume=True)


def test_empty_data_root_is_a_clear_failure(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = _tiny_cfg(empty)
    with pytest.raises(ValueError, match=str(empty)):
        train(cfg, tmp_path / "r")
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed" and str(empty) in status["error"]
    assert not (tmp_path / "r" / "last.pt").exists()


def test_module_entry_point_reports_bad_config_in_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"encoder": "resnet35"}))
    assert main(["--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err and "unknown encoder 'resnet35'" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "resnet35" in status["error"]


# --------------------------------------------------------------------------- processes and signals
def test_sigkill_mid_epoch_then_resume_finishes(tiny_aoi, tmp_path):
    run = tmp_path / "run"
    cfg = _tiny_cfg(tiny_aoi, epochs=3, steps_per_epoch=10)
    run.mkdir()
    cfg.save(run / "config.json")
    proc = _launch(run)
    try:
        def in_epoch_two():
            return any(r["kind"] == "step" and r["epoch"] == 2 and r["epoch_step"] >= 3
                       for r in read_metrics(run))
        _wait_for(in_epoch_two, 300, proc, "epoch 2 steps")
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "running" and status["pid"] == proc.pid and status["device"] == "cpu"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((run / "status.json").read_text())["state"] == "running"  # nobody left to say otherwise
    ck = load_checkpoint(run / "last.pt", expect=cfg)
    assert (ck["epoch"], ck["epoch_step"], ck["step"]) == (1, 0, 10)
    logged = max(r["step"] for r in read_metrics(run))
    assert logged > 10  # lines the checkpoint does not cover, to be dropped on resume
    proc = _launch(run, resume=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 30
    _check_complete_log(run, 3, 10)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_sigterm_stops_cleanly_and_resume_continues(tiny_aoi, tmp_path):
    run = tmp_path / "run"
    # long enough (~0.1 s a step here) that the 2.6 s heartbeat check below never outlasts the run
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=40)
    run.mkdir()
    cfg.save(run / "config.json")
    proc = _launch(run)
    try:
        _wait_for(lambda: any(r["kind"] == "step" and r["step"] >= 3 for r in read_metrics(run)),
                  300, proc, "three steps")
        hb1 = json.loads((run / "status.json").read_text())["heartbeat"]
        time.sleep(2.6)
        hb2 = json.loads((run / "status.json").read_text())["heartbeat"]
        assert hb2 > hb1  # heartbeat keeps coming while training
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and status["stopped_by"] == "SIGTERM"
    ck = load_checkpoint(run / "last.pt", expect=cfg)
    assert ck["step"] == status["step"] and ck["step"] < 80
    assert max(r["step"] for r in read_metrics(run)) == ck["step"]
    out = train(cfg, run, resume=True)
    assert out["state"] == "finished" and out["step"] == 80
    _check_complete_log(run, 2, 40)


@pytest.mark.slow
def test_ddp_two_gloo_processes_write_one_set_of_files(tiny_aoi, tmp_path):
    run = tmp_path / "run"
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=None, batch_size=2)
    run.mkdir()
    cfg.save(run / "config.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bdcore.engine.train", "--run-dir", str(run)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=_env(), capture_output=True, timeout=500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-4000:]
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "config.json", "last.pt", "metrics.jsonl", "status.json"]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    # 4 train tiles split over 2 ranks, batch 2 per rank -> 1 step per epoch; each step logged once
    recs = read_metrics(run)
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]
    assert recs[-1]["val_tiles"] == 2  # both val tiles counted once across the ranks (all-reduced)
    ck = load_checkpoint(run / "last.pt", expect=cfg)
    assert ck["step"] == 2 and not any(k.startswith("module.") for k in ck["model"])


def _torchrun(run: Path, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bdcore.engine.train", "--run-dir", str(run)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigterm_to_torchrun_with_loader_workers_stops_and_resumes_exactly(tiny_aoi, tmp_path):
    """torchrun stops its ranks with killpg: the DataLoader workers get the SIGTERM too. They ignore it, so the
    ranks finish the step, save last.pt and end ``stopped``; the resumed run equals one never stopped."""
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=6, batch_size=2, workers=1)
    straight, run = tmp_path / "straight", tmp_path / "run"
    for d in (straight, run):
        d.mkdir()
        cfg.save(d / "config.json")
    proc = _torchrun(run)
    try:
        _wait_for(lambda: any(r["kind"] == "step" and r["step"] >= 5 for r in read_metrics(run)), 300, proc,
                  "five steps")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and status["stopped_by"] == "SIGTERM", out.decode()[-3000:]
    ck = load_checkpoint(run / "last.pt", expect=cfg)
    assert 5 <= ck["step"] < 12 and ck["step"] == status["step"]
    for d, resume in ((run, True), (straight, False)):
        proc = _torchrun(d, resume)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert b["step"] == 12 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _strip(read_metrics(straight)) == _strip(read_metrics(run))
