"""Windowed GeoTIFF inference: georeferencing, seamless blending, vector outputs, band checks, bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.warp import transform_bounds
from shapely.geometry import box, shape

from bdcore.inference import predictor as P
from bdcore.inference.predict import predict_geotiff, predict_tiles
from bdcore.inference.normalization import Normalization, PredictError
from bdcore.inference.predictor import Predictor
from synth import write_geotiff

UTM = "EPSG:32611"  # Vegas UTM zone: outputs must come back reprojected to EPSG:4326
UTM_T = Affine(0.3, 0.0, 660000.0, 0.0, -0.3, 4000000.0)
NORM = Normalization(np.zeros(3), np.full(3, 2000.0), "test")


class Constant(torch.nn.Module):
    """Logits of a fixed probability everywhere."""

    def __init__(self, p: float, k: int = 1):
        super().__init__()
        self.logit, self.k = float(np.log(p / (1 - p))), k

    def forward(self, x):
        return torch.full((x.shape[0], self.k, x.shape[2], x.shape[3]), self.logit)


class Identity(torch.nn.Module):
    """Probability = the normalised first band, so the output must reproduce the input pixel for pixel."""

    def forward(self, x):
        return torch.logit(x[:, :1].clamp(1e-6, 1 - 1e-6))


class WindowPosition(torch.nn.Module):
    """Depends on where a pixel sits in its window, so overlapping windows disagree and the blending shows."""

    def forward(self, x):
        return x[:, :1] * 2 - 1 + torch.linspace(-2, 2, x.shape[3]).view(1, 1, 1, -1)


def _predictor(model, **kw) -> Predictor:
    return Predictor(model, in_channels=3, normalization=NORM, device="cpu", product="PS-RGB", **kw)


class _StaysOnCpu(torch.nn.Module):
    """Records the autocast in force during forward; ``.to(device)`` keeps it on the CPU (no GPU here)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[bool, torch.dtype]] = []

    def to(self, *args, **kwargs):
        return self

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
        return x[:, :1]


