"""Benchmark: bdcore's vectorised SpaceNet scorer vs a straightforward per-pair scorer, vs solaris, and on a pile of
overlapping polygons.

    python bench/scoring.py [--images 100] [--buildings 100] [--seed 0] [--solaris] [--overlap 4000]

Synthetic: each image has ~100 non-overlapping buildings (random rectangles on a jittered grid); proposals
are the buildings shifted/resized by a few pixels (so IoU spreads around 0.5), some dropped, plus false
alarms. Both scorers must agree on TP/FP/FN per image. Also times mask_to_polygons (plain, boundary
channel, watershed) on a blurry 1280x1280 map of ~1000 buildings. Prints one JSON object.

``--solaris``: the same kind of synthetic images (250 x 40 buildings, turned by up to 30 degrees) written as SpaceNet
CSVs and scored end to end (both CSVs read, then scored) by bdcore in this process and by solaris's SpaceNet 2 scorer
(``../shared/bench/solaris_eval``, run in a subprocess: it is never imported into or copied into the project); both
must give the same TP/FP/FN per image. Without ``../shared`` the JSON says ``"solaris": {"skipped": ...}``.

``--overlap N``: N stacked truth and N stacked proposal squares in one image (every pair overlaps), exact duplicates
and near-identical ones (jittered < 1 px), and N/4 near-identical squares turned by 10 degrees (no rectangle
shortcut: every pair is a polygon overlay), each scored from its CSVs in a fresh subprocess: seconds and peak RSS
(VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from shapely.affinity import rotate
from shapely.geometry import box

from bdcore.metrics.polygons import mask_to_polygons, polygons_to_mask
from bdcore.metrics.scoring import (
    match_buildings,
    overall_scores,
    read_spacenet_csv,
    score_spacenet,
    write_spacenet_csv,
)

ROOT = Path(__file__).resolve().parent.parent
SOLARIS_DIR = ROOT.parent / "shared" / "bench" / "solaris_eval"

# Runs solaris's scorer (argv: solaris folder, truth CSV, proposal CSV) and prints its seconds and per-image counts.
_SOLARIS_DRIVER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sol_eval.challenges import spacenet_buildings_2
t0, c0 = time.perf_counter(), time.process_time()
_, full = spacenet_buildings_2(sys.argv[3], sys.argv[2])
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
per_image = {str(r.imageID): [int(r.TruePos), int(r.FalsePos), int(r.FalseNeg)] for r in full.itertuples()}
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "per_image": per_image}))
"""

# Scores two CSVs (argv) with bdcore in a fresh process and prints seconds, counts and peak RSS.
_OVERLAP_DRIVER = """
import json, sys, time
from bdcore.metrics.scoring import overall_scores, read_spacenet_csv, score_spacenet
t0 = time.perf_counter()
_, per_image = score_spacenet(read_spacenet_csv(sys.argv[1]), read_spacenet_csv(sys.argv[2]))
seconds = time.perf_counter() - t0
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": round(hwm / 1024, 1), **overall_scores(per_image)}))
"""


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


