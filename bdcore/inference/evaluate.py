"""A run's checkpoint over catalog tiles: per-tile pixel and SpaceNet building scores, cached predictions.

Probabilities are computed once per checkpoint file and cached as uint8 ``.npy`` (K,H,W; 0-255) under
``run_dir/predictions/<which>-<key>/`` where ``key`` hashes the checkpoint's head bytes, size and mtime: a new
``best.pt`` gets a new folder (the stale one is removed), and changing the threshold only re-scores. Predictions
with ``normalize="image"`` (per-image 2-98 % stretch instead of the training band statistics) are cached apart, in
``<which>-<key>-image/``.

A tile is scored by ONE function, :func:`tile_score` (a ``scoring.TileScore``: pixel counts and the SpaceNet match,
proposals by decreasing confidence); the per-tile table and the Review page's TP/FP/FN picture both come from it.

Tiles whose pixels look unlike the training data (``imagery.check_input``, done when a tile is predicted) are
reported in ONE warning line per evaluation and in ``summary["warning"]``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from bdcore.atomic import atomic_write, atomic_write_json
from bdcore.data import imagery, labels
from bdcore.data.catalog import CatalogError, load_catalog
from bdcore.data.split import config_split
from bdcore.engine.config import RunConfig
from bdcore.inference.normalization import Normalization
from bdcore.metrics.polygons import DEFAULT_OUTLINE, Outline, check_outline, mask_to_polygons, polygons_to_geo
from bdcore.metrics.scoring import PixelCounts, TileScore, precision_recall_f1
from bdcore.engine.rundir import RunDir
from bdcore.progress import Progress

if TYPE_CHECKING:
    from bdcore.inference.predictor import Predictor

log = logging.getLogger(__name__)

WHICH = RunDir.CHECKPOINTS  # "best" / "last": the run folder names its checkpoints


class EvaluationError(ValueError):
    """The run cannot be evaluated as asked (no checkpoint, unknown tiles, ...); the message says what to do."""


# ---------------------------------------------------------------------------------------------- locations


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    if which not in WHICH:
        raise EvaluationError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    path = RunDir(run_dir).checkpoint(which)
    if not path.is_file():
        other = available_checkpoints(run_dir)
        hint = f"; {other[0]}.pt exists: use which={other[0]!r}" if other else "; let the run finish an epoch first"
        raise EvaluationError(f"{path} not found{hint}")
    return path


def available_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """The ``WHICH`` checkpoints a run folder has (``["best", "last"]``, ``["last"]``, ``[]``)."""
    return list(RunDir(run_dir).checkpoints())


def checkpoints_of(run_dirs: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """``"<run> · best.pt"`` → path for every best.pt / last.pt found in the given run folders."""
    return {f"{Path(d).name} · {p.name}": p for d in run_dirs for p in RunDir(d).checkpoints().values()}


def checkpoint_key(path: str | os.PathLike, head_bytes: int = 1 << 20) -> str:
    """Short hash of a checkpoint file's first MiB + size + mtime (cheap; changes whenever the file is rewritten)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(head_bytes))
    return h.hexdigest()[:12]


def _cache_name(which: str, key: str, normalize: str = "checkpoint") -> str:
    Normalization().for_mode(normalize)  # PredictError (a ValueError) for an unknown mode
    return f"{which}-{key}" + ("" if normalize == "checkpoint" else f"-{normalize}")


def prediction_dir(run_dir: str | os.PathLike, which: str = "best", normalize: str = "checkpoint") -> Path:
    """The cache folder for the current ``which`` checkpoint and normalisation mode (not created)."""
    ck = checkpoint_path(run_dir, which)
    return Path(run_dir) / "predictions" / _cache_name(which, checkpoint_key(ck), normalize)


# ------------------------------------------------------------------------------------------------- inputs


def run_config(run_dir: str | os.PathLike) -> RunConfig:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise EvaluationError(f"{path} not found: {run_dir} is not a run folder")
    return RunConfig.load(path)