def test_predictor_uses_trainings_autocast_dtype_fp16_on_emulated_bf16_gpu(pre_ampere_cuda):
    model = _StaysOnCpu()
    pred = Predictor(model, in_channels=3, normalization=NORM, device="cuda")
    pred._forward(torch.rand(1, 3, 32, 32))
    assert model.seen == [(True, torch.float16)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """2,000 × 1,500 UTM image: noisy ground ~ 200, bright buildings ~ 1,800, some straddling window/chunk edges."""
    rng = np.random.default_rng(0)
    h, w = 1500, 2000
    img = rng.normal(200, 20, size=(3, h, w))
    boxes = [(100, 100, 160, 140), (490, 380, 560, 430), (1000, 700, 1060, 760), (1010, 1200, 1050, 1300),
             (1900, 1400, 1990, 1490), (1500, 20, 1540, 60)]  # (col0, row0, col1, row1)
    for c0, r0, c1, r1 in boxes:
        img[:, r0:r1, c0:c1] = 1800
    img = np.clip(img, 0, 2000).astype(np.uint16)
    path = write_geotiff(tmp_path_factory.mktemp("scene") / "RGB-PanSharpen_AOI_2_Vegas_img42.tif", img, crs=UTM,
                         transform=UTM_T)
    return path, img, boxes


def test_window_starts_cover_and_weights_positive():
    assert P.window_starts(1500, 512, 128) == [0, 384, 768, 988]
    assert P.window_starts(300, 512, 128) == [0]
    for size in (513, 1024, 1500, 2000, 4001):
        s = P.window_starts(size, 512, 128)
        assert s[0] == 0 and s[-1] == size - 512 and all(b - a <= 384 for a, b in zip(s, s[1:]))
        assert P.window_count(size, 512, 128) == len(s)
    w = P.ramp_weights(512, 128)
    assert w.min() > 0 and w[200] == 1.0 and w[0] < 0.01 and np.allclose(w, w[::-1])


def test_constant_model_gives_constant_map_on_input_grid(scene, tmp_path):
    path, _, _ = scene
    res = predict_geotiff(_predictor(Constant(0.7)), path, tmp_path, window=512, overlap=128, prob_dtype="float32",
                          polygons=False)
    with rasterio.open(path) as src, rasterio.open(res["prob"]) as p, rasterio.open(res["mask"]) as m:
        assert (p.crs, p.transform, p.width, p.height) == (src.crs, src.transform, 2000, 1500)
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
        prob = p.read(1)
        assert np.abs(prob - 0.7).max() < 1e-5  # no seams: blending weights sum out exactly
        assert m.read(1).min() == 1
    assert res["windows"] == 4 * 5


def test_identity_model_returns_input_exactly_with_and_without_tta(scene, tmp_path):
    path, img, _ = scene
    expected = np.clip(img[0] / 2000.0, 1e-6, 1 - 1e-6)
    for tta in (False, True):
        res = predict_geotiff(_predictor(Identity()), path, tmp_path / str(tta), window=512, overlap=128, tta=tta,
                              prob_dtype="float32", polygons=False)
        with rasterio.open(res["prob"]) as p:
            assert np.abs(p.read(1) - expected).max() < 1e-4
    # uint8 output: same up to quantisation
    res = predict_geotiff(_predictor(Identity()), path, tmp_path / "u8", window=512, overlap=64, polygons=False)
    with rasterio.open(res["prob"]) as p:
        assert p.dtypes[0] == "uint8"
        assert np.abs(p.read(1) / 255.0 - expected).max() <= 0.5 / 255 + 1e-6


def test_array_and_geotiff_go_through_one_blending(scene, tmp_path):
    """predict_array (evaluation, in memory) and predict_geotiff (strip writer) give bit-identical probabilities."""
    path, img, _ = scene
    pred = _predictor(WindowPosition(), batch_size=3)
    res = predict_geotiff(pred, path, tmp_path, window=512, overlap=128, prob_dtype="float32", polygons=False)
    with rasterio.open(res["prob"]) as p:
        written = p.read(1)
    in_memory = pred.predict_array(img, window=512, overlap=128)
    assert in_memory.shape == (1, 1500, 2000) and np.array_equal(written, in_memory[0])
    one_window = pred.predict_array(img[:, :200, :300], window=512, overlap=128)
    assert 0.0 < float(np.abs(one_window[0] - written[:200, :300]).max())  # the blend did something: windows differ


def test_column_bands_blend_exactly_like_one_pass(scene, tmp_path, monkeypatch):
    """An image wider than a column band is predicted band by band (memory bounded in width) with the same result,
    bit for bit, as in one pass: windows straddling a band edge are predicted for both bands and cropped."""
    import functools

    from bdcore.inference import predict as predict_mod

    path, img, _ = scene
    pred = _predictor(WindowPosition(), batch_size=3)
    one_pass = pred.predict_array(img, window=512, overlap=128)
    plan = P.WindowPlan(1500, 2000, 512, 128, strip_width=512)
    assert [(x0, x1) for x0, x1, _ in plan.bands()] == [(0, 512), (512, 1024), (1024, 1536), (1536, 2000)]
    assert plan.n_windows == 4 * (2 + 2 + 3 + 2) > len(plan.rows) * len(plan.cols) == 4 * 5  # straddlers twice
    widths: list[int] = []
    banded = np.zeros_like(one_pass)

    def sink(top, left, block):
        widths.append(block.shape[2])
        banded[:, top : top + block.shape[1], left : left + block.shape[2]] = block

    pred.predict_windows(P.ArraySource(img), NORM, plan, sink)
    assert max(widths) == 512 and np.array_equal(banded, one_pass)
    monkeypatch.setattr(predict_mod, "WindowPlan", functools.partial(P.WindowPlan, strip_width=512))
    res = predict_geotiff(pred, path, tmp_path, window=512, overlap=128, prob_dtype="float32", polygons=False)
    with rasterio.open(res["prob"]) as p:
        assert np.array_equal(p.read(1), one_pass[0])  # the writer puts each band's blocks in their place


def _small_scene(tmp_path):
    img = np.full((3, 300, 700), 1800, np.uint16)
    return write_geotiff(tmp_path / "in" / "small.tif", img, crs=UTM, transform=UTM_T)


def _fail_on_call(n: int, exc: BaseException):
    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] >= n:
            raise exc
    return check


