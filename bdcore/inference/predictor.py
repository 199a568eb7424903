"""A model ready for inference (:class:`Predictor`) and the ONE blending of overlapping windows that both in-memory
tiles (:meth:`Predictor.predict_array`) and GeoTIFFs of any size (``predict.predict_geotiff``) go through.

Blending: windows of ``window`` px overlap by ``overlap`` px and are weighted with a separable 2-D linear ramp
(:func:`ramp_weights`); windows form a grid, so the weight sum of a pixel is the product of a row sum and a column
sum. The image is cut into column bands at most :data:`STRIP_WIDTH` px wide, each predicted top to bottom:
:class:`StripBlender` keeps one window-high strip of one band's weighted sums and hands rows on as soon as no later
window touches them, so memory is bounded by the window and the band width, never the image (a window that straddles
two bands is predicted for each: ~6 % more windows on images wider than a band, none on narrower ones).
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from bdcore.engine.device import autocast_for, resolve_device
from bdcore.data.products import products_with_bands
from bdcore.engine import models
from bdcore.engine.config import RunConfig
from bdcore.inference.normalization import (
    Normalization,
    PredictError,
    normalization_from_payload,
    training_band_stats,
)
from bdcore.progress import Progress

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- windows


def window_starts(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of overlapping windows of length ``window`` covering ``size`` (last one flush with the end)."""
    if size <= window:
        return [0]
    stride = max(window - overlap, 1)
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return sorted(set(starts))


