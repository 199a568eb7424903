"""Inference on a GeoTIFF of any size, with georeferenced outputs: the orchestration of ``predictor`` (model,
normalisation, blended windows), ``geotiff`` (windowed reads, the strip writer, chunked polygons) and ``export``.

An input over the pixel budget (``imagery.MAX_PIXELS``, width × height) is refused from its header before anything
else. The image is read window by window, windows overlap and are blended (``predictor.StripBlender``), and the
blended probabilities are written to the output GeoTIFF one block at a time: only a ``window``-high strip of one
column band (at most ``predictor.STRIP_WIDTH`` px wide) of weighted sums is ever in memory, never the whole image. Polygons are then extracted chunk by chunk from the written
probability raster (with a margin, keeping each building in the chunk that owns its centroid), georeferenced and
reprojected to EPSG:4326.

Outputs (in ``out_dir``): ``<stem>_prob.tif`` (uint8 0-255 or float32; band 2 = boundary if the model has it),
``<stem>_mask.tif`` (uint8 0/1), ``<stem>_buildings.geojson`` (EPSG:4326, with confidence) and
``<stem>_spacenet.csv`` (``ImageId,BuildingId,PolygonWKT_Pix,Confidence``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import rasterio
from rasterio.io import DatasetReader

from bdcore.atomic import StagedFiles
from bdcore.data.imagery import MAX_PIXELS, PixelBudgetError, open_geotiff
from bdcore.data.products import DEFAULT_PRODUCT
from bdcore.inference.export import image_id_for, write_vectors
from bdcore.inference.geotiff import (
    GDAL_CACHE_MB,
    ProbMaskWriter,
    RasterSource,
    extract_polygons,
)
from bdcore.inference.modelfile import load_predictor
from bdcore.inference.normalization import Normalization, PredictError
from bdcore.inference.predictor import (
    PredictionCancelled,
    Predictor,
    WindowPlan,
    window_count,
)
from bdcore.metrics.polygons import DEFAULT_OUTLINE, Outline, check_outline
from bdcore.progress import Progress

__all__ = ["MAX_PIXELS", "PixelBudgetError", "PredictionCancelled", "predict_geotiff", "predict_tiles"]

log = logging.getLogger(__name__)


def _open_raster(path: Path, max_pixels: int | None = None) -> DatasetReader:
    """The input GeoTIFF through the data layer's one opener (missing, non-GeoTIFF or truncated: PredictError; over
    ``max_pixels``: PixelBudgetError, from the header)."""
    return open_geotiff(path, check_pixels=True, error=PredictError, max_pixels=max_pixels)


def _check_input(path: Path, max_pixels: int, window: int, overlap: int) -> None:
    """A bad input fails before the (slow) model load; one over the pixel budget says how many windows it needs."""
    if not 0 <= overlap < window:
        raise PredictError(f"overlap {overlap} must be in [0, window={window})")
    try:
        _open_raster(path, max_pixels).close()
    except PixelBudgetError as exc:
        windows = window_count(exc.height, window, overlap) * window_count(exc.width, window, overlap)
        raise exc.with_windows(windows) from None


def _fitted_normalization(predictor: Predictor, source: RasterSource, normalize: str):
    """(Normalization for this input, ``imagery.InputCheck`` or None): training statistics are compared with the input
    (ONE warning line when it looks unlike them); per-image percentiles are fitted on a decimated read."""
    norm = predictor.normalization.for_mode(normalize)
    if norm.lo is None:
        return norm.fitted_for(source.sample(), source.nodata), None
    if len(norm.lo) != source.count:
        raise PredictError(f"checkpoint band stats have {len(norm.lo)} bands, {source.path} has {source.count}")
    check = norm.check(source.path, nodata=source.nodata)
    if check is not None and not check.ok:
        log.warning(check.message())
    return norm, check


def predict_geotiff(
    checkpoint: str | os.PathLike | Predictor,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    tta: bool = False,
    window: int = 1024,
    overlap: int = 128,
    threshold: float = 0.5,
    batch_size: int = 4,
    device: str = "auto",
    progress: Progress | None = None,
    prob_dtype: str = "uint8",
    min_area: float = 20.0,
    polygons: bool = True,
    normalize: str = "checkpoint",
    max_pixels: int = MAX_PIXELS,
    should_stop: Callable[[], bool] | None = None,
    outline: Outline = DEFAULT_OUTLINE,
) -> dict[str, Any]:
    """Predict building footprints on a GeoTIFF of any size; returns the output paths and a few numbers.

    ``checkpoint``: a bdcore checkpoint (``.pt``), an exported ``model.onnx`` (run with onnxruntime, its
    ``model.json`` beside it: ``modelfile.load_predictor``) or a ready :class:`Predictor`.

    ``normalize``: ``"checkpoint"`` scales pixels with the training band statistics the checkpoint carries (what the
    model saw in training); ``"image"`` with this image's own 2-98 % percentiles (for imagery unlike the training
    data, e.g. 8-bit exports). With training statistics, the input is first compared with them
    (``imagery.check_input`` on a decimated read); an input far from them is logged as ONE warning line.
    ``outline``: how building outlines are drawn (``polygons.regularise``: none, simplify, orthogonal).

    ``max_pixels``: an input whose header declares more pixels (width × height) is refused with
    ``imagery.PixelBudgetError`` before the model is loaded (default ``imagery.MAX_PIXELS``, 1 gigapixel).

    All four outputs appear together or not at all: they are written under temporary names and renamed at the end,
    and any exception on the way (a bad window, Ctrl-C, SIGTERM as KeyboardInterrupt, Streamlit stopping the page,
    ``should_stop()`` returning True → :class:`PredictionCancelled`) removes them.

    Keys: ``prob``, ``mask``, ``geojson``, ``csv`` (Paths; the vector ones only with ``polygons``), plus
    ``image_id``, ``n_buildings``, ``width``, ``height``, ``windows``, ``seconds``, ``normalization`` (its source:
    "checkpoint", "stats" or "percentile"), ``channels``, ``outline``, ``input_check`` (``imagery.InputCheck`` or None when
    normalising per image), ``warning`` (its one-line message, or None) and ``runtime``
    (``Predictor.runtime``).
    ``progress(done, total)`` is called after each batch of windows, ``should_stop()`` before each."""
    t0 = time.perf_counter()
    input_path = Path(input_path)
    Normalization().for_mode(normalize)  # a bad mode fails before anything is read
    try:
        check_outline(outline)
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    _check_input(input_path, max_pixels, window, overlap)
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(
        checkpoint, device=device, batch_size=batch_size)
    if window % predictor.stride:
        raise PredictError(f"window {window} must be a multiple of {predictor.stride}")
    out_dir = Path(out_dir) if out_dir is not None else input_path.parent / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = input_path.stem
    paths = {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif"}
    if polygons:
        paths.update(geojson=out_dir / f"{stem}_buildings.geojson", csv=out_dir / f"{stem}_spacenet.csv")

    with StagedFiles() as staged:
        tmp = {key: staged.path(path) for key, path in paths.items()}
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_raster(input_path, max_pixels) as src:
            predictor.check_bands(src.count, input_path)
            source = RasterSource(src, input_path)
            norm, check = _fitted_normalization(predictor, source, normalize)
            plan = WindowPlan(src.height, src.width, window, overlap)
            with ProbMaskWriter(tmp["prob"], tmp["mask"], src, threshold, prob_dtype) as writer:
                channels = predictor.predict_windows(source, norm, plan, writer, tta=tta, progress=progress,
                                                     should_stop=should_stop)
            crs, transform = src.crs, src.transform
        result: dict[str, Any] = {
            **paths, "image_id": image_id_for(input_path), "width": plan.width, "height": plan.height,
            "windows": plan.n_windows, "normalization": norm.source, "channels": channels, "outline": outline,
            "input_check": check,
            "warning": check.message() if check is not None and not check.ok else None, "runtime": predictor.runtime}
        if polygons:
            polys = extract_polygons(tmp["prob"], threshold=threshold, min_area=min_area, outline=outline)
            write_vectors(polys, transform, crs, result["image_id"], tmp["geojson"], tmp["csv"])
            result["n_buildings"] = len(polys)
        staged.commit()
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def predict_tiles(checkpoint: str | os.PathLike | Predictor, catalog: gpd.GeoDataFrame,
                  tile_ids: Sequence[str] | None = None, out_dir: str | os.PathLike = ".", product: str | None = None,
                  tta: bool = False, threshold: float = 0.5, device: str = "auto", progress: Progress | None = None,
                  normalize: str = "checkpoint", outline: Outline = DEFAULT_OUTLINE) -> list[dict[str, Any]]:
    """:func:`predict_geotiff` on catalog tiles (default: all), one output set per tile in ``out_dir``."""
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device)
    product = product or predictor.product or DEFAULT_PRODUCT
    ids = list(catalog.index if tile_ids is None else tile_ids)
    missing = [t for t in ids if t not in catalog.index]
    if missing:
        raise PredictError(f"tiles not in the catalog: {', '.join(map(str, missing[:5]))}")
    results = []
    for i, tid in enumerate(ids):
        path = catalog.loc[tid, product]
        if not path:
            raise PredictError(f"tile {tid} has no {product} image: pick tiles that have it")
        results.append({"tile_id": tid, **predict_geotiff(predictor, path, out_dir, tta=tta, threshold=threshold,
                                                          normalize=normalize, outline=outline)})
        if progress is not None:
            progress(i + 1, len(ids))
    return results
