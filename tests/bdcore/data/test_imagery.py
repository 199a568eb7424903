"""imagery: reading GeoTIFF products, stretching, dataset band statistics, failure modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from bdcore.data import imagery
from bdcore.data.catalog import load_catalog
from bdcore.data.imagery import (
    BandStats,
    ImageryError,
    band_stats,
    normalize,
    read_image,
    read_profile,
    stretch,
    to_display_rgb,
)
from bdcore.paths import cache_dir
from synth import make_aoi, write_garbage, write_geotiff, write_png_as_tif, write_truncated_tif


def test_read_real_vegas_tile(vegas_small):
    tif = vegas_small / "PS-RGB" / "RGB-PanSharpen_AOI_2_Vegas_img1265.tif"
    arr = read_image(tif)
    assert arr.shape == (3, 650, 650) and arr.dtype == np.uint16
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(arr, src.read())
    prof = read_profile(tif)
    assert (prof["width"], prof["height"], prof["count"], prof["dtype"]) == (650, 650, 3, "uint16")
    assert prof["crs"].to_epsg() == 4326 and prof["nodata"] is None
    sub = read_image(tif, bands=[2, 0], window=((10, 20), (30, 45)))
    np.testing.assert_array_equal(sub, arr[[2, 0], 10:20, 30:45])
    rgb = to_display_rgb(arr)
    assert rgb.shape == (650, 650, 3) and rgb.dtype == np.uint8
    # 2-98 % stretch: about 2 % of pixels saturate at each end per band
    for b in range(3):
        assert 0.005 < (rgb[..., b] == 0).mean() < 0.05
        assert 0.005 < (rgb[..., b] == 255).mean() < 0.05


def test_eight_band_read_and_display(tmp_path):
    data = np.stack([np.full((20, 30), 100 * (b + 1), np.uint16) for b in range(8)])
    data[:, :, 15:] += 50  # right half brighter in every band
    p = write_geotiff(tmp_path / "ms.tif", data)
    arr = read_image(p)
    assert arr.shape == (8, 20, 30)
    np.testing.assert_array_equal(arr, data)
    np.testing.assert_array_equal(read_image(p, bands=[4, 2, 1])[0], data[4])
    rgb = to_display_rgb(arr, bands=(4, 2, 1))
    assert rgb.shape == (20, 30, 3)
    assert (rgb[:, :15] == 0).all() and (rgb[:, 15:] == 255).all()
    with pytest.raises(ImageryError, match="8 band"):
        read_image(p, bands=[8])
    with pytest.raises(ValueError, match="out of range"):
        to_display_rgb(arr, bands=(0, 1, 9))


def test_stretch_known_values_and_nodata():
    band = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)  # values 1..100
    s = stretch(band[None], lo=0, hi=100)
    np.testing.assert_allclose(s[0], (band - 1) / 99.0, rtol=1e-6)
    # nodata pixels are left out of the percentiles and come out 0
    with_nd = band.copy()
    with_nd[0, :5] = 0
    s2 = stretch(with_nd[None], lo=0, hi=100, nodata=0)
    assert (s2[0, 0, :5] == 0).all()
    valid = with_nd[with_nd != 0].astype(np.float64)
    np.testing.assert_allclose(s2[0, 5:], (with_nd[5:] - valid.min()) / (valid.max() - valid.min()), rtol=1e-6)
    # constant band → zeros, not NaN
    assert not np.isnan(stretch(np.full((1, 4, 4), 7, np.uint16))).any()
    # float NaN treated as nodata
    f = np.array([[[np.nan, 1.0], [2.0, 3.0]]], np.float32)
    out = stretch(f, lo=0, hi=100)
    assert out[0, 0, 0] == 0 and out[0, 1, 1] == 1.0


def test_single_band_displays_as_grey():
    arr = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    rgb = to_display_rgb(arr)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("kind", ["truncated", "png", "garbage", "empty", "missing", "folder"])
def test_bad_files_raise_imagery_error_naming_the_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.tif"
    if kind == "truncated":
        write_truncated_tif(p)
    elif kind == "png":
        write_png_as_tif(p)
    elif kind == "garbage":
        write_garbage(p)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "folder":
        p.mkdir()
    with pytest.raises(ImageryError) as exc:
        read_image(p)
    assert str(p) in str(exc.value)
    assert isinstance(exc.value, ValueError)
    if kind == "png":
        assert "PNG" in str(exc.value)
    if kind != "truncated":  # a truncated file's header may still parse; its pixels may not
        with pytest.raises(ImageryError):
            read_profile(p)
    with pytest.raises(ImageryError):
        imagery.check_readable(p)


def test_band_stats_cached_and_normalize(tmp_path):
    aoi = make_aoi(tmp_path / "aoi", n_tiles=4, bands=8, size=32, products=("PS-RGB", "PS-MS"))
    cat = load_catalog(aoi.root)
    stats = band_stats(cat, product="PS-MS", max_side=32)
    assert stats.product == "PS-MS" and stats.bands == 8 and stats.n_tiles == 4
    # exact reference: percentiles over every pixel of every tile
    allpix = np.concatenate([read_image(t.images["PS-MS"]).reshape(8, -1) for t in aoi.tiles], axis=1).astype(float)
    np.testing.assert_allclose(stats.lo, np.percentile(allpix, 2, axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.hi, np.percentile(allpix, 98, axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.mean, allpix.mean(axis=1), rtol=1e-9)
    files = list((cache_dir() / "band_stats").glob("PS-MS-*.json"))
    assert any(json.loads(f.read_text())["key"] == stats.key for f in files)

    # served from the cache: reading pixels again would fail
    def boom(*a, **k):
        raise AssertionError("band stats recomputed instead of read from the cache")

    orig = imagery._read_decimated
    imagery._read_decimated = boom
    try:
        again = band_stats(cat, product="PS-MS", max_side=32)
    finally:
        imagery._read_decimated = orig
    assert again == stats
    # a different product is a different key
    rgb = band_stats(cat, product="PS-RGB", max_side=32)
    assert rgb.bands == 3 and rgb.key != stats.key

    x = read_image(aoi.tiles[0].images["PS-MS"])
    n = normalize(x, stats)
    assert n.dtype == np.float32 and n.shape == x.shape and n.min() >= 0 and n.max() <= 1
    b = 3
    exp = np.clip((x[b].astype(np.float32) - stats.lo[b]) / (stats.hi[b] - stats.lo[b]), 0, 1)
    np.testing.assert_allclose(n[b], exp, rtol=1e-5)
    with pytest.raises(ValueError, match="stats have 8"):
        normalize(x[:3], stats)


def test_band_stats_sampling_and_nodata(tmp_path):
    aoi = make_aoi(tmp_path / "aoi", n_tiles=6, size=16)
    # tile 0: set a nodata value and fill half with it; those pixels must not drag the low percentile down
    p = aoi.tiles[0].images["PS-RGB"]
    arr = read_image(p)
    arr[:, :8] = 0
    write_geotiff(p, arr, transform=aoi.tiles[0].transform, nodata=0)
    cat = load_catalog(aoi.root)
    stats = band_stats(cat, max_tiles=3)
    assert stats.n_tiles == 3
    full = band_stats(cat, max_tiles=64)
    assert full.n_tiles == 6 and full.key != stats.key
    assert min(full.lo) > 100  # ground is ~300; nodata zeros excluded
    n = normalize(arr, full, nodata=0)
    assert (n[:, :8] == 0).all()


def test_band_stats_skips_unreadable_tiles(tmp_path, caplog):
    aoi = make_aoi(tmp_path / "aoi", n_tiles=3, size=16)
    cat = load_catalog(aoi.root)
    write_truncated_tif(aoi.tiles[1].images["PS-RGB"], size=16)  # corrupted after cataloguing
    cat.attrs["fingerprint"] = "changed"
    stats = band_stats(cat)
    assert stats.n_tiles == 2
    assert "img2" in caplog.text or "truncated" in caplog.text


def test_bandstats_roundtrip():
    s = BandStats(product="PS-RGB", lo=[1.0, 2.0, 3.0], hi=[4.0, 5.0, 6.0], mean=[2.0] * 3, std=[1.0] * 3, n_tiles=2)
    assert BandStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_stats_cli(vegas_small, capsys):
    from bdcore.cli import main

    assert main(["stats", str(vegas_small)]) == 0
    out = capsys.readouterr().out
    assert "PS-RGB" in out and "2 sampled tile(s)" in out
    assert main(["stats", str(vegas_small), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["lo"]) == 3 and all(lo < hi for lo, hi in zip(d["lo"], d["hi"]))
    assert main(["stats", str(vegas_small), "--product", "PS-MS"]) == 2
    assert "PS-MS" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ input vs training

VEGAS_LO, VEGAS_HI = [133.0, 283.0, 251.0], [938.0, 1118.0, 741.0]  # real Vegas sample statistics (uint16)


def test_check_input_flags_uint8_and_far_ranges_but_not_similar_uint16():
    from bdcore.data.imagery import check_input

    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 300, 300)).astype(np.uint8)
    c = check_input(u8, [80.0] * 3, [1900.0] * 3, name="scene.tif")
    assert not c.ok and set(c.reasons) == {"dtype", "range"} and c.off_bands == [0, 1, 2]
    msg = c.message()
    assert msg.startswith("scene.tif: looks unlike the training data (uint8, max 255; 2–98 % range ")
    assert "vs training 80–1,900 per band" in msg and msg.endswith("try --normalize image (per-image 2–98 % stretch)")
    assert "\n" not in msg
    assert c.message(fix="pick X").endswith("predictions may be meaningless; pick X")
    # uint16 pixels whose 2-98 % range lies mostly above the training range
    bright = rng.integers(3000, 4000, (3, 64, 64)).astype(np.uint16)
    c = check_input(bright, VEGAS_LO, VEGAS_HI, name="bright.tif")
    assert c.reasons == ["range"] and "3 of 3 band(s) mostly outside it" in c.message()
    # float reflectance 0-0.4 against uint16 statistics
    assert check_input(rng.random((3, 40, 40)).astype(np.float32) * 0.4, VEGAS_LO, VEGAS_HI).reasons == ["range"]
    # similar uint16 data: fine (and a uint8 tile against uint8 statistics is fine too)
    like = np.stack([rng.integers(int(lo), int(hi), (100, 100)) for lo, hi in zip(VEGAS_LO, VEGAS_HI)]).astype(np.uint16)
    c = check_input(like, VEGAS_LO, VEGAS_HI)
    assert c.ok and c.message() == "" and c.off_bands == []
    assert check_input(u8, [5.0] * 3, [250.0] * 3).ok
    # one band off of three is not enough
    mixed = like.copy()
    mixed[0] = 5000
    c = check_input(mixed, VEGAS_LO, VEGAS_HI)
    assert c.ok and c.off_bands == [0]
    # band count
    c = check_input(rng.integers(0, 900, (4, 16, 16)).astype(np.uint16), VEGAS_LO, VEGAS_HI, name="four.tif")
    assert c.reasons == ["bands"] and "4 band(s) vs 3 in training" in c.message()


def test_check_input_reads_a_file_decimated_and_skips_nodata(tmp_path):
    from bdcore.data.imagery import check_input

    rng = np.random.default_rng(1)
    arr = np.stack([rng.integers(int(lo), int(hi), (1200, 900)) for lo, hi in zip(VEGAS_LO, VEGAS_HI)]).astype(np.uint16)
    arr[:, :600] = 0  # half the image is nodata: it must not drag the percentiles to 0
    path = write_geotiff(tmp_path / "big.tif", arr, nodata=0)
    c = check_input(path, VEGAS_LO, VEGAS_HI)
    assert c.name == "big.tif" and c.ok, c.message()
    assert max(c.sample_shape) <= 256 and c.sample_shape[0] > 100  # a decimated sample, never the full raster
    assert min(c.lo) > 100
    arr_c = check_input(arr, VEGAS_LO, VEGAS_HI, nodata=0)
    assert max(arr_c.sample_shape) <= 256 and arr_c.ok
    assert check_input(arr, VEGAS_LO, VEGAS_HI).lo == [0.0] * 3  # without nodata the zeros count
