"""Benchmark: the data pipeline from GeoTIFF vs from bdcore's decoded-array cache.

    python bench/data.py [--demo-tiles 200] [--epoch-tiles 1148] [--workers 2] [--link] [--crop 512] [--crops-only]

1. tiles/s (and CPU ms/tile, which shared machines disturb less) for the dataset's whole-tile item: decode +
   normalise + rasterize straight from GeoTIFF/GeoJSON (``cache=False``) vs from the cache (memmap + normalise),
   on the real Vegas sample and on a synthetic demo AOI (``demo.write_demo_aoi``, 650x650x3 uint16 tiles).
   ``decode_only_*``: the arrays alone (uint16 image + uint8 mask, no normalisation), i.e. what the cache replaces;
   the full item also pays the per-sample normalisation (~1 ms/tile), which is the same on both paths.
2. A full epoch over ``--epoch-tiles`` Paris-sized tiles (650x650x3 uint16) from the cache: the demo tiles' cache
   entries are replicated (copied; ``--link`` hard-links them) under new tile names, so no GeoTIFF is decoded.
   Timed as training (random 256 crops + augmentation through a DataLoader) and as validation (whole tiles).

3. ``crops``: what ONE loader worker delivers for training, ``--crop``² random crops with augmentation, batches of
   16, from the cache: the ``cpu`` path (normalise + jitter + flips in the worker, float32 items) vs the ``raw`` path
   (``SampleSpec(raw=True)``: uint16 crop + uint8 mask, flips in the worker; normalisation and jitter on the device,
   ``device_batch.BatchPrep``). ``*_crops_per_s``: items + collate in one process (what one worker does, CPU bound);
   ``*_cpu_ms_per_crop``: its CPU time per crop; ``*_loader_1worker_crops_per_s``: a real DataLoader with one
   worker, timed after its first batch; ``raw_device_prep_ms_per_crop``: BatchPrep on THIS machine's CPU (on a GPU
   it is a few batched kernels). Goal: raw >= 250 crops/s of 512² per worker.

Everything runs in a temp dir (BDCORE_CACHE_DIR too). Page cache is warm (the files were just written).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VEGAS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "spacenet2_vegas_sample"


def _pairs_from_catalog(cat, product="PS-RGB"):
    rows = cat[cat[product].notna()]
    return [(str(r[product]), (str(r["labels"]) if isinstance(r["labels"], str) else None)) for _, r in rows.iterrows()]


def _rate(fn, n_items: int, min_seconds: float) -> tuple[float, float]:
    """(items per wall second, CPU ms per item) over whole passes lasting at least ``min_seconds``."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for i in range(n_items):
            fn(i)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt, (time.process_time() - c0) / n * 1000


def bench_paths(cat, label: str, min_seconds: float) -> dict:
    """The dataset's own whole-tile item path (image decode + normalise, mask rasterize -> float tensors),
    once with ``cache=False`` (GeoTIFF/GeoJSON every time) and once from the cache."""
    from bdcore.data import imagery
    from bdcore.data.cache import ArrayCache
    from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation

    stats = imagery.band_stats(cat, "PS-RGB")
    ids = [t for t in cat.index if isinstance(cat.loc[t, "PS-RGB"], str)]
    raw = SpaceNetSegmentation(cat, ids, SampleSpec(crop_size=None), stats=stats, cache=False)
    cached = SpaceNetSegmentation(cat, ids, SampleSpec(crop_size=None), stats=stats, cache=ArrayCache())
    t0 = time.perf_counter()
    for i in range(len(cached)):  # first pass: decode + write the cache
        cached[i]
    fill = len(cached) / (time.perf_counter() - t0)
    for i in range(len(raw)):  # the raw path and the cache give the same items
        a, b = raw[i], cached[i]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy()) and np.array_equal(a["mask"].numpy(), b["mask"].numpy())
    from bdcore.data.labels import tile_mask

    def decode_raw(i):
        return imagery.read_image(raw.image_paths[i]), tile_mask(raw.image_paths[i], raw.label_paths[i])

    def decode_cached(i):  # materialised copies, so the memmap's lazy reads are paid for
        return np.array(cached.raw_image(i)), np.array(cached.raw_mask(i))

    dec_raw, dec_raw_cpu = _rate(decode_raw, len(raw), min_seconds)
    dec_cached, dec_cached_cpu = _rate(decode_cached, len(cached), min_seconds)
    raw_rate, raw_cpu = _rate(raw.__getitem__, len(raw), min_seconds)
    cached_rate, cached_cpu = _rate(cached.__getitem__, len(cached), min_seconds)
    return {
        "set": label,
        "tiles": len(ids),
        "shape": list(raw[0]["image"].shape),
        "raw_tiles_per_s": round(raw_rate, 1),
        "raw_cpu_ms_per_tile": round(raw_cpu, 2),
        "cache_fill_tiles_per_s": round(fill, 1),
        "cached_tiles_per_s": round(cached_rate, 1),
        "cached_cpu_ms_per_tile": round(cached_cpu, 2),
        "speedup_wall": round(cached_rate / raw_rate, 1),
        "speedup_cpu": round(raw_cpu / cached_cpu, 1),
        "decode_only_raw_tiles_per_s": round(dec_raw, 1),
        "decode_only_cached_tiles_per_s": round(dec_cached, 1),
        "decode_only_speedup_wall": round(dec_cached / dec_raw, 1),
        "decode_only_speedup_cpu": round(dec_raw_cpu / dec_cached_cpu, 1),
    }


