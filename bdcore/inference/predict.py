"""Inference on a GeoTIFF of any size, with georeferenced outputs.

The image is read window by window (rasterio), windows overlap and are blended with a 2-D linear-ramp weight,
and the blended probabilities are written to the output GeoTIFF one band of rows at a time: only a
``window``-high strip of weighted sums is ever in memory, never the whole image. Polygons are then extracted
chunk by chunk from the written probability raster (with a margin, keeping each building in the chunk that owns
its centroid), georeferenced and reprojected to EPSG:4326.

Outputs (in ``out_dir``): ``<stem>_prob.tif`` (uint8 0-255 or float32; band 2 = boundary if the model has it),
``<stem>_mask.tif`` (uint8 0/1), ``<stem>_buildings.geojson`` (EPSG:4326, with confidence) and
``<stem>_spacenet.csv`` (``ImageId,BuildingId,PolygonWKT_Pix,Confidence``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bdcore.data.products import DEFAULT_PRODUCT, PRODUCT_BANDS, products_with_bands

from bdcore.progress import Progress, terminal_progress

log = logging.getLogger(__name__)


# GDAL's block cache (MB) while writing outputs: its default (5 % of RAM) would let a big output sit in memory.
GDAL_CACHE_MB = 64


class PredictError(ValueError):
    """The input cannot be predicted on as asked (wrong band count, not a raster, ...); the message says why."""


# ---------------------------------------------------------------------------------------------- normalisation


@dataclass
class Normalization:
    """How raw pixels become model input: ``(x - lo) / (hi - lo)`` clipped to [0, 1], per band.

    ``lo``/``hi`` come from the training band statistics stored in the checkpoint; when a checkpoint has none,
    they are per-image 2/98 percentiles (``source == "percentile"``)."""

    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    source: str = "percentile"
    p_lo: float = 2.0
    p_hi: float = 98.0

    def apply(self, arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy of ``arr`` (C,H,W), written into ``out`` if given (no temporaries)."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("Normalization not fitted: call fitted_for() or pass lo/hi")
        from bdcore.data.imagery import normalize_bands

        return np.nan_to_num(normalize_bands(arr, self.lo, self.hi, out=out), copy=False, nan=0.0)

    @property
    def from_training(self) -> bool:
        """True when lo/hi are training statistics (checkpoint or training catalog), not per-image percentiles."""
        return self.source != "percentile" and self.lo is not None

    def for_mode(self, normalize: str = "checkpoint") -> "Normalization":
        """``"checkpoint"``: this normalisation (training statistics when known); ``"image"``: an unfitted per-image
        2-98 % stretch (fit it with :meth:`fitted_for`). PredictError for another mode."""
        from bdcore.data.imagery import NORMALIZE_MODES

        if normalize not in NORMALIZE_MODES:
            raise PredictError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        return Normalization(p_lo=self.p_lo, p_hi=self.p_hi) if normalize == "image" else self

    def check(self, image, name: str | None = None, nodata: float | None = None):
        """``imagery.check_input`` of ``image`` (path or array) against these training statistics; None when they are
        per-image percentiles (nothing to compare with)."""
        if not self.from_training:
            return None
        from bdcore.data.imagery import check_input

        return check_input(image, self.lo, self.hi, name=name, nodata=nodata)

    def fitted_for(self, sample: np.ndarray, nodata: float | None = None) -> "Normalization":
        """Per-image percentiles from a (decimated) sample of the image, when no training stats are known."""
        if self.source != "percentile":
            return self
        lo, hi = [], []
        for band in sample:
            v = band[np.isfinite(band)] if np.issubdtype(band.dtype, np.floating) else band.ravel()
            if nodata is not None:
                v = v[v != nodata]
            if v.size == 0:
                lo.append(0.0)
                hi.append(1.0)
                continue
            a, b = np.percentile(v, [self.p_lo, self.p_hi])
            lo.append(float(a))
            hi.append(float(b if b > a else a + 1.0))
        return Normalization(np.array(lo), np.array(hi), "percentile", self.p_lo, self.p_hi)


def _stats_from_obj(obj: Any) -> tuple[list, list] | None:
    if obj is None:
        return None
    if hasattr(obj, "lo") and hasattr(obj, "hi"):
        return list(obj.lo), list(obj.hi)
    if isinstance(obj, dict) and obj.get("lo") is not None and obj.get("hi") is not None:
        return list(obj["lo"]), list(obj["hi"])
    return None


def normalization_from_payload(payload: dict | None) -> Normalization:
    """Training band stats from a checkpoint payload (``stats``/``band_stats``/``norm``, top level or in ``config``)."""
    payload = payload or {}
    places = [payload, payload.get("meta") or {}, payload.get("config") or {}]
    for place in places:
        if not isinstance(place, dict):
            continue
        for key in ("stats", "band_stats", "norm", "normalization"):
            found = _stats_from_obj(place.get(key))
            if found:
                return Normalization(np.asarray(found[0], np.float64), np.asarray(found[1], np.float64), "checkpoint")
    return Normalization()


# ------------------------------------------------------------------------------------------------- windows


def window_starts(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of overlapping windows of length ``window`` covering ``size`` (last one flush with the end)."""
    if size <= window:
        return [0]
    stride = max(window - overlap, 1)
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return sorted(set(starts))


