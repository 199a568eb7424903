"""bench/accuracy.py without training: config overrides, the JSON sidecar keeping earlier rows, the rendered table."""

from __future__ import annotations

import json

import pytest

from bench import accuracy


def _row(**kw):
    row = {"date": "2026-01-02T03:04:05+00:00", "command": "python -m bench.accuracy ...",
           "config": "configs/paris-psrgb-unet-r34.yaml", "overrides": {"epochs": "2", "data_root": "demo"},
           "run_id": "r1", "data_root": "demo", "aoi": "demo (synthetic, AOI_3_Paris)", "split": "blocked",
           "tiles": {"labelled": 24, "train": 10, "val": 5, "buffer": 9}, "model": {"arch": "Unet"},
           "init": "random (encoder_weights none)", "pixel_iou": 0.4181, "building_f1": 0.3017,
           "epochs_done": 2, "steps": 16, "wall_s": 185.0, "eval_s": 6.0, "train_device": "cpu",
           "load_avg_start": [1.0, 1.0, 1.0], "load_avg_end": [1.5, 1.0, 1.0],
           "hardware": {"summary": "CPU: Test CPU, 2 cores, no GPU", "torch": "2.x", "cores": 2}}
    row.update(kw)
    return row


def test_config_overrides_follow_the_train_cli(tmp_path):
    cfg = accuracy.config_from_args(accuracy.ROOT / "configs" / "paris-psrgb-unet-r34.yaml",
                                    {"crop_size": "None", "boundary": "false", "encoder_weights": "none",
                                     "epochs": "3", "data_root": "demo"})
    assert (cfg.crop_size, cfg.boundary, cfg.encoder_weights, cfg.epochs, cfg.data_root) == (None, False, None, 3,
                                                                                          "demo")
    assert cfg.split == "blocked" and cfg.product == "PS-RGB"  # the rest comes from the file
    with pytest.raises(ValueError, match="crop_size"):
        accuracy.config_from_args(None, {"crop_size": "100"})


def test_rows_accumulate_and_render(tmp_path):
    out = tmp_path / "accuracy.md"
    accuracy.write_report([_row()], out)
    rows = accuracy.load_rows(out.with_suffix(".json"))
    accuracy.write_report(rows + [_row(run_id="r2", pixel_iou=0.5, train_device="NVIDIA H100 80GB HBM3",
                                       data_root="~/data/spacenet/AOI_3_Paris_Train", overrides={},
                                       tiles={"labelled": 1148, "train": 827, "val": 233, "buffer": 88})], out)
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["run_id"] for r in data["rows"]] == ["r1", "r2"]
    md = out.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| 2026-01-02")]
    assert len(table) == 2
    assert "**41.8 %**" in table[0] and "**30.2 %**" in table[0] and "3.1 min" in table[0]
    assert "smoke check" in table[0] and "epochs=2" in table[0] and "data_root" not in table[0]
    assert "smoke check" not in table[1] and "827/233" in table[1]
    # the PS-RGB recipe now has a GPU row on its own data; the PS-MS one is still owed
    pending = md.split("Not measured yet", 1)[1].split("```", 2)[1]
    assert "paris-psms-unet-r34.yaml" in pending and "paris-psrgb-unet-r34.yaml" not in pending
