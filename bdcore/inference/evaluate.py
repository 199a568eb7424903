"""A run's checkpoint over catalog tiles: per-tile pixel and SpaceNet building scores, cached predictions.

Probabilities are computed once per checkpoint file and cached as uint8 ``.npy`` (K,H,W; 0-255) under
``run_dir/predictions/<which>-<key>/`` where ``key`` hashes the checkpoint's head bytes, size and mtime: a new
``best.pt`` gets a new folder (the stale one is removed), and changing the threshold only re-scores. Predictions
with ``normalize="image"`` (per-image 2-98 % stretch instead of the training band statistics) are cached apart, in
``<which>-<key>-image/``.

Tiles whose pixels look unlike the training data (``imagery.check_input``, done when a tile is predicted) are
reported in ONE warning line per evaluation and in ``summary["warning"]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bdcore.atomic import atomic_write, atomic_write_json
from bdcore.engine.rundir import RunDir

from bdcore.progress import Progress, terminal_progress

log = logging.getLogger(__name__)

WHICH = ("best", "last")


class EvaluationError(ValueError):
    """The run cannot be evaluated as asked (no checkpoint, unknown tiles, ...); the message says what to do."""


# ---------------------------------------------------------------------------------------------- locations


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    run_dir = Path(run_dir)
    if which not in WHICH:
        raise EvaluationError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    path = RunDir(run_dir).checkpoint(which)
    if not path.is_file():
        other = list(RunDir(run_dir).checkpoints())
        hint = f"; {other[0]}.pt exists: use which={other[0]!r}" if other else "; let the run finish an epoch first"
        raise EvaluationError(f"{path} not found{hint}")
    return path


def checkpoint_key(path: str | os.PathLike, head_bytes: int = 1 << 20) -> str:
    """Short hash of a checkpoint file's first MiB + size + mtime (cheap; changes whenever the file is rewritten)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(head_bytes))
    return h.hexdigest()[:12]


def _cache_name(which: str, key: str, normalize: str = "checkpoint") -> str:
    from bdcore.inference.predict import Normalization

    Normalization().for_mode(normalize)  # PredictError (a ValueError) for an unknown mode
    return f"{which}-{key}" + ("" if normalize == "checkpoint" else f"-{normalize}")


def prediction_dir(run_dir: str | os.PathLike, which: str = "best", normalize: str = "checkpoint") -> Path:
    """The cache folder for the current ``which`` checkpoint and normalisation mode (not created)."""
    ck = checkpoint_path(run_dir, which)
    return RunDir(run_dir).predictions / _cache_name(which, checkpoint_key(ck), normalize)


# ------------------------------------------------------------------------------------------------- inputs


def run_config(run_dir: str | os.PathLike):
    from bdcore.engine.config import RunConfig

    path = RunDir(run_dir).config
    if not path.is_file():
        raise EvaluationError(f"{path} not found: {run_dir} is not a run folder")
    return RunConfig.load(path)


def eval_tiles(cfg, tiles: str | Sequence[str] = "val"):
    """(catalog, labelled catalog, tile ids) for ``tiles`` = "val" (the run's own split), "all" (every labelled
    tile) or a list of tile ids. "val" is ``split.config_split``, the split the run trained on."""
    from bdcore.data.catalog import CatalogError, load_catalog
    from bdcore.data.split import config_split

    cat = load_catalog(cfg.resolved_data_root())
    try:  # unlabelled tiles are skipped: with no truth there is nothing to score
        split = config_split(cat, cfg, purpose="evaluation")
    except CatalogError as exc:
        raise EvaluationError(str(exc)) from None
    labelled = split.tiles
    if isinstance(tiles, str) and tiles == "val":
        ids = split.val
    elif isinstance(tiles, str) and tiles == "all":
        ids = sorted(str(t) for t in labelled.index)
    elif isinstance(tiles, str):
        raise EvaluationError(f"tiles must be 'val', 'all' or a list of tile ids, got {tiles!r}")
    else:
        ids = [str(t) for t in tiles]
        unknown = [t for t in ids if t not in cat.index]
        if unknown:
            raise EvaluationError(f"tiles not in the catalog of {cfg.resolved_data_root()}: {', '.join(unknown[:5])}")
        unlabelled = [t for t in ids if t not in labelled.index]
        if unlabelled:  # asked for by name: say so rather than silently scoring fewer tiles
            raise EvaluationError(f"tiles without labels (no truth to score against): {', '.join(unlabelled[:5])}; "
                                  "leave them out or add their geojson_buildings files")
    return cat, labelled, list(ids)