@pytest.mark.parametrize("stage", ["windows-error", "windows-ctrl-c", "should-stop", "polygons-ctrl-c"])
def test_interrupted_prediction_leaves_no_tmp_and_keeps_earlier_outputs(stage, tmp_path, monkeypatch):
    """An error, Ctrl-C or a cancel in the middle of the windows or of the polygon stage: no ``*.tmp*`` file is
    left, no new output appears, and the outputs of an earlier complete run are untouched."""
    from bdcore.inference import predict as predict_mod

    path, out = _small_scene(tmp_path), tmp_path / "out"
    pred = _predictor(Constant(0.7), batch_size=1)
    first = predict_geotiff(pred, path, out, window=256, overlap=32)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["small_buildings.geojson", "small_mask.tif", "small_prob.tif", "small_spacenet.csv"]
    seen_tmp: list[str] = []
    kw = {}
    # 2 window rows × 3 columns, one window per batch: the outputs are opened at the first flush, after window 3
    if stage == "should-stop":
        calls: list[int] = []

        def stop() -> bool:
            seen_tmp.extend(p.name for p in out.glob(".*.tmp"))
            calls.append(1)
            return len(calls) >= 5
        kw["should_stop"] = stop
        expected = P.PredictionCancelled
    elif stage.startswith("windows"):
        expected = RuntimeError if stage == "windows-error" else KeyboardInterrupt
        real = pred.predict_batch
        fail = _fail_on_call(5, expected("window 5 failed"))

        def batch(b, tta=False):
            seen_tmp.extend(p.name for p in out.glob(".*.tmp"))
            fail()
            return real(b, tta)
        monkeypatch.setattr(pred, "predict_batch", batch)
    else:
        expected = KeyboardInterrupt

        def vectors(polys, transform, crs, image_id, geojson_path, csv_path):
            seen_tmp.extend(p.name for p in out.glob(".*.tmp"))
            geojson_path.write_text("{}")  # half the vector outputs written, then Ctrl-C
            raise KeyboardInterrupt
        monkeypatch.setattr(predict_mod, "write_vectors", vectors)
    with pytest.raises(expected):
        predict_geotiff(pred, path, out, window=256, overlap=32, **kw)
    assert ".small_prob.tif.tmp" in seen_tmp  # it was interrupted mid-way, temporary files present
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no *.tmp left, earlier outputs unchanged
    assert first["windows"] == 2 * 3


def test_pixel_budget_is_checked_from_the_header_before_the_model_loads(tmp_path):
    """A small sparse file declaring 40,000 × 30,000 px is refused (before the checkpoint is even opened: it does not
    exist); ``max_pixels`` moves the budget, and the refusal names the value to pass."""
    from bdcore.data.imagery import MAX_PIXELS, PixelBudgetError

    big = tmp_path / "big.tif"
    with rasterio.open(big, "w", driver="GTiff", width=40_000, height=30_000, count=3, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, crs=UTM, transform=UTM_T):
        pass
    assert big.stat().st_size < 200_000
    with pytest.raises(PixelBudgetError) as err:
        predict_geotiff(tmp_path / "missing.pt", big, tmp_path / "out", window=1024, overlap=128)
    e = err.value
    assert (e.pixels, e.max_pixels, e.bands) == (1_200_000_000, MAX_PIXELS, 3) and e.windows == 34 * 45
    assert str(e) == (f"{big}: 40,000 × 30,000 px × 3 band(s) (1.2 gigapixels) is over the budget of 1.0 gigapixels "
                      "(width × height); pass --max-pixels 1200000000 to predict it anyway (it needs ~1,530 windows)")
    assert not (tmp_path / "out").exists()
    small = write_geotiff(tmp_path / "s.tif", np.full((3, 64, 64), 900, np.uint16), crs=UTM, transform=UTM_T)
    with pytest.raises(PixelBudgetError, match="4,096 px.*budget of 4,095 px.*--max-pixels 4096"):
        predict_geotiff(_predictor(Constant(0.7)), small, tmp_path / "out", max_pixels=4095)
    assert predict_geotiff(_predictor(Constant(0.7)), small, tmp_path / "out", max_pixels=4096)["n_buildings"] == 1


def test_vector_outputs_geojson_and_csv(scene, tmp_path):
    from bdcore.metrics.scoring import read_spacenet_csv

    path, _, boxes = scene
    res = predict_geotiff(_predictor(Identity()), path, tmp_path, window=512, overlap=128, threshold=0.5)
    gj = json.loads(res["geojson"].read_text())
    feats = gj["features"]
    assert len(feats) == len(boxes) == res["n_buildings"]  # a building across a chunk edge is reported once
    with rasterio.open(path) as src:
        left, bottom, right, top = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    frame = box(left, bottom, right, top)
    for f in feats:
        g = shape(f["geometry"])
        assert -116 < g.centroid.x < -114 and 35 < g.centroid.y < 37  # lon/lat (EPSG:4326), not UTM metres
        assert frame.contains(g)
        assert 0.5 < f["properties"]["confidence"] <= 1.0
    df = read_spacenet_csv(res["csv"])
    assert list(df["ImageId"].unique()) == ["AOI_2_Vegas_img42"]
    assert len(df) == len(boxes)
    got = sorted((round(g.bounds[0]), round(g.bounds[1]), round(g.bounds[2]), round(g.bounds[3])) for g in df.geometry)
    assert got == sorted(boxes)  # pixel coordinates (col, row), pixel-edge exact


