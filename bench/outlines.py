"""Benchmark: the outline choices of ``polygons.mask_to_polygons`` (none, simplify, orthogonal).

    python bench/outlines.py [--vegas DIR] [--demo-tiles 24] [--sigma 1.5] [--noise 0.15] [--seed 0] [--train-steps 0]

For each labelled tile of the real Vegas sample (``../shared/data/spacenet2_vegas_sample``, else the two tiles in
``tests/data``) and of a synthetic demo AOI (``demo.write_demo_aoi``), a model-like probability map is made from the
ground truth: the rasterised footprint and boundary band (``labels.tile_mask(boundary=True)``) blurred (Gaussian,
``--sigma`` px) plus smooth noise (a Gaussian field of sigma 2 px, amplitude ``--noise``), which rounds corners and
makes edges ragged as a trained model does. The map is polygonised with each outline choice and scored against the
label polygons (SpaceNet matching, IoU >= 0.5, polygons < 20 px² ignored). "clean" is the same on the unblurred
rasterised truth. With ``--train-steps N``, "trained" is the probability map of a tiny model (U-Net/resnet18, random
init, N steps of 16 random 64² crops) trained in-process on the set's tiles and predicted on all of them (the tiles
it trained on: this compares outlines of real model output, it does not measure generalisation).
Reported per set, condition and outline: SpaceNet F1 (summed TP/FP/FN), mean IoU of matched
buildings, mean vertices per building, and polygonisation time per tile; ``best`` = the highest mean F1 over the
model-like (and trained) rows, ties to fewer vertices. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
VEGAS = ROOT.parent / "shared" / "data" / "spacenet2_vegas_sample"
VEGAS_SMALL = ROOT / "tests" / "data" / "spacenet2_vegas"


def tile_inputs(root: Path) -> list[tuple[str, np.ndarray, list]]:
    """(tile id, truth (2,H,W) footprint + boundary band, truth pixel polygons) of every labelled tile."""
    from bdcore.data import imagery, labels
    from bdcore.data.catalog import labelled_tiles, load_catalog

    out = []
    for tid, row in labelled_tiles(load_catalog(root)).iterrows():
        image = row["PS-RGB"]
        prof = imagery.read_profile(image)
        truth = labels.pixel_polygons(labels.read_buildings(row["labels"], crs=prof["crs"]), prof["transform"])
        out.append((str(tid), labels.tile_mask(image, row["labels"], boundary=True).astype(np.float32), truth))
    return out


def model_like(mask: np.ndarray, sigma: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A blurred, smoothly noisy version of a 0/1 mask (C,H,W), clipped to [0, 1]."""
    if sigma <= 0 and noise <= 0:
        return mask
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), (0, 2, 2))
    field *= noise / max(float(field.std()), 1e-6)
    return np.clip(ndimage.gaussian_filter(mask, (0, sigma, sigma)) + field, 0, 1)


def score(tiles: list[tuple[str, np.ndarray, list]], outline: str) -> dict:
    from bdcore.metrics.polygons import mask_to_polygons, vertex_count
    from bdcore.metrics.scoring import match_buildings, precision_recall_f1

    tp = fp = fn = 0
    ious, vertices, seconds = [], [], 0.0
    for _, prob, truth in tiles:
        t0 = time.perf_counter()
        props = mask_to_polygons(prob[0], boundary=prob[1] if len(prob) > 1 else None, outline=outline)
        seconds += time.perf_counter() - t0
        m = match_buildings(truth, props)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        ious += [iou for _, _, iou in m["matches"]]
        vertices += [vertex_count(p) for p, _ in props]
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4), "tp": tp, "fp": fp,
            "fn": fn, "mean_iou": round(float(np.mean(ious)), 4) if ious else 0.0,
            "vertices_per_building": round(float(np.mean(vertices)), 1) if vertices else 0.0,
            "ms_per_tile": round(1000 * seconds / max(len(tiles), 1), 1)}