# ---------------------------------------------------------------------------------------------- predictions


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write(path, lambda f: f.write(buf.getvalue()), "wb")


def _load_npy(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except (FileNotFoundError, ValueError, OSError, EOFError):
        return None


class _LazyPredictor:
    """Loads the model only if some tile is not cached."""

    def __init__(self, ckpt: Path, cat, product: str, device: str):
        self.ckpt, self.cat, self.product, self.device = ckpt, cat, product, device
        self._p = None

    def get(self):
        if self._p is None:
            from bdcore.inference.predict import Normalization, Predictor

            p = Predictor.from_checkpoint(self.ckpt, device=self.device)
            if p.normalization.source == "percentile":
                # the checkpoint does not carry its band stats: recompute them as training did (cached on disk)
                from bdcore.data import imagery

                st = imagery.band_stats(self.cat, product=self.product)
                p.normalization = Normalization(np.asarray(st.lo, np.float64), np.asarray(st.hi, np.float64), "stats")
            self._p = p
        return self._p


def _predict_tile(predictor, image_path: str, normalize: str = "checkpoint"):
    """(uint8 probabilities, ``imagery.InputCheck`` or None) of one tile; the check runs on the tile already in
    memory (strided sample), against the training statistics, only when those are used."""
    from bdcore.data import imagery

    prof = imagery.read_profile(image_path)
    img = imagery.read_image(image_path)
    norm = predictor.normalization.for_mode(normalize)
    check = norm.check(img, name=Path(image_path).name, nodata=prof.get("nodata"))
    prob = predictor.predict_array(img, nodata=prof.get("nodata"), normalization=norm)
    return np.rint(prob * 255.0).astype(np.uint8), check


def _prepare(run_dir: Path, which: str, cat, device: str, normalize: str = "checkpoint"):
    ck = checkpoint_path(run_dir, which)
    key = checkpoint_key(ck)
    pdir = RunDir(run_dir).predictions / _cache_name(which, key, normalize)
    pdir.mkdir(parents=True, exist_ok=True)
    current = {_cache_name(which, key, m) for m in ("checkpoint", "image")}
    for old in pdir.parent.glob(f"{which}-*"):  # stale caches of earlier versions of this checkpoint
        if old.name not in current and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    meta_path = pdir / "meta.json"
    if not meta_path.exists():
        atomic_write_json(meta_path, {"checkpoint": str(ck), "which": which, "key": key, "normalize": normalize,
                                      "created": time.time()})
    return ck, key, pdir


def load_prediction(run_dir: str | os.PathLike, which: str, tile_id: str, compute: bool = True,
                    device: str = "auto", normalize: str = "checkpoint") -> np.ndarray | None:
    """Cached probabilities (K,H,W float32 in [0,1]) of one tile for the current ``which`` checkpoint; computed and
    cached on a miss (``compute=False``: None on a miss)."""
    run_dir = Path(run_dir)
    pdir = prediction_dir(run_dir, which, normalize)
    arr = _load_npy(pdir / f"{tile_id}.npy")
    if arr is None:
        if not compute:
            return None
        cfg = run_config(run_dir)
        from bdcore.data.catalog import load_catalog

        cat = load_catalog(cfg.resolved_data_root())
        if tile_id not in cat.index:
            raise EvaluationError(f"tile {tile_id} is not in the catalog of {cfg.resolved_data_root()}")
        path = cat.loc[tile_id, cfg.product]
        if not isinstance(path, str) or not path:
            raise EvaluationError(f"tile {tile_id} has no {cfg.product} image")
        ck, _, pdir = _prepare(run_dir, which, cat, device, normalize)
        arr, check = _predict_tile(_LazyPredictor(ck, cat, cfg.product, device).get(), path, normalize)
        if check is not None and not check.ok:
            log.warning(check.message())
        _save_npy(pdir / f"{tile_id}.npy", arr)
    return arr.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------------- scoring


def score_tile(prob: np.ndarray, image_path: str, labels_path: str | None, threshold: float = 0.5,
               min_area: float = 20.0) -> dict:
    """Pixel metrics and SpaceNet building matching of one tile's probabilities (K,H,W in [0,1]) against its labels.

    A tile with no buildings and no prediction is scored as perfect (IoU, precision, recall, F1 = 1), not 0: the
    model got it right, and the Review table must not list it among the worst tiles. Aggregates use summed counts
    (``summarize``), which such a tile does not change."""
    from bdcore.data import imagery, labels
    from bdcore.metrics import scoring
    from bdcore.metrics.polygons import mask_to_polygons

    truth = labels.tile_mask(image_path, labels_path)[0]
    pred = (prob[0] > threshold).astype(np.uint8)
    pix = scoring.pixel_metrics(pred, truth)
    prof = imagery.read_profile(image_path)
    if labels_path:
        gdf = labels.read_buildings(labels_path, crs=prof["crs"])
        truth_polys = labels.pixel_polygons(gdf, prof["transform"])
    else:
        truth_polys = []
    props = mask_to_polygons(prob[0], threshold=threshold, min_area=min_area,
                             boundary=prob[1] if prob.shape[0] > 1 else None)
    m = scoring.match_buildings(truth_polys, [p for p, _ in props], [c for _, c in props], min_area=min_area)
    if pix["tp"] + pix["fp"] + pix["fn"] == 0:
        pix.update(iou=1.0, precision=1.0, recall=1.0, f1=1.0)
    if m["tp"] + m["fp"] + m["fn"] == 0:
        m.update(precision=1.0, recall=1.0, f1=1.0)
    return {
        "pixel_iou": pix["iou"], "pixel_precision": pix["precision"], "pixel_recall": pix["recall"],
        "pixel_f1": pix["f1"], "pixel_tp": int(pix["tp"]), "pixel_fp": int(pix["fp"]), "pixel_fn": int(pix["fn"]),
        "tp": int(m["tp"]), "fp": int(m["fp"]), "fn": int(m["fn"]), "precision": m["precision"],
        "recall": m["recall"], "f1": m["f1"], "n_truth": len(truth_polys), "n_pred": len(props),
    }


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def summarize(df: pd.DataFrame) -> dict:
    """Aggregate scores: pixel metrics and building F1 from summed counts (micro), plus per-tile means."""
    tp, fp, fn = (int(df[c].sum()) if len(df) else 0 for c in ("pixel_tp", "pixel_fp", "pixel_fn"))
    btp, bfp, bfn = (int(df[c].sum()) if len(df) else 0 for c in ("tp", "fp", "fn"))
    prec, rec = _ratio(btp, btp + bfp), _ratio(btp, btp + bfn)
    pprec, prec_rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "n_tiles": int(len(df)),
        "pixel_iou": _ratio(tp, tp + fp + fn),
        "pixel_precision": pprec,
        "pixel_recall": prec_rec,
        "pixel_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "TruePos": btp, "FalsePos": bfp, "FalseNeg": bfn,
        "Precision": prec, "Recall": rec, "F1Score": _ratio(2 * prec * rec, prec + rec),
        "mean_tile_iou": float(df["pixel_iou"].mean()) if len(df) else 0.0,
        "mean_tile_f1": float(df["f1"].mean()) if len(df) else 0.0,
    }