def test_no_buildings_writes_empty_outputs(scene, tmp_path):
    from bdcore.metrics.scoring import read_spacenet_csv

    path, _, _ = scene
    res = predict_geotiff(_predictor(Constant(0.1)), path, tmp_path, window=1024, overlap=128)
    assert res["n_buildings"] == 0
    assert json.loads(res["geojson"].read_text())["features"] == []
    df = read_spacenet_csv(res["csv"])
    assert len(df) == 1 and df.iloc[0]["BuildingId"] == -1


def test_wrong_band_count_is_a_clear_error(tmp_path):
    pan = write_geotiff(tmp_path / "pan.tif", np.ones((1, 64, 64), np.uint16))
    with pytest.raises(PredictError, match=r"model expects 3 bands \(PS-RGB\), file has 1"):
        predict_geotiff(_predictor(Constant(0.5)), pan, tmp_path / "out")
    assert not (tmp_path / "out" / "pan_prob.tif").exists()
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    with pytest.raises(PredictError, match="not a readable raster"):
        predict_geotiff(_predictor(Constant(0.5)), junk, tmp_path / "out")


def test_real_checkpoint_via_cli_on_odd_sized_image(tmp_path, capsys):
    """A real smp U-Net checkpoint through ``python -m bdcore predict``: sizes not multiple of 32 are padded."""
    from bdcore.engine import models
    from bdcore.cli import main
    from bdcore.engine.config import RunConfig

    cfg = RunConfig(arch="Unet", encoder="resnet18", encoder_weights=None, data_root="/nonexistent")
    model = models.build_model("Unet", "resnet18", 3, 1, encoder_weights=None)
    ck = tmp_path / "best.pt"
    models.save_checkpoint(ck, {"config": cfg.model_dump(mode="json"), "arch": "Unet", "encoder": "resnet18",
                                "in_channels": 3, "classes": 1, "model": model.state_dict(),
                                "stats": {"lo": [100, 100, 100], "hi": [1500, 1500, 1500]}})
    img = write_geotiff(tmp_path / "small.tif", np.random.default_rng(1).integers(0, 2000, (3, 203, 301)).astype(np.uint16),
                        crs=UTM, transform=UTM_T)
    assert main(["predict", "--checkpoint", str(ck), "--input", str(img), "--out", str(tmp_path / "o"),
                 "--window", "256", "--overlap", "32", "--tta"]) == 0
    out = capsys.readouterr().out
    assert "small_prob.tif" in out and "buildings" in out
    with rasterio.open(tmp_path / "o" / "small_prob.tif") as p:
        assert p.shape == (203, 301) and p.crs == UTM
    pred = Predictor.from_checkpoint(ck, device="cpu")
    assert pred.normalization.source == "checkpoint" and list(pred.normalization.hi) == [1500, 1500, 1500]
    pan = write_geotiff(tmp_path / "pan.tif", np.ones((1, 40, 40), np.uint16))
    assert main(["predict", "--checkpoint", str(ck), "--input", str(pan)]) == 2
    assert "model expects 3 bands (PS-RGB), file has 1" in capsys.readouterr().err


def test_predict_tiles_over_a_catalog(tmp_path):
    from bdcore.data.catalog import load_catalog
    from synth import make_aoi

    aoi = make_aoi(tmp_path / "aoi", n_tiles=2, size=64)
    cat = load_catalog(aoi.root)
    res = predict_tiles(_predictor(Identity()), cat, None, tmp_path / "out")
    assert sorted(r["tile_id"] for r in res) == sorted(aoi.tile_ids)
    for r in res:
        assert r["image_id"] == aoi.tile(r["tile_id"]).image_id and r["prob"].exists()


def _write_big(path, n: int) -> None:
    """An n×n 3-band uint16 GeoTIFF written in strips (never in memory at once)."""
    prof = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint16", crs=UTM, transform=UTM_T, tiled=True,
                blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **prof) as dst:
        for r in range(0, n, 256):
            h = min(256, n - r)
            dst.write(np.full((3, h, n), 900, np.uint16), window=rasterio.windows.Window(0, r, n, h))


