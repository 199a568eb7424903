"""Masks ↔ building polygons in pixel coordinates (x = column, y = row, pixel corners: SpaceNet ``PolygonWKT_Pix``).

Vectorisation uses ``rasterio.features.shapes`` on an instance-label image with the identity transform,
so every polygon follows pixel edges exactly: rasterize → polygonize is lossless (before ``simplify``).
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Sequence

import numpy as np
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from scipy import ndimage
from shapely.geometry import shape as geojson_shape
from shapely.geometry.base import BaseGeometry

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as rasterio's shapes(connectivity=4)


def _fill_small_holes(mask: np.ndarray, hole_area: float) -> np.ndarray:
    """Fill background components smaller than ``hole_area`` pixels that do not touch the image edge."""
    if hole_area <= 0:
        return mask
    bg, n = ndimage.label(~mask, structure=_CROSS)
    if n == 0:
        return mask
    sizes = np.bincount(bg.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    small = sizes < hole_area
    small[0] = False
    small[edge] = False
    return mask | small[bg]


def _grow(seeds: np.ndarray, footprint: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """Give each footprint pixel the label of its nearest seed in the same footprint blob.

    One Euclidean distance transform does nearly all of it; the few pixels whose nearest seed lies across
    a gap (another blob) get a geodesic growth inside their own blob instead.
    """
    if seeds.max() == 0:
        return seeds
    _, (ri, ci) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    near = seeds[ri, ci]
    seed_blob = np.zeros(int(seeds.max()) + 1, dtype=blobs.dtype)
    seed_blob[seeds[seeds > 0]] = blobs[seeds > 0]
    ok = footprint & (seed_blob[near] == blobs)
    labels = np.where(ok, near, 0).astype(np.int32)
    todo = footprint & ~ok
    while todo.any():
        grown = ndimage.grey_dilation(labels, footprint=_CROSS)
        new = todo & (grown > 0)
        if not new.any():
            break
        labels[new] = grown[new]
        todo &= ~new
    return labels


def _instances(footprint: np.ndarray, boundary: np.ndarray | None, boundary_threshold: float, split: str,
               min_seed_area: int, min_seed_depth: float = 2.0) -> np.ndarray:
    """Instance labels (int32, 0 = background) of a binary footprint."""
    blobs, nb = ndimage.label(footprint, structure=_CROSS)
    if boundary is not None:
        seeds_mask = footprint & ~(boundary > boundary_threshold)
        # seeds need a core at least ``min_seed_depth`` px thick: the thin rim of footprint that a blurry
        # prediction leaves outside the boundary band is not a building
        depth = ndimage.distance_transform_edt(seeds_mask)
    elif split == "watershed":
        dist = ndimage.distance_transform_edt(footprint)
        # seeds: local maxima of the distance map at least 2 px inside the footprint and at least 40% as
        # deep as the deepest point of their blob (so a neck between two houses is no seed)
        deepest = np.zeros(nb + 1)
        np.maximum.at(deepest, blobs[footprint], dist[footprint])
        peaks = ((dist == ndimage.maximum_filter(dist, size=5)) & (dist >= 2.0) & footprint
                 & (dist >= 0.4 * deepest[blobs]))
        seeds_mask = ndimage.binary_dilation(peaks, iterations=1) & footprint
        depth = None
    else:
        return blobs.astype(np.int32)
    seeds, ns = ndimage.label(seeds_mask, structure=_CROSS)
    if ns:
        drop = np.bincount(seeds.ravel(), minlength=ns + 1) < min_seed_area
        if depth is not None:
            deep = np.zeros(ns + 1, dtype=bool)
            deep[seeds[depth >= min_seed_depth]] = True
            drop |= ~deep
        drop[0] = False
        if drop.any():
            seeds[drop[seeds]] = 0
    labels = _grow(seeds, footprint, blobs)
    # footprint parts no seed reached (a blob that is all boundary, say) become instances of their own
    rest = footprint & (labels == 0)
    if rest.any():
        extra, _ = ndimage.label(rest, structure=_CROSS)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels.astype(np.int32)


def mask_to_polygons(prob: np.ndarray, threshold: float = 0.5, min_area: float = 20.0,
                     boundary: np.ndarray | None = None, simplify: float = 0.5, hole_area: float = 20.0,
                     split: Literal["none", "watershed"] = "none", boundary_threshold: float = 0.5,
                     min_seed_area: int = 4) -> list[tuple[shapely.Polygon, float]]:
    """Building polygons from a probability map (H,W) → ``[(Polygon, confidence), ...]`` in pixel coordinates.

    ``confidence`` is the mean probability of the building's pixels. Holes smaller than ``hole_area`` px
    are filled; ``simplify`` is a topology-preserving Douglas-Peucker tolerance in px (0 = exact pixel
    edges); polygons with area < ``min_area`` px² are dropped. Touching buildings are split with the
    ``boundary`` channel (seeds = footprint minus boundary, each footprint pixel then joins its nearest seed)
    or, with ``split="watershed"``, by seeds at the peaks of the footprint's distance transform.
    """
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ValueError(f"mask_to_polygons: expected a (H,W) probability map, got shape {prob.shape}")
    if split not in ("none", "watershed"):
        raise ValueError(f"mask_to_polygons: split must be 'none' or 'watershed', got {split!r}")
    prob = prob.astype(np.float32, copy=False)
    if boundary is not None:
        boundary = np.asarray(boundary)
        if boundary.ndim == 3 and boundary.shape[0] == 1:
            boundary = boundary[0]
        if boundary.shape != prob.shape:
            raise ValueError(f"mask_to_polygons: boundary shape {boundary.shape} != probability shape {prob.shape}")
    footprint = _fill_small_holes(prob > threshold, hole_area)
    if not footprint.any():
        return []
    labels = _instances(footprint, boundary, boundary_threshold, split, min_seed_area)
    n = int(labels.max())
    sums = ndimage.sum_labels(prob, labels, index=np.arange(n + 1))
    counts = np.bincount(labels.ravel(), minlength=n + 1)

    out: list[tuple[shapely.Polygon, float]] = []
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.identity()):
        poly = geojson_shape(geom)
        if simplify > 0:
            poly = poly.simplify(simplify, preserve_topology=True)
        if poly.is_empty or poly.area < min_area:
            continue
        k = int(value)
        out.append((poly, float(sums[k] / counts[k]) if counts[k] else 0.0))
    return out


def _geoms(polys: Iterable[Any]) -> list[BaseGeometry]:
    return [p[0] if isinstance(p, tuple) else p for p in polys]


def polygons_to_mask(polys: Iterable[Any], shape: Sequence[int], all_touched: bool = False) -> np.ndarray:
    """Burn pixel-coordinate polygons (or ``(polygon, confidence)`` pairs) into a uint8 0/1 mask of ``shape``."""
    h, w = int(shape[-2]), int(shape[-1])
    geoms = [g for g in _geoms(polys) if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros((h, w), dtype=np.uint8)
    return rasterio.features.rasterize(((g, 1) for g in geoms), out_shape=(h, w), transform=Affine.identity(),
                                       fill=0, dtype="uint8", all_touched=all_touched)


def polygons_to_geo(polys: Iterable[Any], transform: Affine | Sequence[float]) -> list[BaseGeometry]:
    """Pixel-coordinate polygons → the raster's CRS via its affine ``transform`` (rasterio ``Affine``)."""
    t = transform if isinstance(transform, Affine) else Affine(*list(transform)[:6])
    params = [t.a, t.b, t.d, t.e, t.c, t.f]
    return [shapely.affinity.affine_transform(g, params) for g in _geoms(polys)]


__all__ = ["mask_to_polygons", "polygons_to_geo", "polygons_to_mask"]
