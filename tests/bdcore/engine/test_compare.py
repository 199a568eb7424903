"""Comparing runs: the config fields that differ, best/last metrics, legend labels, curves, the 2..8 bound, the CLI.

Run folders are written by code (config.json through ``runs.create_run``, metrics.jsonl through ``MetricsLog``), the
way a trainer leaves them; no training.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bdcore.engine import runs
from bdcore.engine.compare import (
    METRIC_COLUMNS,
    CompareError,
    compare_runs,
    differing_config,
    format_value,
    run_label,
)
from bdcore.engine.rundir import MetricsLog, RunDir, update_status
from bdcore.engine.runs import RunError


def _cfg(**kw) -> dict:
    return {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None, "crop_size": 64, "batch_size": 2,
            "epochs": 3, "steps_per_epoch": 2, "lr": 1e-3, **kw}


def make_run(name: str, epochs: list[dict] | None = None, steps_per_epoch: int = 2, **cfg) -> RunDir:
    """A run folder as a trainer leaves it: per epoch ``steps_per_epoch`` step records then an epoch record with
    the given ``val_*`` values; ``elapsed`` grows 10 s per step."""
    run = RunDir(runs.create_run(_cfg(steps_per_epoch=steps_per_epoch, **cfg), name=name))
    log = MetricsLog(run.metrics, enabled=True)
    step = 0
    for e, vals in enumerate(epochs or [], start=1):
        for k in range(1, steps_per_epoch + 1):
            step += 1
            log.append({"kind": "step", "epoch": e, "step": step, "epoch_step": k, "time": 1000.0 + 10 * step,
                        "elapsed": 10.0 * step, "lr": 1e-3, "loss": 1.0 / step, "img_per_s": 5.0 * e})
        log.append({"kind": "epoch", "epoch": e, "step": step, "time": 1000.0 + 10 * step, "elapsed": 10.0 * step,
                    "loss": 0.5 / e, **vals})
    if epochs:
        update_status(run.path, state="finished", steps_per_epoch=steps_per_epoch)
    return run


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path))
    return tmp_path


def test_differing_config_keeps_only_fields_that_differ():
    a, b = _cfg(lr=1e-3), _cfg(lr=0.0001, batch_size=2)
    assert differing_config([a, b]) == ["lr"]
    assert differing_config([a, _cfg(lr=0.001)]) == []  # 1e-3 and 0.001 are one value
    assert differing_config([a, b, _cfg(lr=1e-3, crop_size=None)]) == ["crop_size", "lr"]  # RunConfig order
    # a field an older config.json lacks counts as its RunConfig default (what loading it gives the trainer)
    older = {k: v for k, v in _cfg(seed=0).items() if k != "seed"}
    assert differing_config([older, _cfg(seed=0)]) == [] and differing_config([older, _cfg(seed=1)]) == ["seed"]
    assert differing_config([{**a, "note": "x"}, a]) == ["note"]  # unknown fields too, after RunConfig's


def test_labels_name_the_differing_settings():
    cfg = _cfg(lr=0.0005, crop_size=None, boundary=True, seed=3)
    assert run_label("run-a", cfg, ["lr"]) == "run-a (lr=0.0005)"
    assert run_label("run-a", cfg, []) == "run-a"
    assert run_label("run-a", cfg, ["crop_size", "lr", "boundary", "seed"]) == \
        "run-a (crop_size=none, lr=0.0005, boundary=true, +1 more)"
    assert format_value(1e-05) == "1e-05" and format_value(None) == "none" and format_value(False) == "false"


def test_table_best_last_and_one_column_per_differing_field(runs_root):
    make_run("run-a", [{"val_iou": 0.2, "val_f1": 0.3}, {"val_iou": 0.5, "val_f1": 0.4},
                       {"val_iou": 0.4, "val_f1": 0.6, "val_building_f1": 0.25}], lr=1e-3)
    make_run("run-b", [{"val_iou": 0.1, "val_f1": 0.2}], lr=1e-2)
    cmp = compare_runs(["run-a", "run-b"])
    assert cmp.differing == ["lr"] and "lr" not in cmp.same and "encoder" in cmp.same
    t = cmp.table.set_index("run")
    assert list(cmp.table.columns) == ["run", "lr", *METRIC_COLUMNS[1:]] and list(t.index) == ["run-a", "run-b"]
    a, b = t.loc["run-a"], t.loc["run-b"]
    assert (a["best val IoU"], a["best epoch"], a["best val F1"]) == (0.5, 2, 0.6)  # F1's best is its own epoch
    assert (a["last val IoU"], a["last val F1"], a["epochs done"]) == (0.4, 0.6, 3)
    assert a["best building F1"] == 0.25 and math.isnan(b["best building F1"])
    assert a["last train loss"] == pytest.approx(1 / 6) and a["wall time (s)"] == 60.0 and a["img/s"] == 15.0
    assert (a["lr"], b["lr"]) == ("0.001", "0.01") and a["state"] == "finished"
    assert [c.label for c in cmp.curves] == ["run-a (lr=0.001)", "run-b (lr=0.01)"]


def test_curves_in_epochs_and_wall_time(runs_root):
    make_run("a", [{"val_iou": 0.2, "val_f1": 0.3}, {"val_iou": 0.5, "val_f1": 0.4}], steps_per_epoch=4)
    make_run("b", [{"val_iou": 0.1}], steps_per_epoch=4, batch_size=4)
    a, b = compare_runs(["a", "b"]).curves
    # step records: epoch_step / steps_per_epoch into the 1-based epoch in progress
    assert a.train["epoch"].tolist() == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert a.train["wall_s"].tolist() == [10.0 * s for s in range(1, 9)]
    assert a.val["epoch"].tolist() == [1.0, 2.0] and a.val["val_iou"].tolist() == [0.2, 0.5]
    assert a.val["wall_s"].tolist() == [40.0, 80.0]
    assert b.val["val_iou"].tolist() == [0.1] and math.isnan(b.val["val_f1"].iloc[0])
    assert a.label == "a (batch_size=2)" and b.label == "b (batch_size=4)"


def test_wall_time_without_elapsed_counts_from_the_first_record(runs_root):
    run = RunDir(runs.create_run(_cfg(), name="old"))
    log = MetricsLog(run.metrics, enabled=True)
    for step, t in ((1, 500.0), (2, 507.5)):
        log.append({"kind": "step", "epoch": 1, "step": step, "time": t, "loss": 0.5})
    make_run("new", [{"val_iou": 0.1}])
    old = compare_runs(["old", "new"]).curves[0]
    assert old.train["wall_s"].tolist() == [0.0, 7.5]
    assert old.train["epoch"].tolist() == [1.0, 1.0]  # no epoch_step in the log: the epoch number as it is


def test_a_run_without_metrics_is_a_row_of_dashes(runs_root):
    make_run("done", [{"val_iou": 0.3, "val_f1": 0.4}])
    make_run("queued")
    cmp = compare_runs(["done", "queued"])
    row = cmp.display_table().set_index("run").loc["queued"]
    assert row["state"] == "queued" and row["epochs done"] == "0"
    for col in ("best val IoU", "best epoch", "last val F1", "last train loss", "wall time", "img/s", "weights"):
        assert row[col] == "-", col
    shown = cmp.display_table().set_index("run").loc["done"]
    assert (shown["best val IoU"], shown["wall time"]) == ("0.300", "0m20s")
    queued = cmp.curves[1]
    assert queued.train.empty and queued.val.empty and queued.label == "queued"  # configs equal: no settings
    assert cmp.differing == []


def test_two_to_eight_distinct_runs(runs_root):
    for i in range(9):
        make_run(f"r{i}")
    with pytest.raises(CompareError, match="2 to 8 different runs, got 1: pick more"):
        compare_runs(["r0"])
    with pytest.raises(CompareError, match="got 1"):
        compare_runs(["r0", "r0", str(runs_root / "r0")])  # the same run by id and by folder
    with pytest.raises(CompareError, match="got 9: pick fewer"):
        compare_runs([f"r{i}" for i in range(9)])
    assert len(compare_runs([f"r{i}" for i in range(8)]).table) == 8
    with pytest.raises(RunError, match=r"no run 'nope' in .*python -m bdcore runs"):
        compare_runs(["r0", "nope"])


def test_torn_metrics_line_is_skipped_and_an_unreadable_config_refused(runs_root):
    a = make_run("a", [{"val_iou": 0.3}])
    make_run("b", [{"val_iou": 0.4}])
    with open(a.metrics, "a") as f:
        f.write('{"kind": "epoch", "epoch": 2, "val_io')  # a trainer killed mid-line
    assert compare_runs(["a", "b"]).table["best val IoU"].tolist() == [0.3, 0.4]
    a.config.write_text("[1, 2]")
    with pytest.raises(CompareError, match=r"a/config.json is unreadable .* restore the file or leave the run out"):
        compare_runs(["a", "b"])
    a.config.write_text("{}")  # an empty config is all defaults
    assert compare_runs(["a", "b"]).differing == ["crop_size", "batch_size", "epochs", "steps_per_epoch", "encoder",
                                                  "encoder_weights"]


def test_cli_compare_prints_the_table_and_writes_csv(runs_root, tmp_path, capsys):
    from bdcore.cli import main

    make_run("run-a", [{"val_iou": 0.25, "val_f1": 0.5}], lr=1e-3)
    make_run("run-b", [], lr=3e-4)
    assert main(["compare", "run-a", "run-b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("run "))
    assert header.split()[:3] == ["run", "lr", "state"]  # the differing field next to the run id
    row_a = next(ln for ln in lines if ln.startswith("run-a"))
    row_b = next(ln for ln in lines if ln.startswith("run-b"))
    assert row_a.split()[:3] == ["run-a", "0.001", "finished"] and "0.250" in row_a and "0.500" in row_a
    assert row_b.split()[:3] == ["run-b", "0.0003", "queued"] and " - " in row_b
    assert len({len(ln) for ln in (header, row_a, row_b)}) == 1  # aligned columns
    out = tmp_path / "out" / "cmp.csv"
    assert main(["compare", "run-a", "run-b", "--csv", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    df = pd.read_csv(out)
    assert df["run"].tolist() == ["run-a", "run-b"] and df["lr"].tolist() == [0.001, 0.0003]
    assert df.loc[0, "best val IoU"] == 0.25 and math.isnan(df.loc[1, "best val IoU"])
    assert out.read_text().splitlines()[1].startswith("run-a,0.001,finished,1,0.25,1,0.5,")  # whole epochs
    assert out.read_text().splitlines()[2].startswith("run-b,0.0003,queued,0,,,")  # no records: empty cells
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_compare_user_errors(runs_root, capsys):
    from bdcore.cli import main

    make_run("run-a")
    assert main(["compare", "run-a", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no run 'nope' in {runs_root}: list runs with `python -m bdcore runs`")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["compare", "run-a", "run-a"]) == 2
    assert "2 to 8 different runs, got 1" in capsys.readouterr().err