@pytest.mark.slow
def test_memory_bounded_by_window_not_image(tmp_path):
    n = 4000
    big = tmp_path / "big.tif"
    _write_big(big, n)
    full_float = n * n * 4  # ONE float32 band of the whole image: 64 MB (the 3-band float image is 192 MB)
    import geopandas  # noqa: F401  (first-import allocations are not per-image memory)
    import bdcore.metrics.polygons, bdcore.metrics.scoring  # noqa: F401,E401

    tracemalloc.start()
    try:
        res = predict_geotiff(_predictor(Constant(0.7)), big, tmp_path / "out", window=512, overlap=64,
                              batch_size=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * full_float, f"peak {peak / 1e6:.1f} MB for a {full_float / 1e6:.0f} MB image band"
    with rasterio.open(res["prob"]) as p:
        assert p.shape == (n, n)
        assert int(p.read(1, window=rasterio.windows.Window(1990, 1990, 20, 20)).min()) == round(0.7 * 255)


def test_inference_normalisation_is_bit_identical_to_training():
    """Prediction feeds the model exactly the values training fed it (one shared normalisation)."""
    from bdcore.data.imagery import BandStats, normalize

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 2048, size=(3, 97, 131), dtype=np.uint16)
    stats = BandStats(product="PS-RGB", lo=[161.0, 203.5, 97.25], hi=[1399.0, 1511.75, 1203.0])
    norm = Normalization(np.asarray(stats.lo, np.float64), np.asarray(stats.hi, np.float64), "checkpoint")
    expected = normalize(arr, stats)
    got = norm.apply(arr)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert expected.min() == 0.0 and expected.max() == 1.0  # both clip ends exercised


# ------------------------------------------------------------------------------------------- unlike the training data


@pytest.fixture(scope="module")
def uint16_checkpoint(tmp_path_factory):
    """A random-init resnet18 U-Net carrying uint16-like training statistics (the real Vegas sample's, ~130-1,100)."""
    from synth import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck16") / "best.pt")


def _u8_scene(tmp_path):
    """A 3-band uint8 0-255 GeoTIFF (an 8-bit export), made in code."""
    rng = np.random.default_rng(3)
    img = rng.normal(90, 25, (3, 160, 192))
    img[:, 40:90, 50:120] = 230
    return write_geotiff(tmp_path / "scene.tif", np.clip(img, 0, 255).astype(np.uint8), crs=UTM, transform=UTM_T)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("bdcore")]


def test_uint8_input_against_uint16_checkpoint_warns_once_and_image_normalisation_fixes_it(
        uint16_checkpoint, tmp_path, caplog):
    scene = _u8_scene(tmp_path)
    pred = Predictor.from_checkpoint(uint16_checkpoint, device="cpu")
    assert pred.normalization.source == "checkpoint"
    caplog.set_level("INFO")
    res = predict_geotiff(pred, scene, tmp_path / "ck", prob_dtype="float32", polygons=False)
    msg = res["warning"]
    assert msg and msg == res["input_check"].message() and not res["input_check"].ok
    assert msg.startswith("scene.tif: looks unlike the training data (uint8, max 255; 2–98 % range ")
    assert "vs training 133–1,118 per band" in msg and "--normalize image" in msg
    assert _warnings(caplog) == [msg]  # exactly ONE line
    assert res["normalization"] == "checkpoint"

    caplog.clear()
    res_img = predict_geotiff(pred, scene, tmp_path / "img", prob_dtype="float32", polygons=False, normalize="image")
    assert res_img["warning"] is None and res_img["input_check"] is None and _warnings(caplog) == []
    assert res_img["normalization"] == "percentile"
    with rasterio.open(res["prob"]) as a, rasterio.open(res_img["prob"]) as b:
        pa, pb = a.read(1), b.read(1)
    assert np.abs(pa - pb).max() > 1e-3  # the model saw different inputs

    with pytest.raises(PredictError, match="normalize must be one of checkpoint, image, got 'dataset'"):
        predict_geotiff(pred, scene, tmp_path / "bad", normalize="dataset")


def test_checkpoint_is_read_once(uint16_checkpoint, monkeypatch):
    reads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    pred = Predictor.from_checkpoint(uint16_checkpoint, device="cpu")
    assert reads == [uint16_checkpoint] and pred.normalization.source == "checkpoint"


