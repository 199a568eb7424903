"""Pixels: read SpaceNet GeoTIFF products as (C,H,W) arrays, stretch them for display, normalise them for models.

Two kinds of scaling, on purpose:
- ``stretch`` / ``to_display_rgb``: per-tile 2-98 % percentile stretch, for looking at one tile.
- ``band_stats`` + ``normalize``: per-dataset percentiles computed once over (a sample of) the catalog and cached,
  so every tile a model sees is scaled the same way.

Band indices are 0-based everywhere in this module (``bands=(0, 1, 2)``), unlike GDAL's 1-based band numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from bdcore.atomic import atomic_write_json
from bdcore.data.products import DEFAULT_PRODUCT, PRODUCTS
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

GEOTIFF_DRIVERS = ("GTiff", "COG")
STATS_VERSION = 1


class ImageryError(ValueError):
    """A file that should be a readable GeoTIFF is not (missing, corrupt, truncated, another format)."""


# The most pixels (width × height; bands not counted) a prediction takes on without being asked: a 1.8 MB deflate
# GeoTIFF can declare 100,000 × 100,000 px (~15 h of windows). 1 gigapixel is ~31,600² px, a large satellite scene.
MAX_PIXELS = 1_000_000_000
MAX_PIXELS_FIX = "pass --max-pixels {pixels} to predict it anyway"  # the CLI's fix; the app passes its own


def pixel_count(n: int) -> str:
    """``10.0 gigapixels``, ``4.1 megapixels``, ``4,096 px``: a pixel count as a remote-sensing user reads it."""
    if n >= 100_000_000:
        return f"{n / 1e9:.1f} gigapixels"
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} px"


class PixelBudgetError(ImageryError):
    """An image whose width × height is over the pixel budget, refused from its header before any pixel is read.

    ``message(fix)`` names the file, the size (bands mentioned, not counted), the budget and ``fix``, a template that
    may use ``{pixels}`` (the width × height to allow); ``windows``, when known, is the work it would take."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, bands: int, max_pixels: int,
                 windows: int | None = None):
        self.path, self.width, self.height, self.bands = Path(path), width, height, bands
        self.max_pixels, self.windows = max_pixels, windows
        super().__init__(self.message())

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def message(self, fix: str = MAX_PIXELS_FIX) -> str:
        work = f" (it needs ~{self.windows:,} windows)" if self.windows else ""
        return (f"{self.path}: {self.width:,} × {self.height:,} px × {self.bands} band(s) "
                f"({pixel_count(self.pixels)}) is over the budget of {pixel_count(self.max_pixels)} (width × height); "
                f"{fix.format(pixels=self.pixels)}{work}")

    def with_windows(self, windows: int) -> PixelBudgetError:
        """The same refusal, saying how many windows predicting it would take."""
        return PixelBudgetError(self.path, self.width, self.height, self.bands, self.max_pixels, windows)