def evaluate_checkpoint(run_dir: str | os.PathLike, which: str = "best", tiles: str | Sequence[str] = "val",
                        threshold: float | None = None, progress: Progress | None = None, device: str = "auto",
                        min_area: float = 20.0, normalize: str = "checkpoint") -> tuple[pd.DataFrame, dict]:
    """Score ``which`` checkpoint of a run on its val tiles (or "all" labelled tiles, or a list of ids); unlabelled
    tiles are never scored (no truth).

    ``normalize``: "checkpoint" (training band statistics, the default) or "image" (per-image 2-98 % stretch; cached
    apart). Tiles predicted now are checked against the training statistics; if any looks unlike the training data,
    ONE warning line is logged and kept in ``summary["warning"]`` (``summary["unlike_training"]`` counts them).

    Returns ``(per_tile_df, summary)``: one row per tile (``tile_id``, ``image_id``, pixel IoU/precision/recall/F1
    and counts, SpaceNet building TP/FP/FN/precision/recall/F1, ``n_truth``, ``n_pred``, ``cached``) and the
    aggregate (summed counts). Probabilities are cached per checkpoint, so a second call (or another threshold)
    does not run the model. ``threshold`` defaults to the run config's."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    threshold = float(cfg.threshold if threshold is None else threshold)
    cat, labelled, ids = eval_tiles(cfg, tiles)
    ck, key, pdir = _prepare(run_dir, which, cat, device, normalize)
    lazy = _LazyPredictor(ck, cat, cfg.product, device)
    rows = []
    n_cached = 0
    unlike = []  # InputChecks of tiles that look unlike the training data
    for i, tid in enumerate(ids):
        row = labelled.loc[tid]
        image_path, labels_path = row[cfg.product], row["labels"]
        cache = pdir / f"{tid}.npy"
        arr = _load_npy(cache)
        cached = arr is not None
        if arr is None:
            arr, check = _predict_tile(lazy.get(), image_path, normalize)
            if check is not None and not check.ok:
                unlike.append(check)
            _save_npy(cache, arr)
        n_cached += cached
        prob = arr.astype(np.float32) / 255.0
        scores = score_tile(prob, image_path, labels_path if isinstance(labels_path, str) else None,
                            threshold=threshold, min_area=min_area)
        rows.append({"tile_id": tid, "image_id": row.get("image_id", tid), **scores, "cached": cached})
        if progress is not None:
            progress(i + 1, len(ids))
    df = pd.DataFrame(rows)
    warning = None
    if unlike:
        warning = unlike[0].message()
        if len(unlike) > 1:
            warning = f"{len(unlike)} of {len(ids) - n_cached} predicted tiles look unlike the training data, e.g. {warning}"
        log.warning(warning)
    summary = {
        "run_id": run_dir.name, "which": which, "checkpoint": str(ck), "key": key, "predictions": str(pdir),
        "tiles": tiles if isinstance(tiles, str) else "list", "threshold": threshold, "normalize": normalize,
        "cached_tiles": n_cached, **summarize(df), "unlike_training": len(unlike), "warning": warning,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    try:
        atomic_write_json(pdir / f"scores-{threshold:g}-{summary['tiles']}.json", summary)
    except OSError as exc:
        log.debug("could not write scores: %s", exc)
    return df, summary


# ------------------------------------------------------------------------------------------------------ CLI


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bdcore.engine.runs import run_path

    run_dir = run_path(args.run)
    with terminal_progress("tile", f"{run_dir.name} {args.which}") as progress:
        df, summary = evaluate_checkpoint(run_dir, which=args.which, tiles=args.tiles, threshold=args.threshold,
                                          progress=progress, device=args.device, normalize=args.normalize)
    if args.json:
        print(json.dumps({"summary": summary, "tiles": df.to_dict("records")}, indent=2, default=str))
        return 0
    cols = ["tile_id", "pixel_iou", "precision", "recall", "f1", "tp", "fp", "fn"]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{summary['n_tiles']} tiles ({summary['cached_tiles']} cached)  pixel IoU {summary['pixel_iou']:.4f}  "
          f"SpaceNet F1 {summary['F1Score']:.4f} (P {summary['Precision']:.3f} R {summary['Recall']:.3f}, "
          f"TP {summary['TruePos']} FP {summary['FalsePos']} FN {summary['FalseNeg']})")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run's checkpoint on its val tiles (pixel IoU, SpaceNet F1)")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--which", choices=WHICH, default="best")
    p.add_argument("--tiles", default="val", help="val (the run's split) or all (every labelled tile)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    from bdcore.inference.predict import add_normalize_argument

    add_normalize_argument(p)
    p.set_defaults(func=_cmd_evaluate)