def test_channels_last_predictor_keeps_the_model_in_that_layout(uint16_checkpoint):
    """channels_last (the CUDA default; asked for here on CPU): weights converted once, same probabilities."""
    plain = Predictor.from_checkpoint(uint16_checkpoint, device="cpu")
    nhwc = Predictor.from_checkpoint(uint16_checkpoint, device="cpu", channels_last=True)
    assert not plain.channels_last and nhwc.channels_last
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1
    image = np.random.default_rng(0).integers(100, 1200, (3, 70, 90)).astype(np.uint16)
    np.testing.assert_allclose(nhwc.predict_array(image), plain.predict_array(image), atol=1e-5)


def test_in_range_uint16_input_does_not_warn(uint16_checkpoint, tmp_path, caplog):
    rng = np.random.default_rng(4)
    lo, hi = (133, 283, 251), (938, 1118, 741)
    img = np.stack([rng.integers(a, b, (128, 160)) for a, b in zip(lo, hi)]).astype(np.uint16)
    path = write_geotiff(tmp_path / "like.tif", img, crs=UTM, transform=UTM_T)
    res = predict_geotiff(uint16_checkpoint, path, tmp_path / "o", device="cpu", polygons=False)
    assert res["input_check"].ok and res["warning"] is None and _warnings(caplog) == []


def test_cli_normalize_flag_and_one_warning_line(uint16_checkpoint, tmp_path, capsys, caplog):
    from bdcore.cli import main

    scene = _u8_scene(tmp_path)
    args = ["predict", "--checkpoint", str(uint16_checkpoint), "--input", str(scene), "--device", "cpu",
            "--window", "128", "--overlap", "32"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    lines = _warnings(caplog)
    assert len(lines) == 1 and lines[0].startswith("scene.tif: looks unlike the training data (uint8")
    assert lines[0].endswith("try --normalize image (per-image 2–98 % stretch)")
    caplog.clear()
    assert main([*args, "--out", str(tmp_path / "b"), "--normalize", "image"]) == 0
    assert _warnings(caplog) == []
    assert (tmp_path / "b" / "scene_mask.tif").is_file()
    with pytest.raises(SystemExit):
        main([*args, "--normalize", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_cli_outline_choice_reaches_the_vector_outputs(tmp_path, monkeypatch, capsys):
    """``predict --outline``: a demo tile's buildings (the model = its blurred truth) as pixel staircases or as
    orthogonal outlines with a handful of corners, matching the truth as well (terraced houses that touch merge
    into one blob either way: no boundary channel here)."""
    import pandas as pd
    import shapely
    from scipy import ndimage

    from bdcore.cli import main
    from bdcore.data import imagery, labels
    from bdcore.data.demo import write_demo_aoi
    from bdcore.metrics.polygons import vertex_count
    from bdcore.metrics.scoring import match_buildings

    aoi = write_demo_aoi(tmp_path / "demo", n_tiles=1)
    image = next(aoi.rglob("*.tif"))
    lab = next(aoi.rglob("*.geojson"))
    prof = imagery.read_profile(image)
    truth = labels.pixel_polygons(labels.read_buildings(lab, crs=prof["crs"]), prof["transform"])
    prob = ndimage.gaussian_filter(labels.tile_mask(image, lab)[0].astype(np.float32), 1.0)
    tile = write_geotiff(tmp_path / image.name, np.repeat((prob * 2000)[None], 3, 0).astype(np.uint16),
                         crs=prof["crs"], transform=prof["transform"])
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: _predictor(Identity())))
    vertices, f1 = {}, {}
    for outline in ("none", "orthogonal"):
        assert main(["predict", "--checkpoint", "oracle.pt", "--input", str(tile), "--out", str(tmp_path / outline),
                     "--outline", outline]) == 0
        assert f"({outline} outlines)" in capsys.readouterr().out
        rows = pd.read_csv(next((tmp_path / outline).glob("*_spacenet.csv")))
        polys = [shapely.from_wkt(w) for w in rows["PolygonWKT_Pix"]]
        f1[outline] = match_buildings(truth, polys)["f1"]
        vertices[outline] = np.mean([vertex_count(p) for p in polys])
    assert f1["orthogonal"] >= f1["none"] > 0.5
    assert vertices["orthogonal"] < 8 < 2 * 8 < vertices["none"]
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--checkpoint", "oracle.pt", "--input", str(tile), "--outline", "round"])
    assert exit_.value.code == 2 and "invalid choice: 'round'" in capsys.readouterr().err
