"""bdcore.data.dataset: splits, the decoded-array cache, crops/augmentation alignment, DataLoader determinism."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from shapely.geometry import box

from bdcore.data import imagery
from bdcore.data.augment import Augment
from bdcore.data.cache import ArrayCache
from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation, build_datasets
from bdcore.data.split import SplitError, split_tiles
from bdcore.data.imagery import BandStats
import synth

STATS3 = BandStats(product="PS-RGB", lo=[0.0, 0.0, 0.0], hi=[2000.0, 2000.0, 2000.0])


# ------------------------------------------------------------------------------------------------ helpers


def grid_catalog(rows: int, cols: int, side: float = 1.0, missing: set[tuple[int, int]] = frozenset()) -> gpd.GeoDataFrame:
    recs = []
    for r in range(rows):
        for c in range(cols):
            if (r, c) in missing:
                continue
            recs.append({"tile_id": f"img{r * cols + c}", "geometry": box(c * side, r * side, (c + 1) * side, (r + 1) * side)})
    return gpd.GeoDataFrame(recs, geometry="geometry", crs="EPSG:4326").set_index("tile_id", drop=False)


def paris_catalog(path: Path) -> gpd.GeoDataFrame:
    g = gpd.read_file(path)
    g["tile_id"] = g["location"].str.extract(r"_(img\d+)\.tif$")[0]
    assert g["tile_id"].notna().all()
    return g.set_index("tile_id", drop=False)


def touching_pairs_bruteforce(cat: gpd.GeoDataFrame, a, b, eps: float) -> int:
    """Independent check: pairs whose footprints are within eps (edge/corner contact under float noise, overlap)."""
    ga = np.asarray(cat.loc[list(a)].geometry.values, dtype=object)
    gb = np.asarray(cat.loc[list(b)].geometry.values, dtype=object)
    if not len(ga) or not len(gb):
        return 0
    return int((shapely.distance(ga[:, None], gb[None, :]) <= eps).sum())


def small_catalog(aoi: synth.SynthAOI, product: str = "PS-RGB") -> pd.DataFrame:
    """The two columns the dataset reads, straight from the synthetic AOI (no catalog module involved)."""
    rows = [
        {"tile_id": t.tile_id, product: str(t.images[product]), "labels": str(t.labels) if t.labels else None}
        for t in aoi.tiles
    ]
    return pd.DataFrame(rows).set_index("tile_id", drop=False)


def encode_pattern(aoi: synth.SynthAOI) -> None:
    """Rewrite every image as mask*1000 + an asymmetric gradient (<= 400): mask == (normalised image > 0.4)."""
    for t in aoi.tiles:
        h, w = t.shape
        yy, xx = np.mgrid[0:h, 0:w]
        grad = (xx * 3 + yy * 1) % 401
        m = t.expected_mask().astype(np.int64)
        img = np.stack([m * 1000 + grad, m * 1000 + (grad * 7) % 401, m * 1000 + 400 - grad]).astype(np.uint16)
        synth.write_geotiff(t.images["PS-RGB"], img, transform=t.transform)


@pytest.fixture
def pattern_aoi(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=4, size=96, buildings_per_tile=6, seed=3)
    encode_pattern(aoi)
    return aoi


# ------------------------------------------------------------------------------------------------ split


def test_random_split_deterministic_disjoint_complete():
    cat = grid_catalog(10, 10)
    tr, va = split_tiles(cat, 0.2, seed=5)
    assert (tr, va) == split_tiles(cat.sample(frac=1.0, random_state=1), 0.2, seed=5)  # row order does not matter
    assert len(va) == 20 and len(tr) == 80
    assert not set(tr) & set(va) and set(tr) | set(va) == set(cat["tile_id"])
    assert split_tiles(cat, 0.2, seed=6)[1] != va
    assert split_tiles(grid_catalog(1, 2), 0.2, seed=0)[1] != []  # at least one val tile


def test_split_errors():
    with pytest.raises(SplitError, match="at least 2 tiles"):
        split_tiles(grid_catalog(1, 1), 0.2)
    with pytest.raises(SplitError, match="val_fraction"):
        split_tiles(grid_catalog(3, 3), 1.0)
    with pytest.raises(SplitError, match="unknown split method"):
        split_tiles(grid_catalog(3, 3), 0.2, method="spatial")
    assert split_tiles(grid_catalog(2, 2), 0.0) == (["img0", "img1", "img2", "img3"], [])


@pytest.mark.parametrize("rows,cols,k", [(12, 12, 3), (12, 12, None), (5, 5, None), (3, 4, None)])
def test_blocked_split_no_touch_synthetic(rows, cols, k):
    cat = grid_catalog(rows, cols, side=0.00175)
    for seed in range(4):
        tr, va, bu = split_tiles(cat, 0.25, seed=seed, method="blocked", block_tiles=k, return_buffer=True)
        assert tr and va
        assert not (set(tr) & set(va)) and not (set(bu) & (set(tr) | set(va)))
        assert set(tr) | set(va) | set(bu) == set(cat["tile_id"])
        assert touching_pairs_bruteforce(cat, tr, va, eps=1e-9) == 0
        # every dropped tile really touches val (the buffer is not wasteful)
        assert all(touching_pairs_bruteforce(cat, [b], va, eps=1e-9) for b in bu)


def test_blocked_split_small_dense_grid_keeps_most_tiles():
    """A 6x4 AOI (like the 24-tile demo): a compact val region loses far fewer tiles than scattered blocks."""
    cat = grid_catalog(4, 6, side=0.00175)
    for seed in range(5):
        tr, va, bu = split_tiles(cat, 0.2, seed=seed, method="blocked", return_buffer=True)
        assert len(va) == 5 and len(tr) >= 10 and touching_pairs_bruteforce(cat, tr, va, eps=1e-9) == 0
        scattered = split_tiles(cat, 0.2, seed=seed, method="blocked", block_tiles=1, return_buffer=True)
        assert len(bu) <= len(scattered[2])
    with pytest.raises(SplitError, match="no train tiles"):
        split_tiles(grid_catalog(2, 2), 0.25, method="blocked")  # every tile touches every other


def test_random_split_on_paris_has_touching_pairs_blocked_has_none(paris_tile_index):
    """The no-touch check is not vacuous: a random split on the real index leaks across edges, blocked does not."""
    cat = paris_catalog(paris_tile_index)
    assert len(cat) == 1148
    side = 0.001755
    tr, va = split_tiles(cat, 0.2, seed=0, method="random")
    assert touching_pairs_bruteforce(cat, tr, va, eps=1e-6 * side) > 100
    for seed in range(3):
        tr, va, bu = split_tiles(cat, 0.2, seed=seed, method="blocked", return_buffer=True)
        assert (tr, va) == split_tiles(cat, 0.2, seed=seed, method="blocked")  # deterministic
        assert touching_pairs_bruteforce(cat, tr, va, eps=1e-6 * side) == 0
        assert touching_pairs_bruteforce(cat, tr, va, eps=0.01 * side) == 0  # the split's own tolerance
        assert len(set(tr) | set(va) | set(bu)) == len(tr) + len(va) + len(bu) == 1148
        # the buffer costs well under a tenth of the tiles and val is close to the requested share
        assert 0.18 <= len(va) / 1148 <= 0.24 and len(bu) < 120 and len(tr) > 780, (len(tr), len(va), len(bu))
    assert split_tiles(cat, 0.2, seed=0, method="blocked")[1] != split_tiles(cat, 0.2, seed=1, method="blocked")[1]


def test_blocked_split_needs_geometry():
    cat = pd.DataFrame({"tile_id": ["a", "b", "c"]}).set_index("tile_id", drop=False)
    with pytest.raises(SplitError, match="geometry"):
        split_tiles(cat, 0.3, method="blocked")


# ------------------------------------------------------------------------------------------------ cache


def _vegas_pairs(vegas_root: Path):
    imgs = sorted((vegas_root / "PS-RGB").glob("*.tif"))
    out = []
    for p in imgs:
        n = p.stem.split("_img")[-1]
        out.append((p, vegas_root / "geojson_buildings" / f"buildings_AOI_2_Vegas_img{n}.geojson"))
    return out


def test_cache_matches_fresh_decode_on_vegas(vegas_small, tmp_path, monkeypatch):
    from bdcore.data import labels

    cache = ArrayCache(tmp_path / "c")
    pairs = _vegas_pairs(vegas_small)
    assert len(pairs) == 2
    for img_path, lab_path in pairs:
        a = cache.image(img_path, "PS-RGB")
        assert isinstance(a, np.memmap) and a.dtype == np.uint16 and a.ndim == 3
        np.testing.assert_array_equal(a, imagery.read_image(img_path))
        for boundary in (False, True):
            m = cache.mask(img_path, lab_path, boundary=boundary)
            assert m.dtype == np.uint8 and m.shape == (2 if boundary else 1, a.shape[1], a.shape[2])
            np.testing.assert_array_equal(m, labels.tile_mask(img_path, lab_path, boundary=boundary))
    assert cache.misses == 3 * len(pairs) and cache.hits == 0
    assert not list((tmp_path / "c").rglob("*.tmp"))

    # after the first pass nothing is decoded again
    def boom(*a, **k):
        raise AssertionError("decoded a GeoTIFF despite the cache")

    monkeypatch.setattr(imagery, "read_image", boom)
    monkeypatch.setattr(labels, "tile_mask", boom)
    for img_path, lab_path in pairs:
        cache.image(img_path, "PS-RGB")
        cache.mask(img_path, lab_path)
    assert cache.hits == 2 * len(pairs)


def test_cache_invalidated_by_changed_file(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=32, seed=1)
    t = aoi.tiles[0]
    img_path = t.images["PS-RGB"]
    cache = ArrayCache(tmp_path / "c")
    first = np.array(cache.image(img_path))
    mask_first = np.array(cache.mask(img_path, t.labels))
    # same size, new content and a new mtime
    new = (first + 7).astype(np.uint16)
    synth.write_geotiff(img_path, new, transform=t.transform)
    st = os.stat(img_path)
    os.utime(img_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    again = cache.image(img_path)
    np.testing.assert_array_equal(again, new)
    assert cache.misses == 3
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1  # stale entry removed
    # labels edited: the mask follows
    synth.write_geojson(t.labels, [], z=True)
    st = os.stat(t.labels)
    os.utime(t.labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert mask_first.sum() > 0 and int(cache.mask(img_path, t.labels).sum()) == 0


def test_cache_recovers_from_corrupt_entry_and_missing_labels(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=32, seed=2)
    t = aoi.tiles[0]
    cache = ArrayCache(tmp_path / "c")
    entry = cache.image_entry(t.images["PS-RGB"], None)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"garbage, not npy")
    np.testing.assert_array_equal(cache.image(t.images["PS-RGB"]), imagery.read_image(t.images["PS-RGB"]))
    m = cache.mask(t.images["PS-RGB"], None, boundary=True)
    assert m.shape == (2, 32, 32) and m.sum() == 0
    with pytest.raises(FileNotFoundError):
        cache.image(tmp_path / "nope.tif")


def test_cache_unwritable_or_source_changing_still_gives_pixels(tmp_path, monkeypatch, caplog):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=1, size=32, seed=6)
    img_path = aoi.tiles[0].images["PS-RGB"]
    truth = imagery.read_image(img_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    cache = ArrayCache(blocker / "arrays")
    np.testing.assert_array_equal(cache.image(img_path), truth)
    np.testing.assert_array_equal(cache.image(img_path), truth)  # warns once, keeps working
    assert cache.misses == 2 and sum("cannot write the array cache" in r.message for r in caplog.records) == 1

    # the source is rewritten while it is being decoded: the result is not cached under the old key
    real = imagery.read_image

    def racing(path, bands=None, window=None):
        out = real(path, bands=bands, window=window)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
        return out

    monkeypatch.setattr(imagery, "read_image", racing)
    cache = ArrayCache(tmp_path / "c")
    np.testing.assert_array_equal(cache.image(img_path), truth)
    assert not (tmp_path / "c" / "images").exists() or not list((tmp_path / "c" / "images").glob("*.npy"))


def test_cache_names_with_glob_characters(tmp_path):
    img = synth.write_geotiff(tmp_path / "tile[1]*.tif", np.full((3, 8, 8), 5, np.uint16))
    other = synth.write_geotiff(tmp_path / "tile1x.tif", np.full((3, 8, 8), 9, np.uint16))
    cache = ArrayCache(tmp_path / "c")
    cache.image(other)
    cache.image(img)
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    cache.image(img)  # replaces its own stale entry only
    names = sorted(f.name for f in (tmp_path / "c" / "images").glob("*.npy"))
    assert len(names) == 2 and sum(n.startswith("tile1x-") for n in names) == 1
    assert int(cache.image(other)[0, 0, 0]) == 9


# ------------------------------------------------------------------------------------------------ items


def _check_aligned(item, thr=0.4):
    img, mask = item["image"].numpy(), item["mask"].numpy()
    assert img.dtype == np.float32 and mask.dtype == np.float32
    fg = mask[0] > 0.5
    assert set(np.unique(mask[0])) <= {0.0, 1.0}
    if fg.any() and (~fg).any():
        # photometric jitter is monotonic and the same for every pixel, so roofs stay strictly brighter
        assert img[0][fg].min() > img[0][~fg].max(), "image and mask out of register"
        assert img[2][fg].min() > img[2][~fg].max()
    return fg


def test_crops_and_augmentations_keep_image_and_mask_aligned(pattern_aoi):
    cat = small_catalog(pattern_aoi)
    spec = SampleSpec(crop_size=64, augment=Augment(), samples_per_tile=25, seed=0)
    ds = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS3)
    assert len(ds) == 100
    views = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
        assert item["tile_id"] == pattern_aoi.tiles[i // 25].tile_id
        _check_aligned(item)
        views.add(item["image"].numpy().tobytes()[:4096])
    assert len(views) > 90  # crops/flips/rotations really vary


def test_unaugmented_pixels_exact(pattern_aoi):
    """Without photometric jitter the mask equals (image > 0.4) pixel for pixel, through every flip/rotation."""
    cat = small_catalog(pattern_aoi)
    geo_only = Augment(brightness=0.0, contrast=0.0, gamma=0.0)
    spec = SampleSpec(crop_size=64, augment=geo_only, samples_per_tile=40, seed=1)
    ds = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS3)
    seen_rot = 0
    for i in range(len(ds)):
        item = ds[i]
        img, mask = item["image"].numpy(), item["mask"].numpy()
        np.testing.assert_array_equal(mask[0], (img[0] > 0.4).astype(np.float32))
        np.testing.assert_array_equal(mask[0], (img[2] > 0.4).astype(np.float32))
        # the gradient in band 0 is x*3 + y (mod 401): its direction reveals the applied flip/rotation
        g = np.round(img[0] * 2000) % 1000
        seen_rot += int(g[0, 1] - g[0, 0] not in (3, -398))
    assert seen_rot > 40  # about 3/4 of 160 samples are not in the original orientation


def test_val_mode_full_tile_and_padding(pattern_aoi):
    cat = small_catalog(pattern_aoi)
    t = pattern_aoi.tiles[1]
    ds = SpaceNetSegmentation(cat, [t.tile_id], SampleSpec(crop_size=None, pad_multiple=32), stats=STATS3)
    item = ds[0]
    assert item["image"].shape == (3, 96, 96)  # 96 is already a multiple of 32
    raw = imagery.read_image(t.images["PS-RGB"])
    np.testing.assert_array_equal(item["image"].numpy(), imagery.normalize(raw, STATS3))
    np.testing.assert_array_equal(item["mask"].numpy()[0], t.expected_mask())
    ds = SpaceNetSegmentation(cat, [t.tile_id], SampleSpec(crop_size=None, pad_multiple=64), stats=STATS3)
    item = ds[0]
    assert item["image"].shape == (3, 128, 128)
    assert item["image"][:, 96:, :].abs().sum() == 0 and item["mask"][:, :, 96:].sum() == 0
    # centre crop in val mode is deterministic
    ds = SpaceNetSegmentation(cat, [t.tile_id], SampleSpec(crop_size=32), stats=STATS3)
    np.testing.assert_array_equal(ds[0]["mask"].numpy()[0], t.expected_mask()[32:64, 32:64])


def test_tile_smaller_than_crop_is_padded(tmp_path):
    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=2, size=40, buildings_per_tile=3, seed=4)
    encode_pattern(aoi)
    cat = small_catalog(aoi)
    spec = SampleSpec(crop_size=64, augment=Augment(), samples_per_tile=10, boundary=True)
    ds = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (2, 64, 64)
        fg = _check_aligned(item)
        assert fg.sum() == aoi.tiles[i // 10].expected_mask().sum()  # whole tile inside the crop
        assert (item["mask"][1].numpy() <= 1).all()


def test_missing_product_and_unknown_tile(pattern_aoi):
    cat = small_catalog(pattern_aoi)
    with pytest.raises(ValueError, match="PS-MS"):
        SpaceNetSegmentation(cat.assign(**{"PS-MS": None}), list(cat.index), SampleSpec(product="PS-MS"), stats=STATS3)
    with pytest.raises(ValueError, match="img999"):
        SpaceNetSegmentation(cat, ["img999"], stats=STATS3)


# ------------------------------------------------------------------------------------------------ loaders


def _batches(ds, workers, seed):
    g = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers, generator=g)
    return [(b["image"].clone(), b["mask"].clone(), list(b["tile_id"])) for b in dl]


def test_dataloader_workers_match_single_process(pattern_aoi, tmp_path):
    cat = small_catalog(pattern_aoi)
    spec = SampleSpec(crop_size=48, augment=Augment(), samples_per_tile=4, seed=7)
    ds = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS3)
    ds.set_epoch(0)
    a = _batches(ds, 0, seed=11)
    b = _batches(ds, 2, seed=11)
    assert len(a) == len(b) == 4
    for (ia, ma, ta), (ib, mb, tb) in zip(a, b):
        assert ta == tb
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    ds.set_epoch(1)
    c = _batches(ds, 0, seed=11)
    assert [x[2] for x in c] == [x[2] for x in a]  # same sampler order ...
    assert not torch.equal(c[0][0], a[0][0])  # ... but new augmentations in a new epoch


def test_epochs_differ_without_set_epoch(pattern_aoi):
    cat = small_catalog(pattern_aoi)
    ds = SpaceNetSegmentation(cat, list(cat.index), SampleSpec(crop_size=48, augment=Augment(), seed=7), stats=STATS3)
    first = [ds[i]["image"] for i in range(len(ds))]
    second = [ds[i]["image"] for i in range(len(ds))]
    assert any(not torch.equal(x, y) for x, y in zip(first, second))


# ------------------------------------------------------------------------------------------------ run config


def test_build_datasets_from_run_config(tmp_path):
    from bdcore.engine.config import RunConfig

    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=9, size=64, seed=5, missing_labels=[8])
    cfg = RunConfig(data_root=str(aoi.root), crop_size=32, val_fraction=0.25, split="blocked", boundary=True, seed=3)
    train, val = build_datasets(cfg)
    assert "img9" not in train.tile_ids + val.tile_ids  # unlabelled tile left out
    assert not set(train.tile_ids) & set(val.tile_ids) and val.tile_ids
    assert train.spec.augment and not val.spec.augment and val.crop_size is None
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (2, 32, 32)
    v = val[0]
    assert v["image"].shape == (3, 64, 64) and v["mask"].shape == (2, 64, 64)
    t = aoi.tile(val.tile_ids[0])
    np.testing.assert_array_equal(v["mask"].numpy()[0], t.expected_mask())
    assert build_datasets(cfg)[1].tile_ids == val.tile_ids


def test_build_datasets_refuses_a_folder_with_no_labelled_tile(tmp_path):
    from bdcore.engine.config import RunConfig
    from bdcore.data.dataset import DatasetError

    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=3, size=32, missing_labels=[0, 1, 2])
    cfg = RunConfig(data_root=str(aoi.root), crop_size=32)
    with pytest.raises(DatasetError) as ei:
        build_datasets(cfg)
    msg = str(ei.value)
    assert msg.startswith(f"{aoi.root.resolve()}: 3 tile(s), 0 labelled")
    assert "training needs labelled tiles" in msg and "add the geojson_buildings files" in msg


def test_run_split_lists_or_excludes_tiles_with_bad_labels(tmp_path):
    """A train/val tile whose labels file holds a Point: listed (``check_labels`` refuses, naming the file) or, with
    ``exclude_bad_labels``, taken out of train/val after splitting, every other tile keeping its role."""
    from bdcore.data.catalog import load_catalog
    from bdcore.data.split import BadLabelsError, run_split

    aoi = synth.make_aoi(tmp_path / "aoi", n_tiles=6, size=16)
    synth.add_point_feature(aoi.tiles[2].labels)
    cat = load_catalog(aoi.root)
    kept = run_split(cat, "PS-RGB", 0.34, 0, "random")
    assert kept.bad_labels and list(kept.bad_labels) == [str(aoi.tiles[2].labels.resolve())] and not kept.excluded
    with pytest.raises(BadLabelsError, match=r"1 labels file\(s\) of this run's train/val tiles .*img3\.geojson "
                                             r"\(feature 1 is a Point.*\)\. Fix or delete those features, or do X"):
        kept.check_labels("do X")
    out = run_split(cat, "PS-RGB", 0.34, 0, "random", exclude_bad_labels=True)
    assert out.excluded == ["img3"] and not out.bad_labels
    out.check_labels()  # nothing left to refuse
    assert out.train == [t for t in kept.train if t != "img3"] and out.val == [t for t in kept.val if t != "img3"]
    for t in kept.val:  # leaving every val tile out would leave nothing to validate on: refused, saying so
        synth.add_point_feature(aoi.tile(t).labels)
    with pytest.raises(BadLabelsError, match="every validation tile has an unusable labels file"):
        run_split(load_catalog(aoi.root), "PS-RGB", 0.34, 0, "random", exclude_bad_labels=True)
    assert run_split(load_catalog(synth.make_aoi(tmp_path / "ok", n_tiles=3, size=16).root),
                     "PS-RGB", 0.34, 0, "random").bad_labels == {}
