"""The dataset's cached sample path (CachedArray row reads) gives exactly what the slow, obvious path gives:
``imagery.normalize(imagery.read_image(tile))[crop]`` and the label mask, bit for bit."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from bdcore.data import imagery, labels
from bdcore.data.augment import Augment
from bdcore.data.cache import ArrayCache, CachedArray
from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation
from bdcore.data.imagery import BandStats
import synth


def _catalog(pairs) -> pd.DataFrame:
    rows = [{"tile_id": f"t{i}", "PS-RGB": str(img), "labels": str(lab) if lab else None} for i, (img, lab) in enumerate(pairs)]
    return pd.DataFrame(rows).set_index("tile_id", drop=False)


def _vegas_pairs(vegas_root):
    out = []
    for p in sorted((vegas_root / "PS-RGB").glob("*.tif")):
        n = p.stem.split("_img")[-1]
        out.append((p, vegas_root / "geojson_buildings" / f"buildings_AOI_2_Vegas_img{n}.geojson"))
    return out


def _expected(img_path, lab_path, stats, box=None):
    img = imagery.normalize(imagery.read_image(img_path), stats)
    mask = labels.tile_mask(img_path, lab_path).astype(np.float32)
    if box is not None:
        y0, x0, ch, cw = box
        img, mask = img[:, y0 : y0 + ch, x0 : x0 + cw], mask[:, y0 : y0 + ch, x0 : x0 + cw]
    return img, mask


def test_cached_items_equal_imagery_normalize_on_vegas(vegas_root, tmp_path):
    """Real tiles, awkward stats (fractional lo/hi, values below lo and above hi): whole tiles and centre crops."""
    pairs = _vegas_pairs(vegas_root)[:4]
    cat = _catalog(pairs)
    raw0 = imagery.read_image(pairs[0][0])
    lo = [float(np.percentile(b, 10)) + 0.37 for b in raw0]
    hi = [float(np.percentile(b, 90)) - 0.61 for b in raw0]
    stats = BandStats(product="PS-RGB", lo=lo, hi=hi)
    cache = ArrayCache(tmp_path / "c")
    for crop in (None, 256, 300):
        ds = SpaceNetSegmentation(cat, list(cat.index), SampleSpec(crop_size=crop), stats=stats, cache=cache)
        for i, (img_path, lab_path) in enumerate(pairs):
            for _ in range(2):  # first pass fills the cache, second reads it back
                item = ds[i]
                h, w = imagery.read_profile(img_path)["height"], imagery.read_profile(img_path)["width"]
                box = None if crop is None else ((h - crop) // 2, (w - crop) // 2, crop, crop)
                img, mask = _expected(img_path, lab_path, stats, box)
                assert item["image"].dtype == item["mask"].dtype == torch.float32
                np.testing.assert_array_equal(item["image"].numpy(), img)
                np.testing.assert_array_equal(item["mask"].numpy(), mask)
                clipped = img.reshape(-1)
                assert (clipped == 0).any() and (clipped == 1).any()  # both clip ends are exercised
    assert cache.hits > 0 and cache.misses == 2 * len(pairs)


def test_cached_and_uncached_augmented_samples_identical(tmp_path):
    """Random crops + jitter + flips: the row-read cache path equals decoding the GeoTIFF every time."""
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=3, size=80, buildings_per_tile=4, seed=3)
    pairs = [(t.images["PS-RGB"], t.labels) for t in aoi.tiles]
    cat = _catalog(pairs)
    stats = BandStats(product="PS-RGB", lo=[5.5, 0.0, 100.25], hi=[900.0, 1700.5, 1200.0])
    spec = SampleSpec(crop_size=48, augment=Augment(), samples_per_tile=6, seed=11, boundary=True)
    fast = SpaceNetSegmentation(cat, list(cat.index), spec, stats=stats, cache=ArrayCache(tmp_path / "c"))
    slow = SpaceNetSegmentation(cat, list(cat.index), spec, stats=stats, cache=False)
    fast.set_epoch(2), slow.set_epoch(2)
    for _ in range(2):
        for i in range(len(fast)):
            a, b = fast[i], slow[i]
            assert a["image"].shape == (3, 48, 48) and a["mask"].shape == (2, 48, 48)
            np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
            np.testing.assert_array_equal(a["mask"].numpy(), b["mask"].numpy())


def test_normalize_extreme_uint16_values(tmp_path):
    """0, 65535, exactly lo, exactly hi and their neighbours go through the cache path as imagery.normalize says."""
    vals = np.array([0, 1, 99, 100, 101, 1999, 2000, 2001, 32768, 65534, 65535], np.uint16)
    arr = np.stack([np.resize(np.roll(vals, k), (20, 24)) for k in range(3)])
    img_path = synth.write_geotiff(tmp_path / "x.tif", arr)
    stats = BandStats(product="PS-RGB", lo=[100.0, 0.0, 101.5], hi=[2000.0, 65535.0, 101.5])  # band 3: zero span
    cat = _catalog([(img_path, None)])
    ds = SpaceNetSegmentation(cat, ["t0"], SampleSpec(crop_size=None), stats=stats, cache=ArrayCache(tmp_path / "c"))
    for _ in range(2):
        item = ds[0]
        np.testing.assert_array_equal(item["image"].numpy(), imagery.normalize(arr, stats))
        assert item["mask"].shape == (1, 20, 24) and item["mask"].sum() == 0


def test_cached_array_rows_match_memmap(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=50, seed=2)
    img_path = aoi.tiles[0].images["PS-RGB"]
    cache = ArrayCache(tmp_path / "c")
    full = np.array(cache.image(img_path, "PS-RGB"))
    for y0, y1 in [(0, 50), (0, 1), (49, 50), (7, 31), (20, 20)]:
        with cache.open_image(img_path, "PS-RGB") as a:
            assert a.shape == full.shape and a.dtype == full.dtype
            rows = a.rows(y0, y1)
            assert rows.flags.c_contiguous and rows.flags.writeable
            np.testing.assert_array_equal(rows, full[:, y0:y1])
    with cache.open_image(img_path, "PS-RGB") as a:
        with pytest.raises(IndexError):
            a.rows(10, 51)


def test_open_entry_survives_unlink(tmp_path):
    """A concurrent stale-entry cleanup (another process saw the source change) cannot pull an open entry away."""
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=40, seed=5)
    img_path = aoi.tiles[0].images["PS-RGB"]
    cache = ArrayCache(tmp_path / "c")
    expect = np.array(cache.image(img_path, "PS-RGB"))
    a = cache.open_image(img_path, "PS-RGB")
    cache.image_entry(img_path, "PS-RGB").unlink()
    np.testing.assert_array_equal(a.rows(), expect)
    a.close()


def test_corrupt_entry_is_decoded_again(tmp_path, caplog):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=40, seed=6)
    img_path = aoi.tiles[0].images["PS-RGB"]
    cache = ArrayCache(tmp_path / "c")
    expect = np.array(cache.image(img_path, "PS-RGB"))
    entry = cache.image_entry(img_path, "PS-RGB")
    with cache.open_image(img_path, "PS-RGB"):
        pass  # layout memoised
    with open(entry, "r+b") as f:  # truncated entry, header intact
        f.truncate(entry.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="bdcore.data.cache"):
        with cache.open_image(img_path, "PS-RGB") as a:
            np.testing.assert_array_equal(a.rows(), expect)
    assert "unreadable" in caplog.text
    entry.write_bytes(b"not a numpy file at all")
    with cache.open_image(img_path, "PS-RGB") as a:
        np.testing.assert_array_equal(a.rows(), expect)
    assert entry.stat().st_size > 100  # rewritten


def test_unwritable_cache_serves_decoded_arrays(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=40, seed=7)
    t = aoi.tiles[0]
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cache = ArrayCache(blocker / "arrays")
    with cache.open_mask(t.images["PS-RGB"], t.labels) as m:
        assert isinstance(m, CachedArray)
        np.testing.assert_array_equal(m.rows(5, 25)[0], t.expected_mask()[5:25])
    assert not os.path.isdir(blocker / "arrays")