def replicate(cat, n: int, dest: Path, link: bool):
    """n tiles named rep<i>, each a hard link of a demo tile's files, with the demo tile's cache entries copied."""
    import pandas as pd

    from bdcore.data.cache import ArrayCache

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

    from bdcore.data import imagery, labels
    from bdcore.data.augment import Augment
    from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation

    def no_decode(*a, **k):
        raise AssertionError("a GeoTIFF was decoded during the cached epoch")

    imagery.read_image, labels.tile_mask = no_decode, no_decode  # the epoch must come from the cache alone
    out = {"tiles": len(rep)}
    train = SpaceNetSegmentation(rep, list(rep.index), SampleSpec(crop_size=256, augment=Augment(), seed=0), stats=stats)
    train.set_epoch(0)
    t0 = time.perf_counter()
    for i in range(len(train)):  # first touch of the freshly written entries (page cache, writeback)
        train[i]
    out["first_touch_pass_s"] = round(time.perf_counter() - t0, 2)
    for nw in sorted({0, workers}):
        g = torch.Generator().manual_seed(0)
        dl = DataLoader(train, batch_size=16, shuffle=True, num_workers=nw, generator=g)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] for b in dl)
        dt = time.perf_counter() - t0
        assert n == len(rep)
        out[f"train_crop256_aug_workers{nw}_s"] = round(dt, 2)
        out[f"train_crop256_aug_workers{nw}_tiles_per_s"] = round(n / dt, 1)
    val = SpaceNetSegmentation(rep, list(rep.index), SampleSpec(crop_size=None), stats=stats)
    t0 = time.perf_counter()
    for i in range(len(val)):
        item = val[i]
    dt = time.perf_counter() - t0
    assert tuple(item["image"].shape) == (3, 650, 650)
    out["val_full_tile_workers0_s"] = round(dt, 2)
    out["val_full_tile_workers0_tiles_per_s"] = round(len(val) / dt, 1)
    # one augmented full-tile pass too (crop_size=None training)
    spec = SampleSpec(crop_size=None, augment=Augment(), seed=0, pad_multiple=32)
    full = SpaceNetSegmentation(rep, list(rep.index), spec, stats=stats)
    full.set_epoch(0)
    t0 = time.perf_counter()
    for i in range(len(full)):
        full[i]
    out["train_full_tile_aug_workers0_s"] = round(time.perf_counter() - t0, 2)
    return out


