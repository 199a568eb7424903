"""Exported models: model.onnx + model.json from a run's checkpoint, run with onnxruntime through the Predictor's own
windows and blending: the same probabilities as the checkpoint (within 1e-4) on the real Vegas tiles in tests/data."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from bdcore.data.imagery import read_image
from bdcore.engine.rundir import RunDir
from bdcore.engine.weights import sha256_file
from bdcore.inference import modelfile
from bdcore.inference.normalization import Normalization
from bdcore.inference.predictor import Predictor

VEGAS_STATS = {"lo": [133.0, 283.0, 251.0], "hi": [938.0, 1118.0, 741.0]}  # the real sample's band statistics


def _tile(vegas_small: Path, name: str) -> Path:
    return vegas_small / "PS-RGB" / f"RGB-PanSharpen_AOI_2_Vegas_{name}.tif"


def _decisive_unet(image: np.ndarray) -> torch.nn.Module:
    """A random-init U-Net/resnet18 with a building + boundary head, its head shifted and scaled so that on ``image``
    ~30 % of pixels are "buildings" with sharp edges (hundreds of blobs, few probabilities near 0.5): outputs that
    are neither constant nor fragile at the threshold."""
    from bdcore.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 3, 2, None).eval()
    norm = Normalization(np.array(VEGAS_STATS["lo"]), np.array(VEGAS_STATS["hi"]), "checkpoint")
    with torch.no_grad():
        logit = model(torch.from_numpy(norm.apply(image[:, :640, :640]))[None])[0]
        head = model.segmentation_head[0]
        head.bias -= logit.flatten(1).quantile(0.7, dim=1)
        head.weight *= 10
        head.bias *= 10
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory, vegas_small) -> Path:
    """A run folder (data: the two Vegas tiles) whose best.pt is the decisive 2-class U-Net, with band stats."""
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from bdcore.engine.models import save_checkpoint

    cfg = RunConfig(data_root=str(vegas_small), encoder="resnet18", encoder_weights=None, boundary=True,
                    crop_size=64, device="cpu", threshold=0.4)
    run_dir = runs.create_run(cfg, name="onnx", root=tmp_path_factory.mktemp("onnxruns"))
    model = _decisive_unet(read_image(_tile(vegas_small, "img1265")))
    save_checkpoint(RunDir(run_dir).best, {
        "config": cfg.model_dump(mode="json"), "arch": "Unet", "encoder": "resnet18", "in_channels": 3,
        "classes": 2, "model": model.state_dict(), "epoch": 3, "step": 12, "band_stats": VEGAS_STATS})
    return run_dir


@pytest.fixture(scope="module")
def exported(run) -> modelfile.Exported:
    return modelfile.export_run(run, "best")


def test_export_writes_the_model_and_its_sidecar(run, exported):
    assert exported.onnx == run / "export" / "best" / "model.onnx" and exported.sidecar.name == "model.json"
    assert sorted(p.name for p in exported.onnx.parent.iterdir()) == ["model.json", "model.onnx"]  # no temp files
    meta = json.loads(exported.sidecar.read_text())
    assert meta == exported.meta
    assert (meta["format"], meta["format_version"], meta["product"], meta["bands"]) == \
        ("bdcore-onnx-model", 1, "PS-RGB", 3)
    assert meta["band_stats"]["lo"] == VEGAS_STATS["lo"] and meta["band_stats"]["hi"] == VEGAS_STATS["hi"]
    assert meta["band_stats"]["source"] == "checkpoint"
    assert (meta["threshold"], meta["input_multiple"], meta["classes"]) == (0.4, 32, ["building", "boundary"])
    assert (meta["arch"], meta["encoder"], meta["opset"]) == ("Unet", "resnet18", 17)
    assert meta["checkpoint"] == {"file": "onnx/best.pt", "sha256": sha256_file(run / "best.pt"), "epoch": 3,
                                  "step": 12}
    assert meta["onnx_sha256"] == hashlib.sha256(exported.onnx.read_bytes()).hexdigest()
    assert meta["verified"]["max_abs_diff"] < 1e-4
    import bdcore
    assert meta["bdcore_version"] == bdcore.__version__

    import onnx  # the graph itself: opset 17, batch/height/width dynamic, bands and classes fixed

    graph = onnx.load(exported.onnx)
    assert graph.opset_import[0].version == 17
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert dims(graph.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(graph.graph.output[0]) == ["batch", 2, "height", "width"]


def test_export_is_reused_only_for_the_same_checkpoint(run, exported, tmp_path):
    again = modelfile.export_run(run, "best", reuse=True)
    assert again.reused and again.meta == exported.meta
    zf = zipfile.ZipFile(io.BytesIO(modelfile.bundle_zip(again)))
    assert zf.namelist() == ["model.onnx", "model.json"]
    assert zf.read("model.onnx") == exported.onnx.read_bytes()
    # an export of another checkpoint (its sidecar names another sha256) in the folder: exported again
    other = dict(exported.meta, checkpoint={**exported.meta["checkpoint"], "sha256": "0" * 64})
    (tmp_path / "model.onnx").write_bytes(exported.onnx.read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(other))
    fresh = modelfile.export_run(run, "best", out_dir=tmp_path, reuse=True)
    assert not fresh.reused and fresh.meta["checkpoint"]["sha256"] == exported.meta["checkpoint"]["sha256"]
    assert json.loads((tmp_path / "model.json").read_text()) == fresh.meta
    # the same checkpoint exports to the same bytes (two concurrent exports of it cannot leave a mismatched pair)
    assert fresh.meta["onnx_sha256"] == exported.meta["onnx_sha256"]


def test_onnx_probabilities_equal_the_checkpoints_on_the_vegas_tiles(run, exported, vegas_small):
    torch_p = Predictor.from_checkpoint(run / "best.pt", device="cpu")
    onnx_p = modelfile.load_predictor(exported.onnx, device="auto")
    assert onnx_p.runtime == "onnxruntime on CPUExecutionProvider" and torch_p.runtime == "torch on cpu"
    assert (onnx_p.in_channels, onnx_p.product, onnx_p.stride) == (3, "PS-RGB", 32)
    np.testing.assert_array_equal(onnx_p.normalization.lo, torch_p.normalization.lo)
    # the whole 650 px tile in 4 blended 384 px windows (padded to 384 and to 288 at the edges)
    image = read_image(_tile(vegas_small, "img1265"))
    want = torch_p.predict_array(image, window=384, overlap=64)
    got = onnx_p.predict_array(image, window=384, overlap=64)
    assert got.shape == want.shape == (2, 650, 650)
    assert np.abs(got - want).max() < 1e-4
    assert want[0].std() > 0.1 and 0.1 < (want[0] > 0.5).mean() < 0.6  # not trivially constant
    # the 128 px tile with flip TTA (the flips are the Predictor's, around the onnx call)
    image = read_image(_tile(vegas_small, "img246"))
    want, got = (p.predict_array(image, tta=True) for p in (torch_p, onnx_p))
    assert np.abs(got - want).max() < 1e-4 and want.std() > 0


def test_cli_export_then_predict_model_gives_the_checkpoints_buildings(run, vegas_small, tmp_path, capsys):
    from bdcore.cli import main

    out = tmp_path / "exp"
    assert main(["export", str(run), "--which", "best", "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'model.onnx'}" in printed and "onnxruntime matches torch within" in printed
    tile = _tile(vegas_small, "img1265")
    results = {}
    for flag, model in (("--checkpoint", run / "best.pt"), ("--model", out / "model.onnx")):
        dest = tmp_path / flag.strip("-")
        assert main(["predict", flag, str(model), "--input", str(tile), "--out", str(dest), "--device", "cpu"]) == 0
        results[flag] = capsys.readouterr().out, dest
    assert "(onnxruntime on CPUExecutionProvider)" in results["--model"][0]
    assert "(torch on cpu)" in results["--checkpoint"][0]
    count = {f: len(json.loads(next(d.glob("*.geojson")).read_text())["features"]) for f, (_, d) in results.items()}
    assert count["--model"] == count["--checkpoint"] > 50
    probs = {}
    for f, (_, d) in results.items():
        with rasterio.open(next(d.glob("*_prob.tif"))) as src:
            probs[f] = src.read().astype(int)
    assert np.abs(probs["--model"] - probs["--checkpoint"]).max() <= 1  # uint8 probabilities: at most one level


def test_onnx_providers(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert modelfile.providers("auto") == modelfile.providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(modelfile.ModelFileError, match="no CUDAExecutionProvider .*onnxruntime-gpu"):
        modelfile.providers("cuda")
    with pytest.raises(modelfile.ModelFileError, match="'mps' is not available to onnxruntime"):
        modelfile.providers("mps")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert modelfile.providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_model_without_band_statistics_stretches_each_image(exported, vegas_small, tmp_path):
    """A checkpoint with no band statistics (none stored, training data absent) exports ``lo``/``hi`` null: the
    exported model then normalises per image (2-98 % stretch), like the checkpoint would."""
    stats = modelfile._band_stats(Normalization())  # what export_onnx writes for such a checkpoint
    assert stats == {"source": "percentile", "lo": None, "hi": None, "p_lo": 2.0, "p_hi": 98.0}
    meta = dict(exported.meta, band_stats=stats)
    (tmp_path / "model.onnx").write_bytes(exported.onnx.read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(meta))
    pred = modelfile.onnx_predictor(tmp_path / "model.onnx", device="cpu")
    assert pred.normalization.source == "percentile" and pred.normalization.lo is None
    image = read_image(_tile(vegas_small, "img246"))
    prob = pred.predict_array(image)
    assert prob.shape == (2, 128, 128) and np.isfinite(prob).all()