def window_count(size: int, window: int, overlap: int) -> int:
    """``len(window_starts(size, window, overlap))`` without building the list (a header can declare any size)."""
    if size <= window:
        return 1
    return -(-(size - window) // max(window - overlap, 1)) + 1


def ramp_weights(length: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1-D blending weight: linear ramp over ``overlap`` pixels at both ends, 1 in between, never 0."""
    if overlap <= 0 or length <= 2:
        return np.ones(length, np.float32)
    ramp = min(overlap, length // 2)
    i = np.arange(length, dtype=np.float32)
    w = np.minimum(1.0, np.minimum((i + 0.5) / ramp, (length - i - 0.5) / ramp))
    return np.maximum(w, floor).astype(np.float32)


# Widest column band predicted in one pass (px; a multiple of the output GeoTIFF's 256-px tiles, so no output tile
# is shared by two bands): the blender's strip is at most K x window x STRIP_WIDTH float32 (~128 MB at a 1024-px
# window with a boundary channel), whatever the image's width.
STRIP_WIDTH = 16384


class PredictionCancelled(Exception):
    """``should_stop()`` said stop: the prediction ended early and wrote nothing (temporary files are removed).
    Not a ValueError: a cancel is not a bad input."""


def weight_sums(starts: list[int], ramp: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Sum of the 1-D ramps of windows starting at ``starts`` (sorted), over positions ``lo .. hi-1`` only: the
    weight sums of a band or strip without an image-wide array."""
    out = np.zeros(hi - lo, np.float32)
    n = len(ramp)
    for s in starts[bisect.bisect_left(starts, lo - n + 1):]:
        if s >= hi:
            break
        a, b = max(s, lo), min(s + n, hi)
        out[a - lo : b - lo] += ramp[a - s : b - s]
    return out


class WindowPlan:
    """The grid of overlapping windows over an ``height`` × ``width`` image, their 2-D weight, and the column bands
    (at most ``strip_width`` px wide) it is predicted in."""

    def __init__(self, height: int, width: int, window: int, overlap: int, strip_width: int = STRIP_WIDTH):
        self.height, self.width = height, width
        self.rows, self.cols = window_starts(height, window, overlap), window_starts(width, window, overlap)
        self.wh, self.ww = min(window, height), min(window, width)
        self.wr, self.wc = ramp_weights(self.wh, overlap), ramp_weights(self.ww, overlap)
        self.weight = np.outer(self.wr, self.wc)
        self.strip_width = max(int(strip_width), 1)

    def bands(self) -> list[tuple[int, int, list[int]]]:
        """``(x0, x1, cols)`` per column band: output columns ``x0 .. x1-1`` and the start of every window column
        that touches them (a window straddling two bands is in both)."""
        out = []
        for x0 in range(0, self.width, self.strip_width):
            x1 = min(x0 + self.strip_width, self.width)
            i0, i1 = bisect.bisect_right(self.cols, x0 - self.ww), bisect.bisect_left(self.cols, x1)
            out.append((x0, x1, self.cols[i0:i1]))
        return out

    def row_sums(self, lo: int, hi: int) -> np.ndarray:
        return weight_sums(self.rows, self.wr, lo, hi)

    def col_sums(self, lo: int, hi: int) -> np.ndarray:
        return weight_sums(self.cols, self.wc, lo, hi)

    @property
    def n_windows(self) -> int:
        """Windows predicted (those straddling two column bands count twice)."""
        return len(self.rows) * sum(len(cols) for _, _, cols in self.bands())


# THE network step: a normalised (B,C,H,W) float32 tensor (H, W multiples of the stride) on the Predictor's device ->
# (B,K,H,W) probabilities. Torch models go through Predictor._forward; modelfile.OnnxBackend runs an exported model.
Backend = Callable[[torch.Tensor], torch.Tensor]
RowSink = Callable[[int, int, np.ndarray], None]  # sink(row, col, block (K,n,w) float32 in [0,1]); may modify it


class StripBlender:
    """Weighted window probabilities summed over one window-high strip of one column band ``x0 .. x1-1`` (the only
    buffer that grows with the image, bounded by the band width)."""

    def __init__(self, plan: WindowPlan, channels: int, x0: int = 0, x1: int | None = None):
        self.plan, self.x0 = plan, x0
        self.x1 = plan.width if x1 is None else x1
        self.acc = np.zeros((channels, plan.wh, self.x1 - x0), np.float32)
        self.col_sum = plan.col_sums(x0, self.x1)
        self.top = 0  # image row of acc[:, 0]

    def add(self, row: int, col: int, prob: np.ndarray) -> None:
        """Add one window's (K,wh,ww) probabilities (weighted in place) at image position (row, col); only the part
        inside this band is kept."""
        prob *= self.plan.weight
        r = row - self.top
        a, b = max(col, self.x0), min(col + self.plan.ww, self.x1)
        self.acc[:, r : r + self.plan.wh, a - self.x0 : b - self.x0] += prob[:, :, a - col : b - col]

    def flush(self, until: int, sink: RowSink) -> None:
        """Rows ``top .. until-1`` are final: divide by the weight sums, hand them to ``sink``, slide the strip."""
        n = until - self.top
        final = self.acc[:, :n]
        final /= self.plan.row_sums(self.top, until)[None, :, None]  # in place: these rows are done
        final /= self.col_sum[None, None, :]
        sink(self.top, self.x0, final)
        del final
        wh = self.plan.wh
        self.acc[:, : wh - n] = self.acc[:, n:]
        self.acc[:, wh - n :] = 0.0
        self.top = until


class WindowSource(Protocol):
    """Pixels read window by window: an array in memory or an open raster (``geotiff.RasterSource``)."""

    count: int
    height: int
    width: int
    dtype: Any
    nodata: float | None

    def read(self, row: int, col: int, out: np.ndarray) -> None: ...


class ArraySource:
    """A (C,H,W) image in memory as a :class:`WindowSource`."""

    def __init__(self, image: np.ndarray, nodata: float | None = None):
        self.image, self.nodata = image, nodata
        self.count, self.height, self.width = image.shape
        self.dtype = image.dtype

    def read(self, row: int, col: int, out: np.ndarray) -> None:
        out[...] = self.image[:, row : row + out.shape[1], col : col + out.shape[2]]


# ------------------------------------------------------------------------------------------------ Predictor


class Predictor:
    """A model ready for inference: normalisation, padding to the encoder stride, batching, flip TTA, blending.

    Build it from a checkpoint (:meth:`from_checkpoint`) or wrap any ``torch.nn.Module`` whose forward maps
    (B, C, H, W) float input in [0, 1] to (B, K, H, W) logits (``Predictor(model, in_channels=3)``), or a
    :data:`Backend` (another runtime, e.g. an exported ONNX model: ``inference.modelfile.onnx_predictor``); either
    way the windows, padding, flips and blending are this class's.

    ``channels_last`` (default: on CUDA): the model's weights are converted once, here, and every batch is laid out
    to match, so cuDNN runs NHWC convolutions without converting per call."""

    def __init__(self, model: torch.nn.Module | Backend, in_channels: int, normalization: Normalization | None = None,
                 device: str = "auto", product: str | None = None, batch_size: int = 4, stride: int = 32,
                 channels_last: bool | None = None):
        self.device = str(resolve_device(device))  # the one device rule (engine.device): a missing GPU is an error
        self.autocast = autocast_for(torch.device(self.device))  # training's mixed-precision dtype (engine.device)
        self.channels_last = self.device.startswith("cuda") if channels_last is None else bool(channels_last)
        if isinstance(model, torch.nn.Module):
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            self.model = model.to(self.device).to(memory_format=fmt).eval()
            self.backend: Backend = self._forward
        else:  # a runtime that is not torch (modelfile.OnnxBackend): tensors stay on self.device, it moves them
            self.model, self.backend = None, model
        self.in_channels = int(in_channels)
        self.normalization = normalization or Normalization()
        self.product = product
        self.batch_size = max(int(batch_size), 1)
        self.stride = stride

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "auto", batch_size: int = 4,
                        stats: Any = None, channels_last: bool | None = None) -> "Predictor":
        """Load ``checkpoint`` (the file is read once); normalisation from its band stats, else ``stats`` (e.g.
        ``imagery.band_stats`` of the training catalog), else the training catalog's stats when that data is on this
        machine, else per-image percentiles."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found: train a run first or pass a .pt file")
        payload = models.load_checkpoint(checkpoint)
        cfg = RunConfig.from_dict(payload["config"], source=f"{checkpoint} (config)")
        model, _ = models.model_from_config(cfg, pretrained=False)
        try:
            model.load_state_dict(payload["model"])
        except (RuntimeError, TypeError, AttributeError):
            models.load_model(checkpoint)  # raises the CheckpointError that names the mismatch (engine owns it)
            raise
        norm = normalization_from_payload(payload)
        if norm.source == "percentile":
            norm = Normalization.from_stats(stats if stats is not None else training_band_stats(cfg), "stats") or norm
        if norm.source == "percentile":
            log.info("%s carries no band statistics: using per-image 2-98%% percentile stretch", checkpoint.name)
        return cls(model, in_channels=cfg.in_channels, normalization=norm, device=device, product=cfg.product,
                   batch_size=batch_size, channels_last=channels_last)

    @property
    def runtime(self) -> str:
        """What runs the network, for the CLI and logs: "torch on cpu", "onnxruntime on CPUExecutionProvider"."""
        return getattr(self.backend, "runtime", None) or f"torch on {self.device}"

    def check_bands(self, count: int, source: str | os.PathLike = "input") -> None:
        if count == self.in_channels:
            return
        what = f" ({self.product})" if self.product else ""
        hint = ""
        if self.product and count in (3, 8, 1):
            hint = f"; that looks like {'/'.join(products_with_bands(count))} imagery: use a model trained on it"
        raise PredictError(f"model expects {self.in_channels} bands{what}, file has {count}: {source}{hint}")

    # ---------------------------------------------------------------- inference on normalised arrays
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.sigmoid(out.float())

    def predict_batch(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(B,C,H,W) normalised float32 → (B,K,H,W) probabilities; pads H, W to the encoder stride."""
        b, c, h, w = batch.shape
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if ph or pw:  # zero padding bottom/right, as training's validation does (train.forward_padded)
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if tta:
                prob = None
                for dims in ((), (3,), (2,), (2, 3)):
                    p = self.backend(torch.flip(x, dims) if dims else x)
                    p = torch.flip(p, dims) if dims else p
                    prob = p if prob is None else prob + p
                prob = prob / 4.0
            else:
                prob = self.backend(x)
        return prob[:, :, :h, :w].float().cpu().numpy()

    # ---------------------------------------------------------------- blended windows
    def predict_windows(self, source: WindowSource, norm: Normalization, plan: WindowPlan, sink: RowSink,
                        tta: bool = False, progress: Progress | None = None,
                        should_stop: Callable[[], bool] | None = None) -> int:
        """Predict every window of ``plan`` over ``source`` (column band by column band, a window row at a time, in
        batches), blend them and hand finished blocks to ``sink``. Returns the number of output channels K. Pixels
        whose every band is nodata get probability 0. ``progress(done, total)`` after each batch; ``should_stop()``
        before each batch: True raises :class:`PredictionCancelled`."""
        raw = np.empty((source.count, plan.wh, plan.ww), source.dtype)
        batch = np.empty((self.batch_size, source.count, plan.wh, plan.ww), np.float32)
        channels, done, total = 0, 0, plan.n_windows
        for x0, x1, band_cols in plan.bands():
            strip: StripBlender | None = None
            for ri, row in enumerate(plan.rows):
                for i in range(0, len(band_cols), self.batch_size):
                    if should_stop is not None and should_stop():
                        raise PredictionCancelled(f"prediction cancelled after {done} of {total} windows")
                    cols = band_cols[i : i + self.batch_size]
                    probs = self._predict_cols(source, norm, row, cols, raw, batch, tta)
                    if strip is None:
                        channels = probs.shape[1]
                        strip = StripBlender(plan, channels, x0, x1)
                    for col, p in zip(cols, probs):
                        strip.add(row, col, p)
                    done += len(cols)
                    if progress is not None:
                        progress(done, total)
                strip.flush(plan.rows[ri + 1] if ri + 1 < len(plan.rows) else plan.height, sink)
        return channels

    def _predict_cols(self, source: WindowSource, norm: Normalization, row: int, cols: list[int], raw: np.ndarray,
                      batch: np.ndarray, tta: bool) -> np.ndarray:
        """The windows at ``row`` and ``cols`` read, normalised and predicted as one batch; nodata pixels → 0."""
        invalid = []
        for j, col in enumerate(cols):
            source.read(row, col, out=raw)
            norm.apply(raw, out=batch[j])
            if source.nodata is not None:
                invalid.append(np.all(raw == source.nodata, axis=0))
        probs = self.predict_batch(batch[: len(cols)], tta=tta)
        for j, bad in enumerate(invalid):
            probs[j][:, bad] = 0.0
        return probs

    def predict_array(self, image: np.ndarray, tta: bool = False, window: int = 1024, overlap: int = 128,
                      nodata: float | None = None, normalization: Normalization | None = None) -> np.ndarray:
        """A raw (C,H,W) image already in memory (e.g. one 650×650 SpaceNet tile) → (K,H,W) float32 probabilities."""
        self.check_bands(image.shape[0])
        norm = normalization or self.normalization
        if norm.lo is None:
            norm = norm.fitted_for(image, nodata)
        out: list[np.ndarray] = []

        def keep(top: int, left: int, block: np.ndarray) -> None:
            if not out:
                out.append(np.empty((block.shape[0], image.shape[1], image.shape[2]), np.float32))
            out[0][:, top : top + block.shape[1], left : left + block.shape[2]] = block

        plan = WindowPlan(image.shape[1], image.shape[2], window, overlap)
        self.predict_windows(ArraySource(image, nodata), norm, plan, keep, tta=tta)
        return out[0]
