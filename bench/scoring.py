"""Benchmark: bdcore's vectorised SpaceNet scorer vs a straightforward per-pair scorer.

    python bench/scoring.py [--images 100] [--buildings 100] [--seed 0]

Synthetic: each image has ~100 non-overlapping buildings (random rectangles on a jittered grid); proposals
are the buildings shifted/resized by a few pixels (so IoU spreads around 0.5), some dropped, plus false
alarms. Both scorers must agree on TP/FP/FN per image. Also times mask_to_polygons (plain, boundary
channel, watershed) on a blurry 1280x1280 map of ~1000 buildings. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pandas as pd
from scipy import ndimage
from shapely.geometry import box

from bdcore.metrics.polygons import mask_to_polygons, polygons_to_mask
from bdcore.metrics.scoring import match_buildings, overall_scores, score_spacenet


def polygonize_bench(size: int = 1280, seed: int = 0) -> dict:
    """mask_to_polygons on a blurry size x size probability map with ~1000 buildings (some touching)."""
    rng = np.random.default_rng(seed)
    truth = [box(c, r, c + int(w), r + int(h)) for r in range(0, size - 40, 40) for c in range(0, size - 40, 40)
             for w, h in [rng.integers(15, 41, size=2)]]
    mask = polygons_to_mask(truth, (size, size)).astype(np.float32)
    prob = ndimage.gaussian_filter(mask, 1.5) * 0.9 + rng.random(mask.shape).astype(np.float32) * 0.1
    band = np.zeros_like(prob)
    for g in truth:
        x0, y0, x1, y1 = (int(v) for v in g.bounds)
        band[y0:y1, [x0, x1 - 1]] = 1
        band[[y0, y1 - 1], x0:x1] = 1
    out = {"polygonize_size": size, "polygonize_buildings": len(truth)}
    for name, kw in [("none", {}), ("boundary", {"boundary": band}), ("watershed", {"split": "watershed"})]:
        t0 = time.perf_counter()
        polys = mask_to_polygons(prob, **kw)
        out[f"polygonize_{name}_s"] = round(time.perf_counter() - t0, 3)
        out[f"polygonize_{name}_f1"] = round(match_buildings(truth, polys)["f1"], 4)
    return out


def synth(n_images: int, n_buildings: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth, props = [], []
    side = int(np.ceil(np.sqrt(n_buildings)))
    cell = 650 / side
    for i in range(n_images):
        image_id = f"AOI_9_Bench_img{i}"
        for b in range(n_buildings):
            r, c = divmod(b, side)
            w, h = rng.uniform(6, cell - 8, size=2)
            x0 = c * cell + rng.uniform(1, cell - w - 1)
            y0 = r * cell + rng.uniform(1, cell - h - 1)
            g = box(x0, y0, x0 + w, y0 + h)
            truth.append((image_id, b, g))
            if rng.random() < 0.9:  # detected, jittered
                dx, dy = rng.normal(0, 2.5, size=2)
                sw, sh = rng.normal(1.0, 0.15, size=2).clip(0.5, 1.6)
                cx, cy = x0 + w / 2 + dx, y0 + h / 2 + dy
                props.append((image_id, b, box(cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2),
                              float(rng.random())))
        for k in range(n_buildings // 10):  # false alarms, may overlap buildings
            x0, y0 = rng.uniform(0, 620, size=2)
            w, h = rng.uniform(5, 30, size=2)
            props.append((image_id, n_buildings + k, box(x0, y0, x0 + w, y0 + h), float(rng.random())))
    t = pd.DataFrame(truth, columns=["ImageId", "BuildingId", "geometry"])
    p = pd.DataFrame(props, columns=["ImageId", "BuildingId", "geometry", "Confidence"])
    return t, p


def naive_score(truth: pd.DataFrame, props: pd.DataFrame, iou_threshold: float = 0.5,
                min_area: float = 20.0) -> dict[str, tuple[int, int, int]]:
    """Per image: every proposal (by confidence) against every unmatched truth polygon, one pair at a time."""
    out = {}
    for image_id in sorted(set(truth["ImageId"]) | set(props["ImageId"])):
        tg = [g for g in truth.loc[truth["ImageId"] == image_id, "geometry"] if g.area >= min_area]
        pp = props[props["ImageId"] == image_id]
        pp = pp.iloc[np.argsort(-pp["Confidence"].to_numpy(), kind="stable")]
        pg = [g for g in pp["geometry"] if g.area > min_area]
        free = list(range(len(tg)))
        tp = 0
        for p in pg:
            best, best_iou = None, -1.0
            for j in free:
                t = tg[j]
                if not p.intersects(t):
                    continue
                iou = p.intersection(t).area / p.union(t).area
                if iou > best_iou:
                    best, best_iou = j, iou
            if best is not None and best_iou > iou_threshold:
                free.remove(best)
                tp += 1
        out[image_id] = (tp, len(pg) - tp, sum(1 for j in free if tg[j].area > 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--buildings", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised scorer")
    args = ap.parse_args()

    truth, props = synth(args.images, args.buildings, args.seed)

    fast_times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        _, per_image = score_spacenet(truth, props)
        fast_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    slow = naive_score(truth, props)
    slow_time = time.perf_counter() - t0

    fast = {r.imageID: (int(r.TruePos), int(r.FalsePos), int(r.FalseNeg)) for r in per_image.itertuples()}
    assert fast == slow, "vectorised and per-pair scorers disagree"
    total = overall_scores(per_image)
    print(json.dumps({
        "images": args.images, "truth_buildings": len(truth), "proposals": len(props),
        "tp": total["tp"], "fp": total["fp"], "fn": total["fn"], "f1": round(total["f1"], 4),
        "bdcore_score_s": round(min(fast_times), 4), "naive_per_pair_s": round(slow_time, 4),
        "speedup": round(slow_time / min(fast_times), 1), "agree": True,
        "python": platform.python_version(), "machine": platform.machine(),
        **polygonize_bench(),
    }, indent=2))


if __name__ == "__main__":
    main()
