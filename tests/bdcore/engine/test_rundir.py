"""The run folder: its file names, readers that never raise on missing/torn files, and its writers."""

from __future__ import annotations

import json
import time

import pytest

from bdcore.engine import rundir
from bdcore.engine.rundir import (
    MetricsLog, RunDir, StatusWriter, log_tail, read_config, read_launch, read_metrics, read_status, update_status,
)


def test_every_file_name_of_a_run_folder(tmp_path):
    run = RunDir(tmp_path)
    names = {p.name for p in (run.config, run.status, run.metrics, run.log, run.last, run.best, run.launch,
                              run.lock, run.predictions)}
    assert names == {"config.json", "status.json", "metrics.jsonl", "train.log", "last.pt", "best.pt",
                     "launch.json", ".lock", "predictions"}
    assert run.checkpoint("best") == tmp_path / "best.pt" and run.checkpoint("last") == tmp_path / "last.pt"
    with pytest.raises(ValueError, match="best, last"):
        run.checkpoint("final")
    assert run.name == tmp_path.name and str(RunDir(run).path) == str(tmp_path)  # a RunDir is path-like


def test_checkpoints_lists_the_existing_ones_best_first(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoints() == {} and not run.is_run()
    run.last.write_bytes(b"x")
    assert run.checkpoints() == {"last": run.last}
    run.best.write_bytes(b"x")
    assert list(run.checkpoints()) == ["best", "last"]
    run.config.write_text("{}")
    assert run.is_run()


def test_readers_return_empty_for_missing_corrupt_or_torn_files(tmp_path):
    assert read_status(tmp_path) == {} and read_config(tmp_path) == {} and read_launch(tmp_path) == {}
    assert read_metrics(tmp_path) == [] and log_tail(tmp_path) == ""
    (tmp_path / "status.json").write_text("{not json")
    (tmp_path / "config.json").write_text("[1, 2]")  # JSON, but not an object
    assert read_status(tmp_path) == {} and read_config(tmp_path) == {}
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n{"kind": "epoch", "epoch": 0}\n{"kind": "st')
    assert [r["kind"] for r in read_metrics(tmp_path)] == ["step", "epoch"]
    assert read_metrics(tmp_path, kind="epoch") == [{"kind": "epoch", "epoch": 0}]


def test_log_tail_skips_launch_banners(tmp_path):
    (tmp_path / "train.log").write_text("\n=== 2026-01-01 python -m bdcore.engine.train\nstarting\n\nTraceback\nBoom\n")
    assert log_tail(tmp_path) == "Boom"
    assert log_tail(tmp_path, 3) == "starting\nTraceback\nBoom"


def test_update_status_merges_into_the_file(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "step": 7}))
    assert update_status(tmp_path, state="stopped", stopped_by="stop_run")["step"] == 7
    assert read_status(tmp_path) == {"state": "stopped", "step": 7, "stopped_by": "stop_run"}


def test_clean_temp_files_removes_only_what_a_killed_writer_left(tmp_path):
    for name in (".last.pt.abc.tmp", ".status.json.x.tmp", ".metrics.jsonl.y.tmp", ".other.z.tmp", "last.pt"):
        (tmp_path / name).write_text("x")
    RunDir(tmp_path).clean_temp_files()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.z.tmp", "last.pt"]


def test_metrics_aside_keeps_the_old_log(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics_aside() is None
    run.metrics.write_text('{"kind": "step", "step": 1}\n')
    aside = run.metrics_aside()
    assert not run.metrics.exists() and aside.name.startswith("metrics-before-restart-")
    assert aside.read_text() == '{"kind": "step", "step": 1}\n'


def test_metrics_truncate_drops_lines_after_checkpoint_and_torn_lines(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    for s in range(1, 6):
        log.append({"kind": "step", "step": s})
    with open(log.path, "a") as f:
        f.write('{"kind": "step", "st')  # a kill mid-write
    assert log.truncate_after(3) == 3
    assert [r["step"] for r in log.read()] == [1, 2, 3]


def test_status_writer_heartbeat_and_final_state(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    w = StatusWriter(tmp_path / "status.json", True, {"state": "running", "step": 0})
    w.update(write=True)
    first = read_status(tmp_path)["heartbeat"]
    w.start()
    w.update(step=3)  # written by the heartbeat, not here
    deadline = time.monotonic() + 10
    while read_status(tmp_path).get("step") != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_status(tmp_path)["step"] == 3 and read_status(tmp_path)["heartbeat"] > first
    w.finish(state="finished")
    final = read_status(tmp_path)
    time.sleep(0.2)
    assert read_status(tmp_path) == final and final["state"] == "finished"  # no beat after the final state


def test_disabled_writers_write_nothing(tmp_path):
    StatusWriter(tmp_path / "status.json", False, {"state": "running"}).update(write=True)
    MetricsLog(tmp_path / "metrics.jsonl", False).append({"step": 1})
    assert list(tmp_path.iterdir()) == []
