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
from bdcore.engine.device import DistInfo
from bdcore.engine.trainer import TrainError, epoch_batches, rank_rng_state, rng_state, set_rng_state

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


def test_each_rank_resumes_its_own_rng_state_and_another_world_size_reseeds(caplog):
    torch.manual_seed(1)
    r0 = rng_state()
    torch.manual_seed(2)
    r1 = rng_state()
    assert rank_rng_state([r0, r1], DistInfo(1, 2, 1), 0, 0, 3) is r1
    assert rank_rng_state([r0, r1], DistInfo(0, 2, 0), 0, 0, 3) is r0
    assert rank_rng_state(r0, DistInfo(), 0, 0, 3) is r0  # a checkpoint from before per-rank states
    before = torch.get_rng_state()
    with caplog.at_level("INFO", logger="bdcore.engine.trainer"):
        a = rank_rng_state([r0, r1], DistInfo(0, 4, 0), 0, 0, 3)
        b = rank_rng_state([r0, r1], DistInfo(1, 4, 1), 0, 0, 3)
    assert torch.equal(torch.get_rng_state(), before)  # the global generators are left as they were
    assert not torch.equal(a["torch"], b["torch"]) and not torch.equal(a["torch"], r0["torch"])
    assert torch.equal(a["torch"], rank_rng_state([r0], DistInfo(0, 4, 0), 0, 0, 3)["torch"])  # deterministic
    assert len([r for r in caplog.records if "RNG states of 2 rank(s), this run has 4" in r.getMessage()]) == 1


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


def test_epochs_shorter_than_log_every_still_log_their_loss(tiny_aoi, tmp_path):
    """A short run (3 steps per epoch, log_every 10) logs a step record at each epoch's end, so the Train page's
    training-loss curve has points; the record averages the steps since the previous one."""
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=3, log_every=10)
    train(cfg, tmp_path / "r")
    recs = read_metrics(tmp_path / "r")
    steps = [r for r in recs if r["kind"] == "step"]
    assert [(r["epoch"], r["step"]) for r in steps] == [(1, 3), (2, 6)]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    for st, ep in zip(steps, epochs):  # nothing logged before within the epoch: the window is the whole epoch
        assert st["loss"] == pytest.approx(ep["loss"], rel=1e-6)


def test_checkpoint_minutes_bounds_the_loss_inside_a_long_epoch(tiny_aoi, tmp_path, monkeypatch):
    """One long epoch, a crash (no save) at step 6: the time-based last.pt (checkpoint_minutes, here ~every step)
    holds step 5, and the resume finishes exactly like an uninterrupted run."""
    from bdcore.engine.trainer import Trainer

    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=8, checkpoint_minutes=1e-6)
    straight = train(cfg, tmp_path / "a")
    step = Trainer._step

    def crashing_step(self, batch):
        if self.state.step == 5:
            raise RuntimeError("simulated crash (power cut)")
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "b")
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (ck["epoch"], ck["epoch_step"], ck["step"]) == (0, 5, 5)  # mid-epoch: nothing before step 5 lost
    monkeypatch.setattr(Trainer, "_step", step)
    resumed = train(cfg, tmp_path / "b", resume=True)
    assert straight["state"] == resumed["state"] == "finished"
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _strip(read_metrics(tmp_path / "a")) == _strip(read_metrics(tmp_path / "b"))


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
def test_ddp_two_gloo_processes_write_one_set_of_files(tiny_aoi, tmp_path, monkeypatch):
    """``gpus: 2`` through the app's launcher (runs.start_run): torchrun --standalone with 2 processes (gloo on
    CPU), one set of files, every step once."""
    from bdcore.engine import runs

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BDCORE_MAX_RUNS", "2")  # the queue counts the run as 2 slots
    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=None, batch_size=2, gpus=2)
    res = runs.start_run(cfg, name="run", root=tmp_path)
    assert res.pid is not None
    run = res.run_dir
    assert "torch.distributed.run" in json.loads((run / "launch.json").read_text())["cmd"]
    assert runs.wait_run(run, timeout=500) == "finished", (run / "train.log").read_text()[-4000:]
    names = sorted(p.name for p in run.iterdir() if p.suffix in (".pt", ".json", ".jsonl"))
    assert names == ["best.pt", "config.json", "last.pt", "launch.json", "metrics.jsonl", "status.json"]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    # 4 train tiles split over 2 ranks, batch 2 per rank -> 1 step per epoch; each step logged once
    recs = read_metrics(run)
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]
    assert recs[-1]["val_tiles"] == 2  # both val tiles counted once across the ranks (all-reduced)
    ck = load_checkpoint(run / "last.pt", expect=cfg)
    assert ck["step"] == 2 and not any(k.startswith("module.") for k in ck["model"])


_DDP_PHASES = """
import sys
import torch.distributed as dist
from bdcore.engine import train as T
from bdcore.engine.config import RunConfig
T.teardown_distributed = lambda info: None  # one process group for the three trainings (saves two start-ups)
cfg = RunConfig.load(sys.argv[1])
for run_dir, resume, stop in (("a", False, None), ("b", False, 2), ("b", True, None)):
    out = T.train(cfg, sys.argv[2] + "/" + run_dir, resume=resume, stop_at_step=stop)
    assert out["state"] == ("stopped" if stop else "finished"), out
    dist.barrier()  # rank 0 has written last.pt before any rank resumes from it
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_mid_epoch_resume_with_dropout_equals_the_uninterrupted_run(tiny_aoi, tmp_path):
    """Two gloo ranks, FPN (Dropout2d in its decoder: each rank draws its own dropout stream), stopped at step 2 of
    3 and resumed: weights and logs equal a straight run, because each rank gets its own RNG state back."""
    cfg = _tiny_cfg(tiny_aoi, arch="FPN", epochs=2, steps_per_epoch=3, batch_size=2, eval_every=2)
    cfg.save(tmp_path / "config.json")
    (tmp_path / "phases.py").write_text(_DDP_PHASES)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "phases.py"), str(tmp_path / "config.json"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=_env(), capture_output=True, timeout=500, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-4000:]
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 6 and len(a["rng"]) == 2
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # the ranks' streams differ
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _strip(read_metrics(tmp_path / "a")) == _strip(read_metrics(tmp_path / "b"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a CPU-written last.pt resumed on the GPU")
def test_cpu_checkpoint_resumes_on_cuda_with_channels_last_and_amp(tiny_aoi, tmp_path):
    """Issue 14 items 3 and 4 on a real GPU: the fused AdamW step takes the CPU-written (contiguous) moments once
    they have the channels_last parameters' layout, and the autocast dtype / loss scaling is the device's."""
    from bdcore.engine.device import autocast_dtype

    cfg = _tiny_cfg(tiny_aoi, epochs=2, steps_per_epoch=3, batch_size=2)
    assert train(cfg, tmp_path, stop_at_step=2)["state"] == "stopped"
    gpu = cfg.model_copy(update={"device": "cuda", "amp": True})
    out = train(gpu, tmp_path, resume=True)
    assert out["state"] == "finished" and out["step"] == 6
    ck = load_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    fp16 = autocast_dtype(torch.device("cuda")) == torch.float16
    assert bool(ck["scaler"]) == fp16  # loss scaling exactly where bf16 is not native
    assert json.loads((tmp_path / "status.json").read_text())["device"] == torch.cuda.get_device_name(0)


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