def eval_tiles(cfg: RunConfig,
               tiles: str | Sequence[str] = "val") -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, list[str]]:
    """(catalog, labelled catalog, tile ids) for ``tiles`` = "val" (the run's own split), "all" (every labelled
    tile) or a list of tile ids. "val" is ``split.config_split``, the split the run trained on."""
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


class TilePaths(NamedTuple):
    image: str  # the run's product
    labels: str | None
    image_id: str


def _tile_paths(cfg: RunConfig, cat: gpd.GeoDataFrame, tile_id: str) -> TilePaths:
    """Where one catalog tile's image (of the run's product) and labels are, and its SpaceNet ImageId."""
    if tile_id not in cat.index:
        raise EvaluationError(f"tile {tile_id} is not in the catalog of {cfg.resolved_data_root()}")
    row = cat.loc[tile_id]
    image, lab = row[cfg.product], row["labels"]
    if not isinstance(image, str) or not image:
        raise EvaluationError(f"tile {tile_id} has no {cfg.product} image")
    return TilePaths(image, lab if isinstance(lab, str) else None, row.get("image_id", tile_id))


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


class _PredictionCache:
    """The uint8 probability cache of one run checkpoint and normalisation mode. Creating it makes the folder and
    drops stale caches of earlier versions of the checkpoint; the model is loaded only on the first miss."""

    def __init__(self, run_dir: Path, which: str, normalize: str = "checkpoint", device: str = "auto"):
        self.checkpoint = checkpoint_path(run_dir, which)
        self.key = checkpoint_key(self.checkpoint)
        self.dir = run_dir / "predictions" / _cache_name(which, self.key, normalize)
        self.normalize, self.device = normalize, device
        self._predictor: Predictor | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        current = {_cache_name(which, self.key, m) for m in imagery.NORMALIZE_MODES}
        for old in (run_dir / "predictions").glob(f"{which}-*"):
            if old.name not in current and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            atomic_write_json(meta_path, {"checkpoint": str(self.checkpoint), "which": which, "key": self.key,
                                          "normalize": normalize, "created": time.time()})

    def cached(self, tile_id: str) -> np.ndarray | None:
        return _load_npy(self.dir / f"{tile_id}.npy")

    def predict(self, tile_id: str, image_path: str) -> tuple[np.ndarray, imagery.InputCheck | None]:
        """Predict one tile and cache it: (uint8 probabilities, ``InputCheck`` against the training statistics or
        None); the check runs on the tile already in memory (strided sample)."""
        if self._predictor is None:
            # torch + segmentation_models_pytorch: 2.1-2.4 s to import (measured on 2 CPU cores); re-scoring cached
            # predictions (the Review page, `evaluate` at another threshold) never needs them
            from bdcore.inference.predictor import Predictor

            self._predictor = Predictor.from_checkpoint(self.checkpoint, device=self.device)
        prof, img = imagery.read_profile(image_path), imagery.read_image(image_path)
        norm = self._predictor.normalization.for_mode(self.normalize)
        check = norm.check(img, name=Path(image_path).name, nodata=prof.get("nodata"))
        prob = self._predictor.predict_array(img, nodata=prof.get("nodata"), normalization=norm)
        arr = np.rint(prob * 255.0).astype(np.uint8)
        _save_npy(self.dir / f"{tile_id}.npy", arr)
        return arr, check


def load_prediction(run_dir: str | os.PathLike, which: str, tile_id: str, compute: bool = True,
                    device: str = "auto", normalize: str = "checkpoint") -> np.ndarray | None:
    """Cached probabilities (K,H,W float32 in [0,1]) of one tile for the current ``which`` checkpoint; computed and
    cached on a miss (``compute=False``: None on a miss)."""
    run_dir = Path(run_dir)
    arr = _load_npy(prediction_dir(run_dir, which, normalize) / f"{tile_id}.npy")
    if arr is None:
        if not compute:
            return None
        cfg = run_config(run_dir)
        tile = _tile_paths(cfg, load_catalog(cfg.resolved_data_root()), tile_id)
        arr, check = _PredictionCache(run_dir, which, normalize, device).predict(tile_id, tile.image)
        if check is not None and not check.ok:
            log.warning(check.message())
    return arr.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------------- scoring


