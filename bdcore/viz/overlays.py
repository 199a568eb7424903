"""Image overlays for Explore and Review: building outlines (pixel coordinates, SpaceNet ``PolygonWKT_Pix``),
prediction tints and the TP/FP/FN picture of a tile's score.

The picture draws a ``scoring.TileScore`` as it was scored: nothing here matches buildings, so the picture and the
tile's score row show the same TP/FP/FN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry

from bdcore.data.imagery import to_display_rgb
from bdcore.metrics.scoring import TileScore

# Colours (RGB) used for outlines in image overlays.
TRUTH_RGB = (255, 221, 0)   # ground truth: yellow
PRED_RGB = (0, 230, 255)    # prediction: cyan
TP_RGB = (40, 220, 60)      # matched proposal: green
FP_RGB = (255, 50, 50)      # unmatched proposal: red
FN_RGB = (60, 120, 255)     # missed ground truth: blue


def _poly_rings(poly: BaseGeometry) -> list[np.ndarray]:
    rings = []
    for g in getattr(poly, "geoms", [poly]):
        if g.is_empty or g.geom_type != "Polygon":
            continue
        for ring in [g.exterior, *g.interiors]:
            # pixel-edge coordinates → the pixel whose top-left corner is that point (floor)
            rings.append(np.floor(np.asarray(ring.coords)[:, :2]).astype(np.int32))
    return rings


def draw_outlines(rgb: np.ndarray, polygons: Iterable[BaseGeometry], color: Sequence[int] = TRUTH_RGB,
                  thickness: int = 2) -> np.ndarray:
    """Copy of ``rgb`` (H,W,3 uint8) with polygon outlines (pixel coordinates, SpaceNet PolygonWKT_Pix) drawn."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"draw_outlines: expected an (H,W,3) image, got shape {rgb.shape}")
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    rings = [r for p in polygons for r in _poly_rings(p)]
    if rings:
        cv2.polylines(out, rings, isClosed=True, color=tuple(int(c) for c in color), thickness=thickness,
                      lineType=cv2.LINE_8)
    return out


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int] = PRED_RGB, alpha: float = 0.45) -> np.ndarray:
    """Blend a binary mask (H,W) onto ``rgb`` in ``color``."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask_overlay: mask {mask.shape} does not match image {rgb.shape[:2]}")
    out = rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def match_overlay(rgb: np.ndarray, tp: Sequence[BaseGeometry], fp: Sequence[BaseGeometry],
                  fn: Sequence[BaseGeometry], thickness: int = 2) -> np.ndarray:
    """TP/FP/FN view: matched proposals (``tp``) green, unmatched proposals (``fp``) red, missed truths (``fn``)
    blue."""
    out = draw_outlines(rgb, fn, FN_RGB, thickness)
    out = draw_outlines(out, tp, TP_RGB, thickness)
    return draw_outlines(out, fp, FP_RGB, thickness)


def tile_preview(image: np.ndarray, outlines: Sequence[BaseGeometry] = (), bands: Sequence[int] = (0, 1, 2),
                 lo: float = 2.0, hi: float = 98.0, name: str = "image") -> np.ndarray:
    """Display RGB (uint8 H,W,3) of a raw (C,H,W) tile, percentile-stretched, with ``outlines`` (truth, yellow) drawn.
    ``bands``: the three bands shown (any for a 1-band image); ``name`` goes in the error for a band it lacks."""
    bands = tuple(int(b) for b in bands)
    if image.shape[0] == 1:
        bands = (0, 0, 0)
    elif max(bands) >= image.shape[0]:
        raise ValueError(f"{name} has {image.shape[0]} bands; band {max(bands) + 1} does not exist. "
                         f"Fix: pick bands 1-{image.shape[0]}.")
    rgb = to_display_rgb(image, bands=bands, lo=lo, hi=hi)
    return draw_outlines(rgb, outlines, TRUTH_RGB, 2) if len(outlines) else rgb


@dataclass(frozen=True)
class ReviewViews:
    """The Review page's four views of one tile; ``drawn`` counts the outlines of the ``matches`` view by colour
    (``{"tp": green, "fp": red, "fn": blue}``), which are the tile's TP/FP/FN."""

    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    matches: np.ndarray
    drawn: dict[str, int]


def review_images(image: np.ndarray, score: TileScore, lo: float = 2.0, hi: float = 98.0) -> ReviewViews:
    """``image`` (a raw (C,H,W) tile, stretched), ``truth`` (ground-truth outlines), ``prediction`` (mask tint +
    predicted outlines) and ``matches`` (TP green / FP red / FN blue, exactly as ``score`` counted them; polygons
    under the scorer's ``min_area`` are not scored, so they are not in this view)."""
    rgb = to_display_rgb(image, bands=(0, 1, 2) if image.shape[0] >= 3 else (0, 0, 0), lo=lo, hi=hi)
    tp, fp, fn = score.tp_proposals, score.fp_proposals, score.fn_truth
    return ReviewViews(
        image=rgb,
        truth=draw_outlines(rgb, score.truth, TRUTH_RGB),
        prediction=draw_outlines(mask_overlay(rgb, score.pred, PRED_RGB, 0.35), [p for p, _ in score.proposals],
                                 PRED_RGB),
        matches=match_overlay(rgb, tp, fp, fn),
        drawn={"tp": len(tp), "fp": len(fp), "fn": len(fn)},
    )
