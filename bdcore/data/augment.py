"""Sample windows and augmentation of (C,H,W) numpy arrays: crop boxes, padding, photometric and geometric jitter.

Every random choice draws from the ``numpy.random.Generator`` passed in, so a sample is a pure function of that
generator's seed (the dataset seeds one per item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges. Geometric ops apply to image and mask alike; photometric ones to the image only."""

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1  # additive shift, uniform in [-b, b] (image is in [0,1] after normalize)
    contrast: float = 0.2  # multiplicative about the tile mean, uniform in [1-c, 1+c]
    gamma: float = 0.2  # exponent exp(uniform(-log(1+g), log(1+g)))


def random_crop_box(rng: np.random.Generator, h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw) of a size×size window inside an h×w tile; a side smaller than ``size`` is taken whole."""
    ch, cw = min(h, size), min(w, size)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def center_crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    ch, cw = min(h, size), min(w, size)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Zero-pad (C,h0,w0) at the bottom/right to (C,h,w)."""
    c, h0, w0 = arr.shape
    if h0 == h and w0 == w:
        return arr
    out = np.zeros((c, h, w), arr.dtype)
    out[:, :h0, :w0] = arr
    return out


def photometric_params(rng: np.random.Generator, aug: Augment) -> tuple[float, float, float]:
    """(brightness shift b, contrast factor c, gamma g) drawn from ``rng``, in this order (part of the item's draws)."""
    b = rng.uniform(-aug.brightness, aug.brightness) if aug.brightness else 0.0
    c = rng.uniform(1 - aug.contrast, 1 + aug.contrast) if aug.contrast else 1.0
    g = float(np.exp(rng.uniform(-np.log1p(aug.gamma), np.log1p(aug.gamma)))) if aug.gamma else 1.0
    return float(b), float(c), g


def photometric(img: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Brightness/contrast/gamma jitter of a float32 image in [0,1], IN PLACE; clipped back to [0,1].
    ``bdcore.data.device_batch.photometric_batch`` is the same jitter on a batch on the device."""
    b, c, g = photometric_params(rng, aug)
    shift = np.float32(float(img.mean()) * (1.0 - c) + b) if c != 1.0 else np.float32(b)
    if c != 1.0:
        img *= np.float32(c)  # (x - mean) * c + mean + b, folded into one multiply-add, in place
    if shift:
        img += shift
    np.clip(img, 0.0, 1.0, out=img)
    if g != 1.0:
        np.power(img, np.float32(g), out=img)
    return img


Flips = tuple[bool, bool, int]  # (flip left-right, flip up-down, quarter turns)


def geometric_params(rng: np.random.Generator, aug: Augment) -> Flips:
    fh = bool(aug.flips and rng.random() < 0.5)
    fv = bool(aug.flips and rng.random() < 0.5)
    k = int(rng.integers(0, 4)) if aug.rot90 else 0
    return fh, fv, k


def apply_geometric(params: Flips, *arrays: np.ndarray) -> list[np.ndarray]:
    """The flips / 90° rotation ``params`` applied to every (C,H,W) array (contiguous copies)."""
    fh, fv, k = params
    out = []
    for a in arrays:
        if fh:
            a = a[:, :, ::-1]
        if fv:
            a = a[:, ::-1, :]
        if k:
            a = np.rot90(a, k, axes=(1, 2))
        out.append(np.ascontiguousarray(a))
    return out


def geometric(rng: np.random.Generator, aug: Augment, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip / 90° rotation of every (C,H,W) array."""
    return apply_geometric(geometric_params(rng, aug), *arrays)