def _truth_polygons(image_path: str, labels_path: str | None) -> list:
    """Ground-truth building polygons of a tile in its pixel coordinates."""
    if not labels_path:
        return []
    prof = imagery.read_profile(image_path)
    return labels.pixel_polygons(labels.read_buildings(labels_path, crs=prof["crs"]), prof["transform"])


def tile_score(prob: np.ndarray, image_path: str, labels_path: str | None, threshold: float = 0.5,
               min_area: float = 20.0, outline: Outline = DEFAULT_OUTLINE) -> TileScore:
    """One tile's probabilities (K,H,W in [0,1]) against its labels: pixel counts at ``threshold`` and the SpaceNet
    match of its polygons (``polygons.mask_to_polygons`` with ``outline``, boundary channel when present) with the
    truth."""
    truth_mask = labels.tile_mask(image_path, labels_path)[0]
    props = mask_to_polygons(prob[0], threshold=threshold, min_area=min_area,
                             boundary=prob[1] if prob.shape[0] > 1 else None, outline=outline)
    return TileScore.of(prob[0] > threshold, truth_mask, _truth_polygons(image_path, labels_path), props,
                        min_area=min_area)


def score_tile(prob: np.ndarray, image_path: str, labels_path: str | None, threshold: float = 0.5,
               min_area: float = 20.0, outline: Outline = DEFAULT_OUTLINE) -> dict:
    """The per-tile score row of :func:`tile_score` (``TileScore.row``: an empty tile predicted empty is perfect)."""
    return tile_score(prob, image_path, labels_path, threshold, min_area, outline).row()


def review_tile(run_dir: str | os.PathLike, which: str, tile_id: str, threshold: float | None = None,
                min_area: float = 20.0, normalize: str = "checkpoint",
                catalog: gpd.GeoDataFrame | None = None, outline: Outline = DEFAULT_OUTLINE) -> tuple[TileScore, str]:
    """(``TileScore``, image path) of one tile for the Review page: its cached probabilities scored by the same
    :func:`tile_score` as :func:`evaluate_checkpoint`'s row, so the picture drawn from it shows the row's TP/FP/FN.
    ``catalog``: the run's catalog when the caller has loaded it already."""
    cfg = run_config(run_dir)
    catalog = load_catalog(cfg.resolved_data_root()) if catalog is None else catalog
    tile = _tile_paths(cfg, catalog, tile_id)
    prob = load_prediction(run_dir, which, tile_id, normalize=normalize)
    threshold = float(cfg.threshold if threshold is None else threshold)
    return tile_score(prob, tile.image, tile.labels, threshold, min_area, outline), tile.image


def tile_buildings(score: TileScore, image_path: str | os.PathLike) -> gpd.GeoDataFrame:
    """The tile's buildings with their part in ``score``'s match, for a map: ``TileScore.buildings`` (layer, status
    TP/FP/FN, IoU, confidence) georeferenced with the image's transform, plus ``area`` and ``area_unit`` ("m²" when
    the image has a CRS, else "px²"); EPSG:4326 when the image has a CRS."""
    prof = imagery.read_profile(image_path)
    df = score.buildings()
    gdf = gpd.GeoDataFrame(df.drop(columns="geometry"), geometry=polygons_to_geo(df["geometry"], prof["transform"]),
                           crs=prof["crs"])
    if prof["crs"] is None:
        gdf["area"], gdf["area_unit"] = gdf["area_px"], "px²"
        return gdf
    gdf["area"], gdf["area_unit"] = labels.building_areas_m2(gdf), "m²"
    return gdf.to_crs("EPSG:4326")


