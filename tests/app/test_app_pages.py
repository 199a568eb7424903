"""Page logic with Streamlit's AppTest (no browser): each page runs without exceptions and shows what it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180


def page(name: str, data_root: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)
    if data_root is not None:
        at.session_state["data_root"] = data_root
    return at


@pytest.fixture
def empty_runs(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(d))
    return d


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def test_app_opens_on_demo_and_remembers_choice(vegas_small):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.demo import demo_root
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert texts(at, "title")[0] == "Explore"
    cat = load_catalog(demo_root())
    assert f"{len(cat)} tiles" in texts(at, "caption")[0] and "Demo AOI" in texts(at, "caption")[0]
    # the choice lives in the session (the sidebar form itself is driven in test_browser.py) ...
    at.session_state["data_root"] = str(vegas_small)
    at.run()
    assert not at.exception
    assert "2 tiles, 49 buildings" in texts(at, "caption")[0]
    assert at.query_params["data"] == str(vegas_small)  # in this browser's URL: a reload keeps it
    # ... another visitor's fresh session is not affected (it starts on the demo) ...
    at2 = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert "Demo AOI" in texts(at2, "caption")[0]
    # ... and a session opened on this browser's URL (a reload, a bookmark) starts on the folder
    at3 = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at3.query_params["data"] = str(vegas_small)
    assert "2 tiles, 49 buildings" in texts(at3.run(), "caption")[0]


def test_explore_real_vegas_tiles(vegas_small):
    from bdcore.data.catalog import load_catalog

    cat = load_catalog(vegas_small)
    at = page("pages/explore.py", str(vegas_small)).run()
    assert not at.exception and not at.error
    assert "2 tiles, 49 buildings" in texts(at, "caption")[0]
    tid = max(cat.index, key=lambda t: cat.loc[t, "n_buildings"])
    at.selectbox(key="explore_tile").set_value(tid).run()
    assert not at.exception
    md = " ".join(texts(at, "markdown"))
    assert f"**{tid}**" in md and f"**{int(cat.loc[tid, 'n_buildings'])} buildings**" in md
    assert "650 × 650 px" in md
    # split colouring and an empty-label tile do not break the page
    at.radio(key="explore_color").set_value("train/val split").run()
    assert not at.exception and not at.error
    empty = [t for t in cat.index if cat.loc[t, "n_buildings"] == 0]
    at.selectbox(key="explore_tile").set_value(empty[0]).run()
    assert not at.exception and not at.error and "**0 buildings**" in " ".join(texts(at, "markdown"))


def test_app_does_not_force_the_hub_offline(monkeypatch, empty_runs):
    """Runs started from the app inherit its environment: the app must not set HF_HUB_OFFLINE (a GPU box with
    internet must download ImageNet weights; offline is decided by a bounded probe instead)."""
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    at = page("app.py", "demo").run()
    assert not at.exception
    assert "HF_HUB_OFFLINE" not in os.environ


def test_explore_split_is_the_split_a_run_with_those_settings_trains_on():
    """One owner of the split: the val tiles Explore lists are the val dataset of a run with the same settings."""
    from bdcore.data.dataset import build_datasets
    from bdcore.engine.config import RunConfig

    at = page("pages/explore.py", "demo").run()
    at.radio(key="explore_color").set_value("train/val split").run()
    at.selectbox(key="explore_split").set_value("blocked").run()
    at.number_input(key="explore_val").set_value(0.25).run()
    at.number_input(key="explore_seed").set_value(3).run()
    assert not at.exception and not at.error
    shown = next(c.value for c in at.code if c.value.startswith("val: "))
    listed = shown.removeprefix("val: ").split(", ")
    cfg = RunConfig(data_root="demo", split="blocked", val_fraction=0.25, seed=3, encoder="resnet18",
                    encoder_weights=None)
    _, val_ds = build_datasets(cfg)
    assert listed == sorted(val_ds.tile_ids) and len(listed) >= 3
    at.number_input(key="explore_seed").set_value(4).run()  # another seed, another split: the list follows
    assert next(c.value for c in at.code if c.value.startswith("val: ")) != shown


def test_explore_every_building_toggle(monkeypatch):
    """The toggle draws every building of the AOI (count said on the page); above the budget, a density grid."""
    from bdcore.data.catalog import load_catalog, summary
    from bdcore.data.demo import demo_root
    from bdcore.viz import maps

    n = summary(load_catalog(demo_root()))["buildings"]
    at = page("pages/explore.py", "demo").run()
    assert not any("drawn as outlines" in t for t in texts(at, "caption"))
    at.toggle(key="explore_every").set_value(True).run()
    assert not at.exception and not at.error
    assert f"{n:,} buildings drawn as outlines." in texts(at, "caption")
    monkeypatch.setattr(maps, "MAX_DRAWN_BUILDINGS", n - 1)
    at.run()
    assert not at.exception and not at.error
    assert any(t.startswith(f"{n:,} buildings: more than the map draws quickly ({n - 1:,}), so they are drawn as a "
                            "density grid") for t in texts(at, "info"))


def test_explore_missing_folder_is_a_readable_error(tmp_path):
    at = page("pages/explore.py", str(tmp_path / "nope")).run()
    assert not at.exception
    assert any("does not exist" in e for e in texts(at, "error"))
    at = page("pages/explore.py", str(tmp_path)).run()  # a folder with no tiles
    assert not at.exception
    assert any("Could not load the dataset" in e for e in texts(at, "error"))


def test_train_page_device_and_bad_config(empty_runs):
    import torch

    from bdcore.engine.config import ENCODER_CHOICES

    at = page("pages/train.py", "demo").run()
    assert not at.exception
    assert at.selectbox(key="f_encoder").options == list(ENCODER_CHOICES)  # the one list, each builds
    assert at.selectbox(key="f_encoder").value == "resnet34"
    if not torch.cuda.is_available():
        assert any("CPU" in w for w in texts(at, "warning"))
    assert any("No runs yet" in i for i in texts(at, "info"))
    # Offline (HF_HUB_OFFLINE=1 in tests) with nothing cached: the default ImageNet weights cannot be had.
    assert any("would start from random init" in w and "weights pull resnet34" in w for w in texts(at, "warning"))
    at.selectbox(key="f_weights").set_value("none").run()
    assert not any("random init" in w for w in texts(at, "warning"))
    at.text_input(key="f_name").input("../escape")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert any("invalid run name" in e for e in texts(at, "error"))
    if not torch.cuda.is_available():
        at.text_input(key="f_name").input("")
        at.selectbox(key="f_device").set_value("cuda")
        at.button[0].click().run()
        assert any("no GPU" in e for e in texts(at, "error"))
    assert not empty_runs.exists() or not any(empty_runs.iterdir())


def test_train_page_offers_gpus_on_a_multi_gpu_machine(empty_runs, monkeypatch):
    """With more than one GPU the form has a GPUs field; 2 makes a torchrun launch of 2 processes."""
    from bdcore.engine import queue, runs

    monkeypatch.setattr(queue, "gpu_count", lambda: 4)
    launched: list[list[str]] = []

    def fake_launch(run_dir, resume=False, module=None):
        launched.append(runs.trainer_command(run_dir, resume, module))
        return 12345

    monkeypatch.setattr(runs, "launch", fake_launch)
    at = page("pages/train.py", "demo").run()
    assert not at.exception
    at.selectbox(key="f_weights").set_value("none").run()
    at.number_input(key="f_gpus").set_value(2)
    at.text_input(key="f_name").input("two-gpus")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert json.loads((empty_runs / "two-gpus" / "config.json").read_text())["gpus"] == 2
    assert launched and "--nproc_per_node=2" in launched[0] and "torch.distributed.run" in launched[0]


def test_train_page_lists_and_deletes_run(empty_runs):
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    run_dir = runs.create_run(RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64), name="r1")
    at = page("pages/train.py", "demo").run()
    assert not at.exception
    df = at.dataframe[0].value
    assert df["run"].tolist() == ["r1"] and df["state"].tolist() == ["queued"]
    assert df["img/s"].tolist() == ["—"] and df["weights"].tolist() == ["—"]  # not yet known: a dash, never None
    assert at.button(key="btn_delete").disabled  # a queued run cannot be deleted (it is about to start)
    (run_dir / "status.json").write_text(json.dumps({"state": "stopped", "epoch": 0, "step": 0}))
    at.run()
    at.button(key="btn_delete").click().run()
    assert any("cannot be undone" in w for w in texts(at, "warning"))
    assert run_dir.exists()  # nothing deleted before confirming
    at.button(key="btn_delete_yes").click().run()
    assert not at.exception
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["pages/review.py", "pages/predict.py"])
def test_pages_without_checkpoints_explain_what_to_do(empty_runs, name):
    at = page(name, "demo").run()
    assert not at.exception
    assert any("No checkpoints yet" in i for i in texts(at, "info"))


def test_compare_page_overlays_picked_runs_and_lists_differing_fields(empty_runs):
    import time

    from bdcore.engine import runs
    from bdcore.engine.rundir import MetricsLog, RunDir

    def make(name, lr, iou):
        run = RunDir(runs.create_run({"encoder": "resnet18", "epochs": 2, "lr": lr}, name=name))
        log = MetricsLog(run.metrics, enabled=True)
        log.append({"kind": "step", "epoch": 1, "step": 1, "epoch_step": 1, "elapsed": 3.0, "loss": 0.9})
        log.append({"kind": "epoch", "epoch": 1, "step": 1, "elapsed": 4.0, "loss": 0.9, "val_iou": iou, "val_f1": 0.5})
        time.sleep(0.02)  # list_runs orders by config.json's mtime, newest first

    at = page("pages/compare.py", "demo").run()
    assert not at.exception and any("at least 2 runs (0 so far)" in i for i in texts(at, "info"))
    make("old", 1e-2, 0.1)
    make("mid", 1e-3, 0.2)
    make("new", 3e-4, 0.3)
    at = page("pages/compare.py", "demo").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="compare_runs").value == ["new", "mid"]  # the two most recent
    df = at.dataframe[0].value
    assert df["run"].tolist() == ["new", "mid"] and df["lr"].tolist() == ["0.0003", "0.001"]
    assert df["best val IoU"].tolist() == ["0.300", "0.200"] and "encoder" not in df.columns
    assert "Config fields that differ: **lr**" in texts(at, "caption")[0]
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in chart["data"]]
    assert names == ["new (lr=0.0003)"] * 3 + ["mid (lr=0.001)"] * 3  # three panels, one trace per run each
    assert chart["data"][0]["x"] == [1.0]
    at.radio(key="compare_x").set_value("wall_s").run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["x"] == [3.0]
    at.multiselect(key="compare_runs").select("old").run()
    assert at.dataframe[0].value["run"].tolist() == ["new", "mid", "old"] and not at.exception
    at.multiselect(key="compare_runs").set_value(["old"]).run()
    assert any("Pick at least 2 runs" in i for i in texts(at, "info")) and not at.exception
    assert not at.get("plotly_chart")

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (1 epoch, 2 steps) run on the demo AOI, trained in-process."""
    import os

    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from bdcore.engine.train import train

    root = tmp_path_factory.mktemp("tinyruns")
    cfg = RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=2, epochs=1, steps_per_epoch=2,
                    workers=0, device="cpu", log_every=1, building_f1_tiles=0)
    run_dir = runs.create_run(cfg, name="tiny", root=root)
    train(cfg, run_dir)
    os.environ  # noqa: B018
    return run_dir


