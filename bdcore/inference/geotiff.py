"""GeoTIFF side of inference: windowed reads of the input, the probability/mask writer that receives blended blocks
(a strip of rows of one column band at a time), and polygons read back chunk by chunk from the written probability
raster.

Nothing here holds a whole image: reads are one window, writes one block of rows, polygon extraction one chunk
(with a margin) at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry import Polygon

from bdcore.inference.normalization import PredictError
from bdcore.metrics.polygons import DEFAULT_OUTLINE, Outline, mask_to_polygons

# GDAL's block cache (MB) while writing outputs: its default (5 % of RAM) would let a big output sit in memory.
GDAL_CACHE_MB = 64


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def unreadable(path: Path, exc: BaseException) -> str:
    """The one message for pixel data that cannot be read (truncated or corrupt file)."""
    why = first_line(exc)
    why = "" if "See previous exception" in why else f" ({why})"  # GDAL's generic wrapper says nothing
    return f"{path}: pixel data cannot be read{why}; the file is truncated or corrupt, re-download or re-export it"


class RasterSource:
    """An open input raster read window by window (``predictor.WindowSource``); read errors name the file."""

    def __init__(self, src: DatasetReader, path: Path):
        self.src, self.path = src, path
        self.count, self.height, self.width = src.count, src.height, src.width
        self.dtype, self.nodata = src.dtypes[0], src.nodata

    def read(self, row: int, col: int, out: np.ndarray) -> None:
        try:
            self.src.read(window=Window(col, row, out.shape[2], out.shape[1]), out=out)
        except RasterioError as exc:
            raise PredictError(unreadable(self.path, exc)) from None

    def sample(self, max_side: int = 1024) -> np.ndarray:
        """A decimated read of the whole image (bounded size) for percentile stretching."""
        scale = max(self.width, self.height) / max_side
        try:
            if scale <= 1:
                return self.src.read()
            shape = (self.count, max(1, int(self.height / scale)), max(1, int(self.width / scale)))
            return self.src.read(out_shape=shape, resampling=Resampling.nearest)
        except RasterioError as exc:
            raise PredictError(unreadable(self.path, exc)) from None


class ProbMaskWriter:
    """Receives blended blocks (``predictor.RowSink``) and writes them to the probability GeoTIFF (uint8 0-255 or
    float32; band 2 = boundary when the model has it) and the mask GeoTIFF (uint8 0/1) on the input's grid.

    ``prob_path``/``mask_path`` are where the bytes go: ``predict`` passes temporary names
    (``atomic.StagedFiles``) that are renamed once every output is complete. Leaving the ``with`` block closes both."""

    def __init__(self, prob_path: Path, mask_path: Path, src: DatasetReader, threshold: float = 0.5,
                 prob_dtype: str = "uint8"):
        self.prob_path, self.mask_path = prob_path, mask_path
        self.threshold, self.float_prob = threshold, prob_dtype == "float32"
        profile: dict[str, Any] = dict(driver="GTiff", width=src.width, height=src.height, crs=src.crs,
                                       transform=src.transform, tiled=True, blockxsize=256, blockysize=256,
                                       compress="deflate", BIGTIFF="IF_SAFER")
        if src.width < 256:  # narrow: one block per strip of rows; wider ones are written in column bands: tiles
            profile.update(tiled=False, blockxsize=None, blockysize=None)
            profile = {k: v for k, v in profile.items() if v is not None}
        self.profile = profile
        self.prob: DatasetWriter | None = None
        self.mask: DatasetWriter | None = None

    def _open(self, channels: int) -> None:
        self.prob = rasterio.open(self.prob_path, "w", count=channels,
                                  dtype="float32" if self.float_prob else "uint8", **self.profile)
        self.prob.set_band_description(1, "building probability")
        if channels > 1:
            self.prob.set_band_description(2, "boundary probability")
        self.mask = rasterio.open(self.mask_path, "w", count=1, dtype="uint8", **self.profile)

    def __call__(self, top: int, left: int, block: np.ndarray) -> None:
        if self.prob is None:
            self._open(block.shape[0])
        win = Window(left, top, block.shape[2], block.shape[1])
        self.mask.write((block[:1] > self.threshold).view(np.uint8), window=win)
        if self.float_prob:
            self.prob.write(block, window=win)
        else:
            block *= 255.0
            self.prob.write(np.rint(block, out=block).astype(np.uint8), window=win)

    def close(self) -> None:
        for d in (self.prob, self.mask):
            if d is not None and not d.closed:
                d.close()

    def __enter__(self) -> "ProbMaskWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def _iter_chunks(height: int, width: int, core: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, height, core):
        for c in range(0, width, core):
            yield r, c, min(core, height - r), min(core, width - c)


def extract_polygons(prob_path: Path, threshold: float = 0.5, min_area: float = 20.0, simplify: float = 0.5,
                     chunk: int = 768, margin: int = 128,
                     outline: Outline = DEFAULT_OUTLINE) -> list[tuple[Polygon, float]]:
    """Polygons (pixel coordinates of the whole image) from a probability GeoTIFF, chunk by chunk.

    Each chunk is read with ``margin`` pixels of context; a polygon is kept by the chunk whose core holds its
    centroid, so a building is reported once unless it is larger than the margin."""
    out: list[tuple[Polygon, float]] = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(prob_path) as src:
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
                                               simplify=simplify, outline=outline):
                pt = poly.centroid
                gx, gy = pt.x + c0, pt.y + r0
                if c <= gx < c + w and r <= gy < r + h:
                    out.append((affinity.translate(poly, xoff=c0, yoff=r0), float(conf)))
    return out