def summarize(df: pd.DataFrame) -> dict:
    """Aggregate scores: pixel metrics and building F1 from summed counts (micro), plus per-tile means."""
    pixels = PixelCounts(*(int(df[c].sum()) if len(df) else 0 for c in ("pixel_tp", "pixel_fp", "pixel_fn")))
    btp, bfp, bfn = (int(df[c].sum()) if len(df) else 0 for c in ("tp", "fp", "fn"))
    precision, recall, f1 = precision_recall_f1(btp, bfp, bfn)
    return {
        "n_tiles": int(len(df)),
        "pixel_iou": pixels.iou,
        "pixel_precision": pixels.precision,
        "pixel_recall": pixels.recall,
        "pixel_f1": pixels.f1,
        "TruePos": btp, "FalsePos": bfp, "FalseNeg": bfn,
        "Precision": precision, "Recall": recall, "F1Score": f1,
        "mean_tile_iou": float(df["pixel_iou"].mean()) if len(df) else 0.0,
        "mean_tile_f1": float(df["f1"].mean()) if len(df) else 0.0,
    }


def _unlike_warning(unlike: list[imagery.InputCheck], n_predicted: int) -> str | None:
    """ONE line for the tiles predicted now that look unlike the training data (also logged)."""
    if not unlike:
        return None
    warning = unlike[0].message()
    if len(unlike) > 1:
        warning = f"{len(unlike)} of {n_predicted} predicted tiles look unlike the training data, e.g. {warning}"
    log.warning(warning)
    return warning


def evaluate_checkpoint(run_dir: str | os.PathLike, which: str = "best", tiles: str | Sequence[str] = "val",
                        threshold: float | None = None, progress: Progress | None = None, device: str = "auto",
                        min_area: float = 20.0, normalize: str = "checkpoint",
                        outline: Outline = DEFAULT_OUTLINE) -> tuple[pd.DataFrame, dict]:
    """Score ``which`` checkpoint of a run on its val tiles (or "all" labelled tiles, or a list of ids); unlabelled
    tiles are never scored (no truth).

    ``normalize``: "checkpoint" (training band statistics, the default) or "image" (per-image 2-98 % stretch; cached
    apart). Tiles predicted now are checked against the training statistics; if any looks unlike the training data,
    ONE warning line is logged and kept in ``summary["warning"]`` (``summary["unlike_training"]`` counts them).
    ``outline``: how predicted buildings are outlined before matching (``polygons.regularise``).

    Returns ``(per_tile_df, summary)``: one row per tile (``tile_id``, ``image_id``, pixel IoU/precision/recall/F1
    and counts, SpaceNet building TP/FP/FN/precision/recall/F1, ``n_truth``, ``n_pred``, ``cached``) and the
    aggregate (summed counts). Probabilities are cached per checkpoint, so a second call (or another threshold)
    does not run the model. ``threshold`` defaults to the run config's."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    try:
        check_outline(outline)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    cfg = run_config(run_dir)
    threshold = float(cfg.threshold if threshold is None else threshold)
    cat, labelled, ids = eval_tiles(cfg, tiles)
    cache = _PredictionCache(run_dir, which, normalize, device)
    rows, unlike, n_cached = [], [], 0
    for i, tid in enumerate(ids):
        tile = _tile_paths(cfg, labelled, tid)
        arr = cache.cached(tid)
        cached = arr is not None
        if not cached:
            arr, check = cache.predict(tid, tile.image)
            if check is not None and not check.ok:
                unlike.append(check)
        n_cached += cached
        scores = score_tile(arr.astype(np.float32) / 255.0, tile.image, tile.labels, threshold, min_area,
                            outline)
        rows.append({"tile_id": tid, "image_id": tile.image_id, **scores, "cached": cached})
        if progress is not None:
            progress(i + 1, len(ids))
    df = pd.DataFrame(rows)
    summary = {
        "run_id": run_dir.name, "which": which, "checkpoint": str(cache.checkpoint), "key": cache.key,
        "predictions": str(cache.dir), "tiles": tiles if isinstance(tiles, str) else "list", "threshold": threshold,
        "normalize": normalize, "outline": outline, "cached_tiles": n_cached, **summarize(df),
        "unlike_training": len(unlike),
        "warning": _unlike_warning(unlike, len(ids) - n_cached), "seconds": round(time.perf_counter() - t0, 3),
    }
    try:
        atomic_write_json(cache.dir / f"scores-{threshold:g}-{summary['tiles']}-{outline}.json", summary)
    except OSError as exc:
        log.debug("could not write scores: %s", exc)
    return df, summary