@pytest.mark.slow
def test_review_and_predict_with_a_checkpoint(tiny_run, monkeypatch):
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tiny_run.parent))
    at = page("pages/review.py", "demo").run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert labels[:3] == ["Val tiles", "Pixel IoU", "SpaceNet F1"]
    assert "Encoder weights of this run: random init (no pretrained weights asked for)" in texts(at, "caption")
    df = at.dataframe[0].value
    assert len(df) == int(at.metric[0].value) > 0
    assert df["f1"].is_monotonic_increasing  # worst first
    assert texts(at, "subheader")[0].startswith(str(df["tile_id"].iloc[0]))
    at.slider(key="review_threshold").set_value(0.9).run()
    assert not at.exception and not at.error
    at.selectbox(key="review_outline").set_value("none").run()
    assert not at.exception and not at.error
    assert {k[-1] for k in at.session_state["review_scores"]} == {"orthogonal", "none"}  # scored once per outline
    for i in range(len(df)):  # every val tile: the TP/FP/FN picture counts what the score row says
        at.session_state["review_table"] = {"selection": {"rows": [i], "columns": [], "cells": []}}
        at.run()
        assert not at.exception and not at.error
        row = at.dataframe[0].value.iloc[i]
        assert texts(at, "subheader")[0].startswith(f"{row['tile_id']} ")
        assert at.get("image")[3].captions[0] == f"TP green · FP red · FN blue ({row['tp']} · {row['fp']} · {row['fn']})"

    at = page("pages/predict.py", "demo").run()
    at.radio(key="predict_source").set_value("Catalog tile").run()
    at.button(key="predict_go").click().run()
    assert not at.exception and not at.error
    assert any("buildings found" in s for s in texts(at, "success"))
    res = at.session_state["predict_result"]
    gj = json.loads(Path(res["geojson"]).read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == res["n_buildings"]


def test_explore_real_paris_tiles_are_unlabelled(paris_imagery):
    at = page("pages/explore.py", str(paris_imagery)).run()
    assert not at.exception and not at.error
    assert "2 tiles, 0 labelled (2 unlabelled: no labels file), 0 buildings" in texts(at, "caption")[0]
    assert any("2 of 2 tiles are **unlabelled**" in i for i in texts(at, "info"))
    md = " ".join(texts(at, "markdown"))
    assert "**unlabelled** (no labels file)" in md and "0 buildings**" not in md
    at.radio(key="explore_color").set_value("train/val split").run()
    assert not at.exception and not at.error
    assert any("No labelled tile to split" in i for i in texts(at, "info"))


def test_predict_page_warns_on_imagery_unlike_the_training_data(empty_runs, tmp_path):
    import numpy as np

    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from synth import write_geotiff, write_tiny_checkpoint

    run_dir = runs.create_run(RunConfig(encoder="resnet18", encoder_weights=None), name="u16")
    write_tiny_checkpoint(run_dir / "best.pt")  # uint16-like training statistics
    rng = np.random.default_rng(5)
    write_geotiff(tmp_path / "aoi" / "RGB-PanSharpen_AOI_3_Paris_img1.tif",
                  rng.integers(0, 256, (3, 96, 96)).astype(np.uint8))  # an 8-bit export, unlabelled
    at = page("pages/predict.py", str(tmp_path / "aoi")).run()
    at.radio(key="predict_source").set_value("Catalog tile").run()
    at.selectbox(key="predict_device").set_value("cpu")
    at.button(key="predict_go").click().run()
    assert not at.exception and not at.error
    warnings = texts(at, "warning")
    assert len(warnings) == 1 and warnings[0].startswith(
        "RGB-PanSharpen_AOI_3_Paris_img1.tif: looks unlike the training data (uint8, max 255;")
    assert warnings[0].endswith('try Normalisation "Per-image 2–98 % stretch"')
    assert any("buildings found" in s for s in texts(at, "success"))
    at.radio(key="predict_normalize").set_value("image").run()
    at.button(key="predict_go").click().run()
    assert not at.exception and not at.error and texts(at, "warning") == []
    assert at.session_state["predict_result"]["normalization"] == "percentile"
    assert at.selectbox(key="predict_outline").value == "orthogonal"  # the default: the best F1 measured
    assert at.session_state["predict_result"]["outline"] == "orthogonal"
    at.selectbox(key="predict_outline").set_value("none").run()
    at.button(key="predict_go").click().run()
    assert not at.exception and not at.error and at.session_state["predict_result"]["outline"] == "none"


def test_review_exports_onnx_and_offers_the_pair(vegas_small, tmp_path, monkeypatch):
    """Export ONNX on Review: model.onnx + model.json written once per checkpoint, offered as one zip download."""
    from synth import write_tiny_checkpoint

    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    cfg = RunConfig(data_root=str(vegas_small), encoder="resnet18", encoder_weights=None, crop_size=64)
    run_dir = runs.create_run(cfg, name="exp", root=tmp_path / "runs")
    write_tiny_checkpoint(run_dir / "best.pt")
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path / "runs"))
    at = page("pages/review.py", str(vegas_small)).run()
    assert not at.exception and not at.error
    assert not at.get("download_button")  # nothing to download before the export
    at.button(key="review_export").click().run()
    assert not at.exception and not at.error
    onnx_path = run_dir / "export" / "best" / "model.onnx"
    assert onnx_path.is_file() and (run_dir / "export" / "best" / "model.json").is_file()
    assert any(f"Exported to {onnx_path.parent}" in c for c in texts(at, "caption"))
    [download] = at.get("download_button")
    assert download.proto.label == "Download model.onnx + model.json (zip)"
    mtime = onnx_path.stat().st_mtime_ns
    at.button(key="review_export").click().run()  # the same checkpoint: not exported again
    assert not at.exception and onnx_path.stat().st_mtime_ns == mtime and len(at.get("download_button")) == 1