def bench_crops(rep, stats, size: int, n: int, min_seconds: float) -> dict:
    """One worker's training crops/s at ``size``², the CPU path vs the raw path (see the module docstring, 3.)."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    from bdcore.data.augment import Augment
    from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation, worker_init
    from bdcore.data.device_batch import BatchPrep

    batch = 16
    out: dict = {"crop": size, "batch": batch}
    for name, raw in (("cpu", False), ("raw", True)):
        spec = SampleSpec(crop_size=size, augment=Augment(), seed=0, samples_per_tile=max(1, -(-n // len(rep))),
                          raw=raw)
        ds = SpaceNetSegmentation(rep, list(rep.index), spec, stats=stats)
        n_items = min(n, len(ds))

        def one_batch(b: int, ds=ds) -> None:
            default_collate([ds[(0, (b * batch + j) % len(ds))] for j in range(batch)])

        rate, cpu = _rate(one_batch, max(1, n_items // batch), min_seconds)
        out[f"{name}_crops_per_s"] = round(rate * batch, 1)
        out[f"{name}_cpu_ms_per_crop"] = round(cpu / batch, 2)
        sampler = [[(1, i) for i in range(k, min(k + batch, n_items))] for k in range(0, n_items, batch)]
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=1, prefetch_factor=4, worker_init_fn=worker_init)
        it = iter(loader)
        first = next(it)
        t0, got = time.perf_counter(), 0
        for b in it:
            got += b["image"].shape[0]
        out[f"{name}_loader_1worker_crops_per_s"] = round(got / max(1e-9, time.perf_counter() - t0), 1)
        out[f"{name}_item_bytes"] = int(first["image"][0].numel() * first["image"].element_size()
                                        + first["mask"][0].numel() * first["mask"].element_size())
        if raw:
            prep = BatchPrep(stats.lo, stats.hi, torch.device("cpu"))
            rate, _ = _rate(lambda _i, prep=prep, first=first: prep(first), 1, min_seconds)
            out["raw_device_prep_ms_per_crop"] = round(1000 / (rate * first["image"].shape[0]), 2)
    out["speedup_crops_per_s"] = round(out["raw_crops_per_s"] / out["cpu_crops_per_s"], 2)
    out["goal_raw_crops_per_s"] = 250
    out["goal_met"] = out["raw_crops_per_s"] >= 250
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-tiles", type=int, default=200)
    ap.add_argument("--epoch-tiles", type=int, default=1148)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each rate over at least this long")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads in the main process")
    ap.add_argument("--link", action="store_true", help="hard-link replicated cache entries instead of copying")
    ap.add_argument("--crop", type=int, default=512, help="crop side of the one-worker crops/s measurement")
    ap.add_argument("--crop-items", type=int, default=256, help="crops per pass of that measurement")
    ap.add_argument("--crops-only", action="store_true", help="only the one-worker crops/s measurement (3.)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bdcore-bench-data-") as tmp:
        tmp = Path(tmp)
        os.environ["BDCORE_CACHE_DIR"] = str(tmp / "cache")
        import torch

        # The data path needs no torch intra-op threads (DataLoader workers run with 1 thread too). With 2 threads
        # on a busy 2-core machine, default_collate's torch.stack spins in OpenMP and a num_workers=0 epoch got
        # ~6x slower, which measured the machine, not the pipeline.
        torch.set_num_threads(args.torch_threads)
        from bdcore.data import catalog, demo, imagery

        result = {
            "load_avg_1m_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "page_cache": "warm",
            "torch_threads": args.torch_threads,
            "sets": [],
        }
        if VEGAS.is_dir() and not args.crops_only:
            result["sets"].append(bench_paths(catalog.load_catalog(VEGAS), "vegas_sample", args.min_seconds))
        t0 = time.perf_counter()
        root = demo.write_demo_aoi(tmp / "demo", n_tiles=args.demo_tiles)
        result["demo_write_s"] = round(time.perf_counter() - t0, 1)
        dcat = catalog.load_catalog(root)
        if not args.crops_only:
            result["sets"].append(bench_paths(dcat, f"demo_{args.demo_tiles}", args.min_seconds))
        t0 = time.perf_counter()
        rep = replicate(dcat, args.epoch_tiles, tmp / "rep", args.link)
        result["replicate_s"] = round(time.perf_counter() - t0, 1)
        stats = imagery.band_stats(dcat, "PS-RGB")
        result["crops"] = bench_crops(rep, stats, args.crop, args.crop_items, args.min_seconds)
        if not args.crops_only:
            result["epoch"] = bench_epoch(rep, stats, args.workers)
            result["epoch"]["entries"] = "hard links" if args.link else "copies"
        result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