def synth(n_images: int, n_buildings: int, seed: int, tilt: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth and proposal frames. ``tilt`` > 0: each building turned by up to that many degrees about its centre, and
    its proposal by the same angle give or take 2 (real footprints are seldom axis-aligned rectangles, and bdcore
    scores axis-aligned rectangle pairs without a polygon overlay)."""
    rng = np.random.default_rng(seed)
    turn = np.random.default_rng(seed + 1)  # its own stream: tilt=0 draws exactly what it always did
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
            angle = turn.uniform(-tilt, tilt) if tilt else 0.0
            g = box(x0, y0, x0 + w, y0 + h)
            truth.append((image_id, b, rotate(g, angle) if tilt else g))
            if rng.random() < 0.9:  # detected, jittered
                dx, dy = rng.normal(0, 2.5, size=2)
                sw, sh = rng.normal(1.0, 0.15, size=2).clip(0.5, 1.6)
                cx, cy = x0 + w / 2 + dx, y0 + h / 2 + dy
                pb = box(cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2)
                props.append((image_id, b, rotate(pb, angle + turn.normal(0, 2)) if tilt else pb,
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


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def score_csvs_bdcore(truth_csv: Path, prop_csv: Path) -> tuple[float, float, dict[str, tuple[int, int, int]]]:
    """bdcore end to end in this process: read both CSVs, score. (seconds, CPU seconds, {image: (tp, fp, fn)})."""
    t0, c0 = time.perf_counter(), time.process_time()
    _, per_image = score_spacenet(read_spacenet_csv(truth_csv), read_spacenet_csv(prop_csv))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, {r.imageID: (int(r.TruePos), int(r.FalsePos), int(r.FalseNeg))
                          for r in per_image.itertuples()}


def score_csvs_solaris(truth_csv: Path, prop_csv: Path, solaris_dir: Path = SOLARIS_DIR,
                       timeout: float = 900) -> tuple[float, float, dict[str, tuple[int, int, int]]]:
    """solaris's ``spacenet_buildings_2`` end to end (it reads the CSVs itself) in a subprocess; its own timing
    (seconds, CPU seconds, {image: (tp, fp, fn)})."""
    proc = subprocess.run([sys.executable, "-c", _SOLARIS_DRIVER, str(solaris_dir), str(truth_csv), str(prop_csv)],
                          check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"solaris scorer failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    out = _last_json(proc.stdout)
    return out["seconds"], out["cpu_seconds"], {k: tuple(v) for k, v in out["per_image"].items()}


def _totals(per_image: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    tp, fp, fn = (sum(v[i] for v in per_image.values()) for i in range(3))
    return {"tp": tp, "fp": fp, "fn": fn}


def solaris_bench(images: int = 250, buildings: int = 40, seed: int = 0, repeat: int = 3,
                  solaris_dir: Path = SOLARIS_DIR, tilt: float = 30.0) -> dict:
    """bdcore vs solaris on the same synthetic SpaceNet CSVs, end to end; asserts the same TP/FP/FN per image.
    Buildings are turned by up to ``tilt`` degrees, so every pair takes bdcore's general (polygon overlay) path."""
    if not (solaris_dir / "sol_eval").is_dir():
        return {"skipped": f"{solaris_dir} not found (it lives in ../shared beside the checkout)"}
    truth, props = synth(images, buildings, seed, tilt)
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv, prop_csv = Path(tmp) / "truth.csv", Path(tmp) / "proposals.csv"
        write_spacenet_csv(truth_csv, truth.assign(Confidence=1.0))
        write_spacenet_csv(prop_csv, props)
        sol_s, sol_cpu, sol = score_csvs_solaris(truth_csv, prop_csv, solaris_dir)
        runs = [score_csvs_bdcore(truth_csv, prop_csv) for _ in range(max(1, repeat))]
        read_s = min(_time(lambda: (read_spacenet_csv(truth_csv), read_spacenet_csv(prop_csv)))
                     for _ in range(max(1, repeat)))
    ours_s, ours_cpu, ours = min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]
    assert ours == sol, "bdcore and solaris disagree on TP/FP/FN per image"
    return {"images": images, "tilt_deg": tilt, "truth_buildings": len(truth), "proposals": len(props),
            **_totals(ours),
            "agree_per_image": True, "bdcore_s": round(ours_s, 4), "bdcore_csv_read_s": round(read_s, 4),
            "solaris_s": round(sol_s, 3), "speedup": round(sol_s / ours_s, 1), "bdcore_best_of": max(1, repeat),
            "bdcore_cpu_s": round(ours_cpu, 4), "solaris_cpu_s": round(sol_cpu, 3),
            "speedup_cpu": round(sol_cpu / max(ours_cpu, 1e-9), 1)}


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overlap_csvs(n: int, dest: Path, seed: int = 0, jitter: float = 1.0, angle: float = 0.0) -> tuple[Path, Path]:
    """n near-identical truth and n near-identical proposal squares (40 px, corners jittered by up to ``jitter`` px;
    0: exact duplicates; turned by ``angle`` degrees) in one image."""
    rng = np.random.default_rng(seed)

    def rows(k0: int) -> list[tuple]:
        x, y = 300 + jitter * rng.uniform(-0.5, 0.5, size=(2, n))
        return [("AOI_9_Overlap_img1", k0 + i, rotate(box(x[i], y[i], x[i] + 40, y[i] + 40), angle), float(c))
                for i, c in enumerate(rng.random(n))]

    truth_csv, prop_csv = dest / "overlap_truth.csv", dest / "overlap_proposals.csv"
    write_spacenet_csv(truth_csv, rows(0))
    write_spacenet_csv(prop_csv, rows(n))
    return truth_csv, prop_csv


def overlap_bench(n: int = 4000, seed: int = 0, jitter: float = 1.0, angle: float = 0.0,
                  timeout: float = 1200) -> dict:
    """The stacked-polygons case (issue 13.6) scored from its CSVs in a fresh process: seconds and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv, prop_csv = overlap_csvs(n, Path(tmp), seed, jitter, angle)
        csv_kb = round(truth_csv.stat().st_size / 1024)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-c", _OVERLAP_DRIVER, str(truth_csv), str(prop_csv)],
                              check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"polygons": n, "error": proc.stderr[-1500:]}
    out = _last_json(proc.stdout)
    return {"polygons_each": n, "jitter_px": jitter, "angle_deg": angle, "csv_kb_each": csv_kb, "pairs": n * n, "seconds": round(out["seconds"], 2),
            "peak_rss_mb": out["peak_rss_mb"], "tp": out["tp"], "fp": out["fp"], "fn": out["fn"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--buildings", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised scorer")
    ap.add_argument("--solaris", action="store_true", help="also time solaris's scorer on the same CSVs")
    ap.add_argument("--solaris-images", type=int, default=250)
    ap.add_argument("--solaris-buildings", type=int, default=40)
    ap.add_argument("--overlap", type=int, default=0, metavar="N",
                    help="also score N stacked near-identical polygons in one image (0: skip; issue case: 4000)")
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
        **({"solaris": solaris_bench(args.solaris_images, args.solaris_buildings, args.seed, args.repeat)}
           if args.solaris else {}),
        **({"overlap_duplicates": overlap_bench(args.overlap, args.seed, jitter=0.0),
            "overlap_near_identical": overlap_bench(args.overlap, args.seed),
            # turned squares take the polygon-overlay path: O(pairs) GEOS time, so a quarter of the polygons
            "overlap_near_identical_turned": overlap_bench(max(1, args.overlap // 4), args.seed, angle=10.0)}
           if args.overlap else {}),
    }, indent=2))


if __name__ == "__main__":
    main()