def ramp_weights(length: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1-D blending weight: linear ramp over ``overlap`` pixels at both ends, 1 in between, never 0."""
    if overlap <= 0 or length <= 2:
        return np.ones(length, np.float32)
    ramp = min(overlap, length // 2)
    i = np.arange(length, dtype=np.float32)
    w = np.minimum(1.0, np.minimum((i + 0.5) / ramp, (length - i - 0.5) / ramp))
    return np.maximum(w, floor).astype(np.float32)


def blend_weights(h: int, w: int, overlap: int) -> np.ndarray:
    return np.outer(ramp_weights(h, overlap), ramp_weights(w, overlap)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ Predictor


def training_band_stats(cfg) -> Any:
    """The band stats training used (``imagery.band_stats`` over the run's catalog, cached on disk), if that data
    folder is on this machine; else None."""
    try:
        data_root = str(getattr(cfg, "data_root", "") or "").strip()
        if data_root not in ("", "demo") and not Path(data_root).expanduser().is_dir():
            return None
        from bdcore.data import imagery
        from bdcore.data.catalog import load_catalog

        return imagery.band_stats(load_catalog(cfg.resolved_data_root()), product=cfg.product)
    except Exception as exc:  # noqa: BLE001 - fall back to per-image stretch
        log.info("training band stats unavailable (%s)", exc)
        return None


class Predictor:
    """A model ready for inference: normalisation, padding to the encoder stride, batching, flip TTA.

    Build it from a checkpoint (:meth:`from_checkpoint`) or wrap any ``torch.nn.Module`` whose forward maps
    (B, C, H, W) float input in [0, 1] to (B, K, H, W) logits (``Predictor(model, in_channels=3)``)."""

    def __init__(
        self,
        model,
        in_channels: int,
        normalization: Normalization | None = None,
        device: str = "auto",
        product: str | None = None,
        batch_size: int = 4,
        stride: int = 32,
        checkpoint: str | os.PathLike | None = None,
        config: Any = None,
    ):
        import torch

        from bdcore.engine.device import resolve_device  # imports torch (~1 s): not at module top (CLI start-up)

        self.device = str(resolve_device(device))
        self.model = model.to(self.device).eval()
        self.in_channels = int(in_channels)
        self.normalization = normalization or Normalization()
        self.product = product
        self.batch_size = max(int(batch_size), 1)
        self.stride = stride
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.config = config
        self._torch = torch

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "auto", batch_size: int = 4,
                        stats: Any = None) -> "Predictor":
        """Load ``checkpoint`` (``models.load_model``); normalisation from the payload's band stats, else ``stats``
        (e.g. ``imagery.band_stats`` of the training catalog), else per-image percentiles."""
        from bdcore.engine import models

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found: train a run first or pass a .pt file")
        from bdcore.engine.device import resolve_device

        dev = str(resolve_device(device))
        model, cfg = models.load_model(checkpoint, dev)
        norm = Normalization()
        try:
            payload = models.load_checkpoint(checkpoint)
            norm = normalization_from_payload(payload if isinstance(payload, dict) else None)
        except Exception as exc:  # noqa: BLE001 - the model loaded; stats are optional
            log.debug("no band stats from %s: %s", checkpoint, exc)
        if norm.source == "percentile" and stats is None:
            stats = training_band_stats(cfg)
        if norm.source == "percentile" and _stats_from_obj(stats):
            lo, hi = _stats_from_obj(stats)
            norm = Normalization(np.asarray(lo, np.float64), np.asarray(hi, np.float64), "stats")
        if norm.source == "percentile":
            log.info("%s carries no band statistics: using per-image 2-98%% percentile stretch", checkpoint.name)
        in_ch = getattr(cfg, "in_channels", None) or PRODUCT_BANDS.get(getattr(cfg, "product", ""), 3)
        return cls(model, in_channels=in_ch, normalization=norm, device=dev, product=getattr(cfg, "product", None),
                   batch_size=batch_size, checkpoint=checkpoint, config=cfg)

    # ---------------------------------------------------------------- checks
    def check_bands(self, count: int, source: str | os.PathLike = "input") -> None:
        if count != self.in_channels:
            what = f" ({self.product})" if self.product else ""
            hint = ""
            if self.product and count in (3, 8, 1):
                others = products_with_bands(count)
                hint = f"; that looks like {'/'.join(others)} imagery: use a model trained on it"
            raise PredictError(
                f"model expects {self.in_channels} bands{what}, file has {count}: {source}{hint}"
            )

    # ---------------------------------------------------------------- inference on normalised arrays
    def _forward(self, x):
        torch = self._torch
        if self.device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.model(x.contiguous(memory_format=torch.channels_last))
        else:
            out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.sigmoid(out.float())

    def predict_batch(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(B,C,H,W) normalised float32 → (B,K,H,W) probabilities; pads H, W to the encoder stride."""
        torch = self._torch
        b, c, h, w = batch.shape
        ph = (-h) % self.stride
        pw = (-w) % self.stride
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if ph or pw:  # zero padding bottom/right, as training's validation does (train.forward_padded)
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        x = x.to(self.device)
        with torch.inference_mode():
            if tta:
                prob = None
                for dims in ((), (3,), (2,), (2, 3)):
                    xi = torch.flip(x, dims) if dims else x
                    p = self._forward(xi)
                    p = torch.flip(p, dims) if dims else p
                    prob = p if prob is None else prob + p
                prob = prob / 4.0
            else:
                prob = self._forward(x)
        return prob[:, :, :h, :w].float().cpu().numpy()

    def predict_array(self, image: np.ndarray, tta: bool = False, window: int = 1024, overlap: int = 128,
                      nodata: float | None = None, normalization: Normalization | None = None) -> np.ndarray:
        """A raw (C,H,W) image already in memory (e.g. one 650×650 SpaceNet tile) → (K,H,W) float32 probabilities."""
        self.check_bands(image.shape[0])
        norm = normalization or self.normalization
        if norm.lo is None:
            norm = norm.fitted_for(image, nodata)
        x = norm.apply(image)
        _, h, w = x.shape
        rows, cols = window_starts(h, window, overlap), window_starts(w, window, overlap)
        wh, ww = min(window, h), min(window, w)
        weight = blend_weights(wh, ww, overlap)
        acc = None
        wsum = np.zeros((h, w), np.float32)
        boxes = [(r, c) for r in rows for c in cols]
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i : i + self.batch_size]
            probs = self.predict_batch(np.stack([x[:, r : r + wh, c : c + ww] for r, c in chunk]), tta=tta)
            if acc is None:
                acc = np.zeros((probs.shape[1], h, w), np.float32)
            for (r, c), p in zip(chunk, probs):
                acc[:, r : r + wh, c : c + ww] += p * weight
                wsum[r : r + wh, c : c + ww] += weight
        acc /= wsum
        if nodata is not None:
            acc[:, np.all(image == nodata, axis=0)] = 0.0
        return acc


# ------------------------------------------------------------------------------------------ GeoTIFF pipeline


_IMAGE_ID_RE = re.compile(r"(AOI_\d+_[A-Za-z]+_img\d+)")


def image_id_for(path: str | os.PathLike) -> str:
    """SpaceNet ImageId from a file name (``RGB-PanSharpen_AOI_2_Vegas_img1265.tif`` → ``AOI_2_Vegas_img1265``);
    else the file stem."""
    stem = Path(path).stem
    m = _IMAGE_ID_RE.search(stem)
    if m:
        return m.group(1)
    m = re.search(r"(AOI_\d+_[A-Za-z]+)_.*?(img\d+)$", stem)  # bucket names: SN2_buildings_train_AOI_2_Vegas_PS-RGB_img1
    return f"{m.group(1)}_{m.group(2)}" if m else stem


def _open_raster(path: Path):
    """Open the input GeoTIFF; a missing, non-GeoTIFF (e.g. a renamed PNG) or truncated file is a clear error."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    if not path.is_file():
        raise FileNotFoundError(f"input {path} not found")
    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        raise PredictError(f"{path} is not a readable raster ({_first_line(exc)}); pass a GeoTIFF") from None
    if src.driver not in ("GTiff", "COG"):
        driver = src.driver
        src.close()
        raise PredictError(f"{path} is a {driver} file, not a GeoTIFF (renamed?); convert it to GeoTIFF "
                           "(e.g. gdal_translate) or pass the original GeoTIFF")
    try:  # one pixel of the last row: a truncated file parses but its last strips are missing
        src.read(src.count, window=Window(src.width - 1, src.height - 1, 1, 1))
    except RasterioError as exc:
        src.close()
        raise PredictError(_unreadable(path, exc)) from None
    return src


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _unreadable(path: Path, exc: BaseException) -> str:
    why = _first_line(exc)
    why = "" if "See previous exception" in why else f" ({why})"  # GDAL's generic wrapper says nothing
    return f"{path}: pixel data cannot be read{why}; the file is truncated or corrupt, re-download or re-export it"


def _sample_for_stats(src, max_side: int = 1024) -> np.ndarray:
    """A decimated read of the whole image (bounded size) for percentile stretching."""
    from rasterio.enums import Resampling

    scale = max(src.width, src.height) / max_side
    if scale <= 1:
        return src.read()
    shape = (src.count, max(1, int(src.height / scale)), max(1, int(src.width / scale)))
    return src.read(out_shape=shape, resampling=Resampling.nearest)


def _iter_chunks(height: int, width: int, core: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, height, core):
        for c in range(0, width, core):
            yield r, c, min(core, height - r), min(core, width - c)


def extract_polygons(prob_path: Path, threshold: float = 0.5, min_area: float = 20.0, simplify: float = 0.5,
                     chunk: int = 768, margin: int = 128) -> list[tuple[Any, float]]:
    """Polygons (pixel coordinates of the whole image) from a probability GeoTIFF, chunk by chunk.

    Each chunk is read with ``margin`` pixels of context; a polygon is kept by the chunk whose core holds its
    centroid, so a building is reported once unless it is larger than the margin."""
    import rasterio
    from rasterio.windows import Window
    from shapely import affinity

    from bdcore.metrics.polygons import mask_to_polygons

    out: list[tuple[Any, float]] = []
    with rasterio.open(prob_path) as src:
        scale = 255.0 if src.dtypes[0] == "uint8" else 1.0
        H, W = src.height, src.width
        for r, c, h, w in _iter_chunks(H, W, chunk):
            r0, c0 = max(r - margin, 0), max(c - margin, 0)
            r1, c1 = min(r + h + margin, H), min(c + w + margin, W)
            data = src.read(window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32) / scale
            if not (data[0] >= threshold).any():
                continue
            boundary = data[1] if data.shape[0] > 1 else None
            for poly, conf in mask_to_polygons(data[0], threshold=threshold, min_area=min_area, boundary=boundary,
                                               simplify=simplify):
                pt = poly.centroid
                gx, gy = pt.x + c0, pt.y + r0
                if not (c <= gx < c + w and r <= gy < r + h):
                    continue
                out.append((affinity.translate(poly, xoff=c0, yoff=r0), float(conf)))
    return out


def _write_outputs_vector(polys: list[tuple[Any, float]], transform, crs, image_id: str, geojson_path: Path,
                          csv_path: Path) -> None:
    import geopandas as gpd

    from bdcore.metrics import scoring
    from bdcore.atomic import atomic_write
    from bdcore.metrics.polygons import polygons_to_geo

    geo = polygons_to_geo(polys, transform)
    gdf = gpd.GeoDataFrame(
        {"building_id": list(range(len(polys))), "confidence": [round(c, 4) for _, c in polys],
         "area_px": [round(p.area, 1) for p, _ in polys]},
        geometry=geo, crs=crs,
    )
    if crs is not None:
        gdf = gdf.to_crs("EPSG:4326")
    else:
        log.warning("input has no CRS: GeoJSON coordinates are in the image's transform units, not EPSG:4326")
    text = gdf.to_json(drop_id=True) if len(gdf) else json.dumps({"type": "FeatureCollection", "features": []})
    atomic_write(geojson_path, lambda f: f.write(text), "w")
    rows = [
        {"ImageId": image_id, "BuildingId": i, "PolygonWKT_Pix": p.wkt, "Confidence": round(c, 4)}
        for i, (p, c) in enumerate(polys)
    ]
    scoring.write_spacenet_csv(csv_path, rows if rows else
                               [{"ImageId": image_id, "BuildingId": -1, "PolygonWKT_Pix": "POLYGON EMPTY",
                                 "Confidence": 1}])


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
) -> dict:
    """Predict building footprints on a GeoTIFF of any size; returns the output paths and a few numbers.

    ``normalize``: ``"checkpoint"`` scales pixels with the training band statistics the checkpoint carries (what the
    model saw in training); ``"image"`` with this image's own 2-98 % percentiles (for imagery unlike the training
    data, e.g. 8-bit exports). With training statistics, the input is first compared with them
    (``imagery.check_input`` on a decimated read); an input far from them is logged as ONE warning line.

    Keys: ``prob``, ``mask``, ``geojson``, ``csv`` (Paths; the vector ones only with ``polygons``), plus
    ``image_id``, ``n_buildings``, ``width``, ``height``, ``windows``, ``seconds``, ``normalization`` (its source:
    "checkpoint", "stats" or "percentile"), ``input_check`` (``imagery.InputCheck`` or None when normalising per
    image) and ``warning`` (its one-line message, or None).
    ``progress(done, total)`` is called after each batch of windows."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    t0 = time.perf_counter()
    input_path = Path(input_path)
    Normalization().for_mode(normalize)  # a bad mode fails before anything is read
    _open_raster(input_path).close()  # a bad input fails before the (slow) model load
    predictor = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(
        checkpoint, device=device, batch_size=batch_size)
    if window % predictor.stride:
        raise PredictError(f"window {window} must be a multiple of {predictor.stride}")
    if not 0 <= overlap < window:
        raise PredictError(f"overlap {overlap} must be in [0, window={window})")
    out_dir = Path(out_dir) if out_dir is not None else input_path.parent / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = input_path.stem
    prob_path, mask_path = out_dir / f"{stem}_prob.tif", out_dir / f"{stem}_mask.tif"
    image_id = image_id_for(input_path)

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_raster(input_path) as src:
        predictor.check_bands(src.count, input_path)
        H, W, nodata = src.height, src.width, src.nodata
        norm = predictor.normalization.for_mode(normalize)
        check = None
        if norm.lo is None:
            try:
                norm = norm.fitted_for(_sample_for_stats(src), nodata)
            except RasterioError as exc:
                raise PredictError(_unreadable(input_path, exc)) from None
        elif len(norm.lo) != src.count:
            raise PredictError(f"checkpoint band stats have {len(norm.lo)} bands, {input_path} has {src.count}")
        else:
            check = norm.check(input_path, nodata=nodata)
            if check is not None and not check.ok:
                log.warning(check.message())
        rows, cols = window_starts(H, window, overlap), window_starts(W, window, overlap)
        wh, ww = min(window, H), min(window, W)
        wr, wc = ramp_weights(wh, overlap), ramp_weights(ww, overlap)
        weight = np.outer(wr, wc)
        # the 2-D weight is separable and windows form a grid, so the weight sum is an outer product of 1-D sums
        row_sum, col_sum = np.zeros(H, np.float32), np.zeros(W, np.float32)
        for r in rows:
            row_sum[r : r + wh] += wr
        for c in cols:
            col_sum[c : c + ww] += wc
        total = len(rows) * len(cols)
        profile = dict(driver="GTiff", width=W, height=H, crs=src.crs, transform=src.transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
        if W < 256 or H < 256:
            profile.update(tiled=False, blockxsize=None, blockysize=None)
            profile = {k: v for k, v in profile.items() if v is not None}
        raw = np.empty((src.count, wh, ww), src.dtypes[0])
        batch = np.empty((predictor.batch_size, src.count, wh, ww), np.float32)
        done = 0
        tmp_prob, tmp_mask = prob_path.with_name(f".{prob_path.name}.tmp"), mask_path.with_name(f".{mask_path.name}.tmp")
        k = None
        dst_p = dst_m = None
        try:
            acc = None
            buf0 = 0  # image row of acc[:, 0]
            for ri, r in enumerate(rows):
                boxes = [(r, c) for c in cols]
                for i in range(0, len(boxes), predictor.batch_size):
                    chunk = boxes[i : i + predictor.batch_size]
                    invalid = []
                    for j, (rr, c) in enumerate(chunk):
                        try:
                            src.read(window=Window(c, rr, ww, wh), out=raw)
                        except RasterioError as exc:
                            raise PredictError(_unreadable(input_path, exc)) from None
                        norm.apply(raw, out=batch[j])
                        if nodata is not None:
                            invalid.append(np.all(raw == nodata, axis=0))
                    probs = predictor.predict_batch(batch[: len(chunk)], tta=tta)
                    for j, bad in enumerate(invalid):
                        probs[j][:, bad] = 0.0
                    if acc is None:
                        k = probs.shape[1]
                        acc = np.zeros((k, wh, W), np.float32)
                        dtype = "float32" if prob_dtype == "float32" else "uint8"
                        dst_p = rasterio.open(tmp_prob, "w", count=k, dtype=dtype, **profile)
                        dst_p.set_band_description(1, "building probability")
                        if k > 1:
                            dst_p.set_band_description(2, "boundary probability")
                        dst_m = rasterio.open(tmp_mask, "w", count=1, dtype="uint8", **profile)
                    for (rr, c), p in zip(chunk, probs):
                        p *= weight
                        acc[:, rr - buf0 : rr - buf0 + wh, c : c + ww] += p
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                # rows above the next window row are final: write them and slide the strip down
                nxt = rows[ri + 1] if ri + 1 < len(rows) else H
                n = nxt - buf0
                final = acc[:, :n]
                final /= row_sum[None, buf0:nxt, None]  # in place: these rows are done
                final /= col_sum[None, None, :]
                win = Window(0, buf0, W, n)
                dst_m.write((final[:1] > threshold).view(np.uint8), window=win)
                if prob_dtype == "float32":
                    dst_p.write(final, window=win)
                else:
                    final *= 255.0
                    dst_p.write(np.rint(final, out=final).astype(np.uint8), window=win)
                del final
                acc[:, : wh - n] = acc[:, n:]
                acc[:, wh - n :] = 0.0
                buf0 = nxt
            del acc, batch, raw, weight  # free the strip before polygon extraction
            dst_p.close()
            dst_m.close()
            os.replace(tmp_prob, prob_path)
            os.replace(tmp_mask, mask_path)
        except BaseException:
            for d in (dst_p, dst_m):
                if d is not None and not d.closed:
                    d.close()
            for t in (tmp_prob, tmp_mask):
                t.unlink(missing_ok=True)
            raise
        crs, transform = src.crs, src.transform

    result: dict[str, Any] = {"prob": prob_path, "mask": mask_path, "image_id": image_id, "width": W, "height": H,
                              "windows": total, "normalization": norm.source, "channels": k, "input_check": check,
                              "warning": check.message() if check is not None and not check.ok else None}
    if polygons:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            polys = extract_polygons(prob_path, threshold=threshold, min_area=min_area)
        geojson_path, csv_path = out_dir / f"{stem}_buildings.geojson", out_dir / f"{stem}_spacenet.csv"
        _write_outputs_vector(polys, transform, crs, image_id, geojson_path, csv_path)
        result.update(geojson=geojson_path, csv=csv_path, n_buildings=len(polys))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def predict_tiles(checkpoint: str | os.PathLike | Predictor, catalog, tile_ids: Sequence[str] | None = None,
                  out_dir: str | os.PathLike = ".", product: str | None = None, tta: bool = False,
                  threshold: float = 0.5, device: str = "auto", progress: Progress | None = None,
                  normalize: str = "checkpoint") -> list[dict]:
    """:func:`predict_geotiff` on catalog tiles (default: all), one output set per tile in ``out_dir``."""
    predictor = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(checkpoint, device)
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
                                                          normalize=normalize)})
        if progress is not None:
            progress(i + 1, len(ids))
    return results