def open_geotiff(path: str | os.PathLike, check_pixels: bool = False, error: type[ValueError] = ImageryError,
                 max_pixels: int | None = None):
    """Open ``path`` with rasterio (the caller closes it), insisting on a GeoTIFF: THE check every GeoTIFF read goes
    through. A missing file, a folder, an unreadable or non-GeoTIFF file raises ``error`` (default ImageryError)
    naming the file and the fix. ``max_pixels``: an image whose header declares more (width × height) raises
    :class:`PixelBudgetError` before any pixel is decoded (see :data:`MAX_PIXELS`). ``check_pixels`` also decodes
    one pixel of the last row of the last band, which catches truncated files (their header parses but the final
    strips are missing) at the cost of one block."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: image file not found; check the path")
    if path.is_dir():
        raise error(f"{path}: is a folder, expected a GeoTIFF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as exc:
        raise error(f"{path}: not a readable raster ({_first_line(exc)}); the file is corrupt or not an image: "
                    "pass a GeoTIFF, or re-download it") from None
    if src.driver not in GEOTIFF_DRIVERS:
        src.close()
        raise error(f"{path}: is a {src.driver} file, not a GeoTIFF (renamed?); convert it to GeoTIFF "
                    "(e.g. gdal_translate) or use the original GeoTIFF")
    if max_pixels is not None and src.width * src.height > max_pixels:
        src.close()
        raise PixelBudgetError(path, src.width, src.height, src.count, max_pixels)
    if check_pixels:
        try:
            src.read(src.count, window=Window(src.width - 1, src.height - 1, 1, 1))
        except RasterioError as exc:
            src.close()
            raise pixel_read_error(path, exc, error) from None
    return src


GDAL_LOGGERS = ("rasterio._env", "rasterio._err")


@contextmanager
def quiet_gdal() -> Iterator[None]:
    """Silence GDAL's own log lines ("GDAL signalled an error: ...", logged by rasterio per failed open) while many
    files are checked whose failures the caller reports itself (``open_geotiff`` turns each into one message): a
    folder of 20,000 empty .tif files would otherwise print 20,000 lines."""
    loggers = [logging.getLogger(name) for name in GDAL_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def pixel_read_error(path: str | os.PathLike, exc: BaseException, error: type[ValueError] = ImageryError) -> ValueError:
    """The error for pixel data GDAL cannot decode (``exc``, a RasterioError): a truncated or corrupt file."""
    why = _first_line(exc)
    why = "" if "See previous exception" in why else f" ({why})"  # GDAL's generic wrapper says nothing
    return error(f"{path}: pixel data cannot be read{why}; the file is truncated or corrupt, re-download or re-export it")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _window(window: Any) -> Window | None:
    """Accept a rasterio Window or ((row_start, row_stop), (col_start, col_stop))."""
    if window is None or isinstance(window, Window):
        return window
    (r0, r1), (c0, c1) = window
    return Window.from_slices((r0, r1), (c0, c1))


def read_image(path: str | os.PathLike, bands: Sequence[int] | None = None, window: Any = None) -> np.ndarray:
    """Read a GeoTIFF as a (C,H,W) array in its native dtype. ``bands`` are 0-based indices (None = all)."""
    with open_geotiff(path) as src:
        if bands is None:
            indexes = list(range(1, src.count + 1))
        else:
            indexes = [int(b) + 1 for b in bands]
            bad = [b - 1 for b in indexes if not 1 <= b <= src.count]
            if bad:
                raise ImageryError(f"{path}: has {src.count} band(s), cannot read band index(es) {bad} (0-based)")
        try:
            return src.read(indexes, window=_window(window))
        except RasterioError as exc:
            raise pixel_read_error(path, exc) from exc


def _profile(src) -> dict:
    return {
        "crs": src.crs,
        "transform": src.transform,
        "width": src.width,
        "height": src.height,
        "count": src.count,
        "dtype": src.dtypes[0],
        "nodata": src.nodata,
        "bounds": tuple(src.bounds),
    }


def read_profile(path: str | os.PathLike) -> dict:
    """Header only: crs, transform, width, height, count, dtype, nodata, bounds (image CRS)."""
    with open_geotiff(path) as src:
        return _profile(src)


def check_readable(path: str | os.PathLike) -> dict:
    """``read_profile`` of a file whose last pixel decodes too (``open_geotiff(check_pixels=True)``)."""
    with open_geotiff(path, check_pixels=True) as src:
        return _profile(src)


def _as_chw(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a (C,H,W) or (H,W) array, got shape {arr.shape}")
    return arr


def _valid_mask(band: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(band) if np.issubdtype(band.dtype, np.floating) else np.ones(band.shape, bool)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        valid &= band != nodata
    return valid


def stretch(arr: np.ndarray, lo: float = 2.0, hi: float = 98.0, nodata: float | None = None) -> np.ndarray:
    """Per-band percentile stretch to float32 [0, 1] (per tile, for display). Nodata (and NaN) pixels are left out of
    the percentiles and come out as 0; a constant band comes out as 0."""
    arr = _as_chw(arr)
    out = np.zeros(arr.shape, np.float32)
    for b in range(arr.shape[0]):
        band = arr[b]
        valid = _valid_mask(band, nodata)
        if not valid.any():
            continue
        vals = band[valid].astype(np.float64)
        p_lo, p_hi = np.percentile(vals, [lo, hi])
        if p_hi <= p_lo:
            continue
        scaled = (band.astype(np.float32) - np.float32(p_lo)) / np.float32(p_hi - p_lo)
        out[b] = np.where(valid, np.clip(scaled, 0.0, 1.0), 0.0)
    return out


def to_display_rgb(
    arr: np.ndarray, bands: Sequence[int] = (0, 1, 2), lo: float = 2.0, hi: float = 98.0, nodata: float | None = None
) -> np.ndarray:
    """Pick three bands (0-based; e.g. (4, 2, 1) for WorldView-3 8-band true colour), stretch, return uint8 (H,W,3).
    A single-band image is shown as grey."""
    arr = _as_chw(arr)
    if arr.shape[0] == 1:
        bands = (0, 0, 0)
    bands = tuple(int(b) for b in bands)
    if len(bands) != 3:
        raise ValueError(f"to_display_rgb needs exactly 3 band indices, got {bands}")
    bad = [b for b in bands if not 0 <= b < arr.shape[0]]
    if bad:
        raise ValueError(f"band index(es) {bad} out of range for a {arr.shape[0]}-band image (0-based)")
    s = stretch(arr[list(bands)], lo, hi, nodata)
    return np.round(np.moveaxis(s, 0, -1) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- dataset statistics


@dataclass
class BandStats:
    """Per-band statistics of one product over a dataset. ``lo``/``hi`` are the 2/98 % percentiles used by
    ``normalize``; ``mean``/``std`` are of the raw values (nodata excluded)."""

    product: str
    lo: list[float]
    hi: list[float]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    n_tiles: int = 0
    n_pixels: int = 0
    key: str = ""

    @property
    def bands(self) -> int:
        return len(self.lo)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BandStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _stats_key(catalog, product: str, settings: str) -> tuple[str, list[str]]:
    """Cache key: catalog fingerprint (when the catalog carries one) + product + the exact tile set + settings."""
    if product not in catalog.columns:
        raise ValueError(f"catalog has no column {product!r}; products are {', '.join(PRODUCTS)}")
    paths = sorted(p for p in catalog[product].tolist() if isinstance(p, str))
    fp = catalog.attrs.get("fingerprint")
    h = hashlib.sha256()
    h.update(f"v{STATS_VERSION}|{product}|{settings}|".encode())
    if fp:
        h.update(str(fp).encode())
    else:  # no fingerprint: fall back on the files' sizes and mtimes
        for p in paths:
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
    h.update("\n".join(paths).encode())
    return h.hexdigest()[:24], paths


def _sample_paths(paths: list[str], max_tiles: int) -> list[str]:
    """Evenly spaced, deterministic sample (sorted input)."""
    if len(paths) <= max_tiles:
        return paths
    idx = np.linspace(0, len(paths) - 1, max_tiles).round().astype(int)
    return [paths[i] for i in sorted(set(idx.tolist()))]


def read_decimated(path: str | os.PathLike, max_side: int, bands: Sequence[int] | None = None,
                   error: type[ValueError] = ImageryError) -> tuple[np.ndarray, float | None]:
    """(C,h,w) array of ``bands`` (1-based, default all) read at reduced resolution (nearest; GDAL uses the file's
    overviews when it has any), longest side <= ``max_side``, and the nodata value. Never the full raster: memory
    is that of the small array, whatever the file's size."""
    with open_geotiff(path, error=error) as src:
        f = max(1, int(np.ceil(max(src.width, src.height) / max_side)))
        idx = list(bands) if bands is not None else list(range(1, src.count + 1))
        shape = (len(idx), max(1, src.height // f), max(1, src.width // f))
        try:
            return src.read(idx, out_shape=shape), src.nodata
        except RasterioError as exc:
            raise pixel_read_error(path, exc, error) from exc


def display_overview(path: str | os.PathLike, max_side: int = 2048, lo: float = 2.0, hi: float = 98.0,
                     error: type[ValueError] = ImageryError) -> np.ndarray:
    """The image for a map layer: uint8 (h,w,3) of its first three bands (grey for 1-2 bands), read decimated
    (:func:`read_decimated`, longest side <= ``max_side``) and stretched by :func:`to_display_rgb`."""
    with open_geotiff(path, error=error) as src:
        count = src.count
    arr, nodata = read_decimated(path, max_side, bands=[1, 2, 3] if count >= 3 else [1], error=error)
    return to_display_rgb(arr, bands=(0, 1, 2) if len(arr) == 3 else (0, 0, 0), lo=lo, hi=hi, nodata=nodata)


def _read_decimated(path: str, max_side: int) -> tuple[np.ndarray, float | None]:
    """Read all bands at reduced resolution (nearest), so stats over many tiles stay cheap."""
    return read_decimated(path, max_side)


def _sample_values(paths: list[str], max_side: int) -> list[list[np.ndarray]]:
    """Per band, the valid (non-nodata) values of each readable tile with the first tile's band count."""
    chunks: list[list[np.ndarray]] = []
    for p in paths:
        try:
            arr, nodata = _read_decimated(p, max_side)
        except ImageryError as exc:
            log.warning("band stats: skipping %s", exc)
            continue
        if not chunks:
            chunks = [[] for _ in range(arr.shape[0])]
        if arr.shape[0] != len(chunks):
            log.warning("band stats: skipping %s (%d bands, expected %d)", p, arr.shape[0], len(chunks))
            continue
        for b, band in enumerate(arr):
            chunks[b].append(band[_valid_mask(band, nodata)].astype(np.float64))
    return chunks


def _summarise(product: str, chunks: list[list[np.ndarray]], lo: float, hi: float, key: str) -> BandStats:
    los, his, means, stds, n_pix = [], [], [], [], 0
    for band in chunks:
        vals = np.concatenate(band) if band else np.zeros(0)
        n_pix = max(n_pix, vals.size)
        if vals.size == 0:
            los.append(0.0), his.append(1.0), means.append(0.0), stds.append(1.0)
            continue
        p_lo, p_hi = np.percentile(vals, [lo, hi])
        los.append(float(p_lo))
        his.append(float(p_hi))
        means.append(float(vals.mean()))
        stds.append(float(vals.std()))
    n_tiles = len(chunks[0])
    return BandStats(product=product, lo=los, hi=his, mean=means, std=stds, n_tiles=n_tiles, n_pixels=n_pix, key=key)


def band_stats(
    catalog,
    product: str = DEFAULT_PRODUCT,
    max_tiles: int = 64,
    max_side: int = 256,
    lo: float = 2.0,
    hi: float = 98.0,
    refresh: bool = False,
) -> BandStats:
    """Per-band dataset statistics of ``product`` over the catalog, for ``normalize``.

    Sampled (at most ``max_tiles`` evenly spaced tiles, each read decimated to ``max_side`` pixels) and cached as
    JSON under ``cache_dir()/band_stats/``, keyed by the catalog fingerprint, the product and the tile set.
    Unreadable tiles in the sample are skipped with a warning; if none is readable, ImageryError."""
    key, paths = _stats_key(catalog, product, f"{lo}|{hi}|{max_tiles}|{max_side}")
    if not paths:
        raise ImageryError(f"no tile in this catalog has a {product} image; pick another product")
    cache_file = cache_dir() / "band_stats" / f"{product}-{key}.json"
    if cache_file.exists() and not refresh:
        try:
            return BandStats.from_dict(json.loads(cache_file.read_text()))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable band stats cache %s (%s)", cache_file, exc)
    chunks = _sample_values(_sample_paths(paths, max_tiles), max_side)
    if not chunks or not chunks[0]:
        raise ImageryError(f"none of the sampled {product} images could be read (see warnings); check the data folder")
    stats = _summarise(product, chunks, lo, hi, key)
    try:
        atomic_write_json(cache_file, stats.to_dict())
    except OSError as exc:  # a read-only cache must not stop training
        log.warning("could not cache band stats at %s (%s)", cache_file, exc)
    return stats


def normalize_bands(arr: np.ndarray, lo, hi, out: np.ndarray | None = None) -> np.ndarray:
    """``(x - lo) / max(hi - lo, 1e-6)`` per band in float32, clipped to [0, 1], written into ``out`` if given.

    The one model-input normalisation: training (``dataset``), inference (``predict``) and ``normalize`` all call
    it, so a model sees bit-identical inputs in training and in prediction."""
    lo = np.asarray(lo, np.float32).reshape(-1, 1, 1)
    span = np.maximum(np.asarray(hi, np.float32).reshape(-1, 1, 1) - lo, np.float32(1e-6))
    if out is None:
        out = arr.astype(np.float32)  # faster than a mixed-type subtract into an empty buffer
    else:
        out[...] = arr
    out -= lo
    out /= span
    return np.clip(out, 0.0, 1.0, out=out)


def normalize(arr: np.ndarray, stats: BandStats, nodata: float | None = None) -> np.ndarray:
    """(x - lo) / (hi - lo) per band, clipped to [0, 1], float32; nodata/NaN pixels become 0."""
    arr = _as_chw(arr)
    if arr.shape[0] != stats.bands:
        raise ValueError(
            f"image has {arr.shape[0]} bands but the {stats.product} band stats have {stats.bands}; "
            "compute stats for the product you are reading"
        )
    out = normalize_bands(arr, stats.lo, stats.hi)
    invalid = ~np.isfinite(out)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        invalid |= arr == nodata
    if invalid.any():
        out[invalid] = 0.0
    return out


# ---------------------------------------------------------------------------------------------- input vs training

NORMALIZE_MODES = ("checkpoint", "image")
NORMALIZE_FIX = "try --normalize image (per-image 2–98 % stretch)"
# A band is "unlike" the training data when less than INSIDE_MIN of its 2-98 % range lies inside the training
# [lo, hi], or its range spans less than SPAN_MIN (or more than SPAN_MAX) times the training span. Real SpaceNet 2
# Paris tiles against Vegas statistics (same sensor, other city) sit at >= 0.79 inside and >= 0.31 span; a uint8
# 0-255 tile against uint16 statistics falls below one or the other.
INSIDE_MIN, SPAN_MIN, SPAN_MAX = 0.5, 0.2, 5.0


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


@dataclass
class InputCheck:
    """How an image compares with a checkpoint's training band statistics (``check_input``).

    ``reasons`` is empty when the image looks like the training data; otherwise it holds short codes: ``"bands"``
    (band count differs), ``"dtype"`` (an integer type whose maximum is below the training range, e.g. uint8 vs
    uint16 statistics), ``"range"`` (most bands' 2-98 % ranges lie mostly outside the training [lo, hi] or span a
    very different width). ``message()`` renders the one line the CLI logs and the app shows."""

    name: str
    dtype: str
    bands: int
    train_bands: int
    lo: list[float]  # the image's per-band 2 % percentile (sampled)
    hi: list[float]  # ... and 98 %
    train_lo: list[float]
    train_hi: list[float]
    off_bands: list[int] = field(default_factory=list)  # 0-based bands far from the training range
    reasons: list[str] = field(default_factory=list)
    sample_shape: tuple[int, int] = (0, 0)  # (rows, cols) of the decimated sample the percentiles come from

    @property
    def ok(self) -> bool:
        return not self.reasons

    def message(self, fix: str = NORMALIZE_FIX) -> str:
        """One line naming the file, what differs and ``fix`` ("" when the image looks fine)."""
        if self.ok:
            return ""
        if "bands" in self.reasons:
            return (f"{self.name}: looks unlike the training data ({self.bands} band(s) vs {self.train_bands} in "
                    f"training): the model cannot use it; use a checkpoint trained on {self.bands}-band imagery")
        dt = np.dtype(self.dtype)
        what = [f"{self.dtype}, max {_num(np.iinfo(dt).max)}" if "dtype" in self.reasons else self.dtype,
                f"2–98 % range {_num(min(self.lo))}–{_num(max(self.hi))} vs training "
                f"{_num(min(self.train_lo))}–{_num(max(self.train_hi))} per band"]
        if "range" in self.reasons:
            what.append(f"{len(self.off_bands)} of {self.bands} band(s) mostly outside it")
        return f"{self.name}: looks unlike the training data ({'; '.join(what)}): predictions may be meaningless; {fix}"

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def check_input(
    image: str | os.PathLike | np.ndarray,
    train_lo: Sequence[float],
    train_hi: Sequence[float],
    name: str | None = None,
    nodata: float | None = None,
    max_side: int = 256,
) -> InputCheck:
    """Compare an image with a checkpoint's training band statistics (2/98 % ``lo``/``hi`` per band).

    ``image``: a GeoTIFF path (read decimated to ``max_side`` pixels -- GDAL uses overviews when there are any --
    never in full) or a (C,H,W) array already in memory. The one place that decides whether an input is "unlike the
    training data"; ``predict`` and ``evaluate`` call it and render ``InputCheck.message()``."""
    if isinstance(image, np.ndarray):
        sample = _as_chw(image)
        step = max(1, int(np.ceil(max(sample.shape[1:]) / max_side)))
        sample = sample[:, ::step, ::step]  # a strided view: as cheap as the decimated file read
        label = name or "image"
    else:
        sample, file_nodata = _read_decimated(str(image), max_side)
        nodata = file_nodata if nodata is None else nodata
        label = name or Path(image).name
    t_lo = [float(v) for v in train_lo]
    t_hi = [float(v) for v in train_hi]
    check = InputCheck(label, str(sample.dtype), int(sample.shape[0]), len(t_lo), [], [], t_lo, t_hi,
                       sample_shape=(int(sample.shape[1]), int(sample.shape[2])))
    if sample.shape[0] != len(t_lo):
        check.reasons.append("bands")
        return check
    for b in range(sample.shape[0]):
        vals = sample[b][_valid_mask(sample[b], nodata)]
        a, z = (np.percentile(vals.astype(np.float64), [2.0, 98.0]) if vals.size else (0.0, 0.0))
        check.lo.append(float(a))
        check.hi.append(float(z))
        span = max(t_hi[b] - t_lo[b], 1e-12)
        inside = (max(0.0, min(z, t_hi[b]) - max(a, t_lo[b])) / (z - a)) if z > a else float(t_lo[b] <= a <= t_hi[b])
        scale = (z - a) / span
        if inside < INSIDE_MIN or not SPAN_MIN <= scale <= SPAN_MAX:
            check.off_bands.append(b)
    if np.issubdtype(sample.dtype, np.integer) and np.iinfo(sample.dtype).max < float(np.median(t_hi)):
        check.reasons.append("dtype")
    if len(check.off_bands) * 2 >= sample.shape[0]:  # at least half the bands
        check.reasons.append("range")
    return check