def trained_probs(root: Path, tiles: list[tuple[str, np.ndarray, list]], steps: int,
                  work: Path) -> list[tuple[str, np.ndarray, list]]:
    """(tile id, probabilities (1,H,W), truth) of a tiny model trained ``steps`` steps on ``root``'s tiles."""
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from bdcore.engine.train import train
    from bdcore.inference.evaluate import load_prediction

    epochs = max(1, steps // 20)
    cfg = RunConfig(data_root=str(root), encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=16,
                    epochs=epochs, steps_per_epoch=max(1, steps // epochs), workers=0, lr=1e-3, warmup_epochs=0.2,
                    device="cpu", log_every=10, eval_every=epochs, building_f1_tiles=0, val_fraction=0.2)
    run_dir = runs.create_run(cfg, name="outlines", root=work)
    train(cfg, run_dir)
    return [(tid, load_prediction(run_dir, "last", tid, device="cpu"), truth) for tid, _, truth in tiles]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vegas", type=Path, default=None, help=f"Vegas folder (default {VEGAS}, else {VEGAS_SMALL})")
    ap.add_argument("--demo-tiles", type=int, default=24)
    ap.add_argument("--sigma", type=float, default=1.5, help="blur of the truth mask, px")
    ap.add_argument("--noise", type=float, default=0.15, help="amplitude (std) of the smooth noise field")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=0, help="also score a tiny model trained this many steps on "
                    "the Vegas tiles (0: skip)")
    args = ap.parse_args(argv)
    from bdcore.metrics.polygons import DEFAULT_OUTLINE, OUTLINES

    vegas = args.vegas or (VEGAS if VEGAS.is_dir() else VEGAS_SMALL)

    from bdcore.data.demo import write_demo_aoi

    old_cache = os.environ.get("BDCORE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bdcore-bench-outlines-") as tmp:
        os.environ["BDCORE_CACHE_DIR"] = str(Path(tmp) / "cache")  # catalogs of this run only
        try:
            sets = {f"vegas ({vegas.name})": tile_inputs(vegas),
                    f"demo ({args.demo_tiles} tiles)": tile_inputs(write_demo_aoi(Path(tmp) / "demo",
                                                                                 args.demo_tiles))}
            t0 = time.perf_counter()
            trained = trained_probs(vegas, sets[f"vegas ({vegas.name})"], args.train_steps, Path(tmp) / "runs") \
                if args.train_steps > 0 else None
            train_s = round(time.perf_counter() - t0, 1)
        finally:
            if old_cache is None:
                os.environ.pop("BDCORE_CACHE_DIR", None)
            else:
                os.environ["BDCORE_CACHE_DIR"] = old_cache
    rng = np.random.default_rng(args.seed)
    results = []
    for name, tiles in sets.items():
        for cond in ("model-like", "clean"):
            sigma, noise = (args.sigma, args.noise) if cond == "model-like" else (0.0, 0.0)
            probs = [(tid, model_like(mask, sigma, noise, rng), truth) for tid, mask, truth in tiles]
            for outline in OUTLINES:
                results.append({"set": name, "condition": cond, "outline": outline, "tiles": len(tiles),
                                "buildings": sum(len(t) for _, _, t in tiles), **score(probs, outline)})
    if trained is not None:
        for outline in OUTLINES:
            results.append({"set": f"vegas ({vegas.name})", "condition": f"trained ({args.train_steps} steps)",
                            "outline": outline, "tiles": len(trained), "buildings": sum(len(t) for _, _, t in trained),
                            **score(trained, outline)})
    judged = [r for r in results if r["condition"] != "clean"]  # model-like and trained: what a user gets
    f1 = {o: round(float(np.mean([r["f1"] for r in judged if r["outline"] == o])), 4) for o in OUTLINES}
    vertices = {o: float(np.mean([r["vertices_per_building"] for r in judged if r["outline"] == o])) for o in OUTLINES}
    best = max(OUTLINES, key=lambda o: (f1[o], -vertices[o]))  # ties: fewer vertices
    print(json.dumps({"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                      "python": platform.python_version(), "sigma": args.sigma, "noise": args.noise,
                      "seed": args.seed, "train_steps": args.train_steps,
                      "train_s": train_s if trained is not None else None, "results": results,
                      "mean_f1": f1, "best": best, "default": DEFAULT_OUTLINE}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