# ------------------------------------------------------------------------------------------------------ CLI


def _cmd_predict(args: argparse.Namespace) -> int:
    with terminal_progress("win", Path(args.input).name) as progress:
        res = predict_geotiff(args.checkpoint, args.input, args.out, tta=args.tta, window=args.window,
                              overlap=args.overlap, threshold=args.threshold, batch_size=args.batch_size,
                              device=args.device, progress=progress, normalize=args.normalize)
    for key in ("prob", "mask", "geojson", "csv"):
        if key in res:
            print(f"{key:8} {res[key]}")
    print(f"{res.get('n_buildings', 0)} buildings, {res['windows']} windows, {res['seconds']:.1f} s")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("predict", help="predict building footprints on a GeoTIFF")
    p.add_argument("--checkpoint", required=True, help="a run's best.pt/last.pt")
    p.add_argument("--input", required=True, help="GeoTIFF of any size")
    p.add_argument("--out", default=None, help="output folder (default: <input folder>/predictions)")
    p.add_argument("--tta", action="store_true", help="average over flips (4x slower)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    add_normalize_argument(p)
    p.set_defaults(func=_cmd_predict)


def add_normalize_argument(p) -> None:
    """``--normalize checkpoint|image``, shared by ``predict`` and ``evaluate``."""
    from bdcore.data.imagery import NORMALIZE_MODES

    p.add_argument("--normalize", choices=NORMALIZE_MODES, default="checkpoint",
                   help="checkpoint: scale pixels with the training band statistics (default); image: per-image "
                        "2-98%% stretch, for imagery unlike the training data (e.g. 8-bit)")