def _map_script(at: AppTest, i: int = -1) -> str:
    """The Leaflet script of the page's ``i``-th st_folium map (what its iframe runs)."""
    return json.loads(at.get("component_instance")[i].proto.json_args)["script"]


def test_review_and_predict_maps_show_the_image_under_the_building_layers(vegas_small, tmp_path, monkeypatch):
    """Review: the selected tile's map has the stretched image (PNG overlay), a truth and a prediction layer with one
    feature per building of the score row, and a layer control; Predict: the image overview under the predictions."""
    from synth import write_tiny_checkpoint

    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    cfg = RunConfig(data_root=str(vegas_small), encoder="resnet18", encoder_weights=None, crop_size=64)
    run_dir = runs.create_run(cfg, name="maps", root=tmp_path / "runs")
    write_tiny_checkpoint(run_dir / "best.pt")
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path / "runs"))
    at = page("pages/review.py", str(vegas_small)).run()
    assert not at.exception and not at.error
    row = at.dataframe[0].value.iloc[0]
    script = _map_script(at)
    assert script.count("L.imageOverlay(") == 1 and "data:image/png;base64," in script
    assert "L.control.layers" in script and '"ground truth"' in script and '"predictions"' in script
    assert script.count('"status": "FN"') == row["fn"] and script.count('"status": "FP"') == row["fp"]
    assert script.count('"status": "TP"') == 2 * row["tp"]  # a matched pair: in both layers

    at = page("pages/predict.py", str(vegas_small)).run()
    at.radio(key="predict_source").set_value("Catalog tile").run()
    at.selectbox(key="predict_device").set_value("cpu")
    at.button(key="predict_go").click().run()
    assert not at.exception and not at.error
    res = at.session_state["predict_result"]
    script = _map_script(at)
    assert script.count("L.imageOverlay(") == 1 and '"predictions"' in script
    assert script.count('"status": "predicted"') == res["n_buildings"]
    assert res["overview"].shape[:2] == (res["height"], res["width"])  # a small tile: under 2048 px, read whole
