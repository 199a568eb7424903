"""Benchmark: the data pipeline from GeoTIFF vs from bdcore's decoded-array cache.

    python bench/data.py [--demo-tiles 200] [--epoch-tiles 1148] [--workers 2] [--link]

1. tiles/s for decode + normalise + rasterize (image via ``imagery.read_image`` + ``normalize``, mask via
   ``labels.tile_mask``) straight from GeoTIFF/GeoJSON vs from the cache (memmap + ``normalize``), on the real
   Vegas sample and on a synthetic demo AOI (``demo.write_demo_aoi``, 650x650x3 uint16 tiles).
2. A full epoch over ``--epoch-tiles`` Paris-sized tiles (650x650x3 uint16) from the cache: the demo tiles' cache
   entries are replicated (copied; ``--link`` hard-links them) under new tile names, so no GeoTIFF is decoded.
   Timed as training (random 256 crops + augmentation through a DataLoader) and as validation (whole tiles).

Everything runs in a temp dir (BDCORE_CACHE_DIR too). Page cache is warm (the files were just written).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VEGAS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "spacenet2_vegas_sample"


def _pairs_from_catalog(cat, product="PS-RGB"):
    rows = cat[cat[product].notna()]
    return [(str(r[product]), (str(r["labels"]) if isinstance(r["labels"], str) else None)) for _, r in rows.iterrows()]


def _rate(fn, pairs, min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for p in pairs:
            fn(*p)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def bench_paths(cat, label: str, min_seconds: float) -> dict:
    from bdcore import imagery, labels
    from bdcore.dataset import ArrayCache

    stats = imagery.band_stats(cat, "PS-RGB")
    pairs = _pairs_from_catalog(cat)
    cache = ArrayCache()

    def raw(img, lab):
        x = imagery.normalize(imagery.read_image(img), stats)
        m = labels.tile_mask(img, lab) if lab else np.zeros((1,) + x.shape[1:], np.uint8)
        return x, m

    def cold(img, lab):
        return imagery.normalize(np.asarray(cache.image(img, "PS-RGB")), stats), np.asarray(cache.mask(img, lab))

    t0 = time.perf_counter()
    for p in pairs:
        cold(*p)  # first pass: decode + write the cache
    first_pass = len(pairs) / (time.perf_counter() - t0)
    raw_rate = _rate(raw, pairs, min_seconds)
    cached_rate = _rate(cold, pairs, min_seconds)
    return {
        "set": label,
        "tiles": len(pairs),
        "shape": list(imagery.read_image(pairs[0][0]).shape),
        "raw_tiles_per_s": round(raw_rate, 1),
        "cache_fill_tiles_per_s": round(first_pass, 1),
        "cached_tiles_per_s": round(cached_rate, 1),
        "speedup": round(cached_rate / raw_rate, 1),
    }


def replicate(cat, n: int, dest: Path, link: bool):
    """n tiles named rep<i>, each a hard link of a demo tile's files, with the demo tile's cache entries copied."""
    import pandas as pd

    from bdcore.dataset import ArrayCache

    cache = ArrayCache()
    src = _pairs_from_catalog(cat)
    for img, lab in src:  # make sure the sources are cached
        cache.image(img, "PS-RGB"), cache.mask(img, lab)
    dest.mkdir(parents=True)
    rows = []
    for i in range(n):
        img, lab = src[i % len(src)]
        new_img = dest / f"rep{i}.tif"
        os.link(img, new_img)
        new_lab = None
        if lab:
            new_lab = dest / f"rep{i}.geojson"
            os.link(lab, new_lab)
        for a, b in ((cache.image_entry(img, "PS-RGB"), cache.image_entry(new_img, "PS-RGB")),
                     (cache.mask_entry(img, lab), cache.mask_entry(new_img, new_lab))):
            b.parent.mkdir(parents=True, exist_ok=True)
            (os.link if link else shutil.copyfile)(a, b)
        rows.append({"tile_id": f"rep{i}", "PS-RGB": str(new_img), "labels": str(new_lab) if new_lab else None})
    return pd.DataFrame(rows).set_index("tile_id", drop=False)


def bench_epoch(rep, stats, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from bdcore import imagery, labels
    from bdcore.dataset import SpaceNetSegmentation

    def no_decode(*a, **k):
        raise AssertionError("a GeoTIFF was decoded during the cached epoch")

    imagery.read_image, labels.tile_mask = no_decode, no_decode  # the epoch must come from the cache alone
    out = {"tiles": len(rep)}
    train = SpaceNetSegmentation(rep, list(rep.index), crop_size=256, augment=True, stats=stats, seed=0)
    train.set_epoch(0)
    for nw in sorted({0, workers}):
        g = torch.Generator().manual_seed(0)
        dl = DataLoader(train, batch_size=16, shuffle=True, num_workers=nw, generator=g)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] for b in dl)
        dt = time.perf_counter() - t0
        assert n == len(rep)
        out[f"train_crop256_aug_workers{nw}_s"] = round(dt, 2)
        out[f"train_crop256_aug_workers{nw}_tiles_per_s"] = round(n / dt, 1)
    val = SpaceNetSegmentation(rep, list(rep.index), crop_size=None, augment=False, stats=stats)
    t0 = time.perf_counter()
    for i in range(len(val)):
        item = val[i]
    dt = time.perf_counter() - t0
    assert tuple(item["image"].shape) == (3, 650, 650)
    out["val_full_tile_workers0_s"] = round(dt, 2)
    out["val_full_tile_workers0_tiles_per_s"] = round(len(val) / dt, 1)
    # one augmented full-tile pass too (crop_size=None training)
    full = SpaceNetSegmentation(rep, list(rep.index), crop_size=None, augment=True, stats=stats, seed=0, pad_multiple=32)
    full.set_epoch(0)
    t0 = time.perf_counter()
    for i in range(len(full)):
        full[i]
    out["train_full_tile_aug_workers0_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-tiles", type=int, default=200)
    ap.add_argument("--epoch-tiles", type=int, default=1148)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each rate over at least this long")
    ap.add_argument("--link", action="store_true", help="hard-link replicated cache entries instead of copying")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bdcore-bench-data-") as tmp:
        tmp = Path(tmp)
        os.environ["BDCORE_CACHE_DIR"] = str(tmp / "cache")
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        from bdcore import catalog, demo, imagery

        result = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "page_cache": "warm",
            "sets": [],
        }
        if VEGAS.is_dir():
            result["sets"].append(bench_paths(catalog.load_catalog(VEGAS), "vegas_sample", args.min_seconds))
        t0 = time.perf_counter()
        root = demo.write_demo_aoi(tmp / "demo", n_tiles=args.demo_tiles)
        result["demo_write_s"] = round(time.perf_counter() - t0, 1)
        dcat = catalog.load_catalog(root)
        result["sets"].append(bench_paths(dcat, f"demo_{args.demo_tiles}", args.min_seconds))
        t0 = time.perf_counter()
        rep = replicate(dcat, args.epoch_tiles, tmp / "rep", args.link)
        result["replicate_s"] = round(time.perf_counter() - t0, 1)
        result["epoch"] = bench_epoch(rep, imagery.band_stats(dcat, "PS-RGB"), args.workers)
        result["epoch"]["entries"] = "hard links" if args.link else "copies"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
