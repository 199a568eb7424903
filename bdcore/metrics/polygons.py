"""Masks ↔ building polygons in pixel coordinates (x = column, y = row, pixel corners: SpaceNet ``PolygonWKT_Pix``).

Vectorisation uses ``rasterio.features.shapes`` on an instance-label image with the identity transform,
so every polygon follows pixel edges exactly: rasterize → polygonize is lossless (before the outline step).

The outline step (:func:`regularise`, one ``outline`` choice, :data:`OUTLINES`): ``"none"`` keeps the exact pixel
edges, ``"simplify"`` is Douglas-Peucker at ``simplify`` px, ``"orthogonal"`` snaps every edge to the building's two
dominant (perpendicular) directions. :data:`DEFAULT_OUTLINE` is the one that scored best in ``bench/outlines.py``
(SpaceNet F1 of polygonised blurred truth masks, Vegas sample and demo AOI; figures in docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from scipy import ndimage
from shapely.geometry import shape as geojson_shape
from shapely.geometry.base import BaseGeometry

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as rasterio's shapes(connectivity=4)

Outline = Literal["none", "simplify", "orthogonal"]
OUTLINES: tuple[str, ...] = get_args(Outline)
# the best SpaceNet F1 in bench/outlines.py (docs/performance.md). Blurred, noisy truth masks, Vegas sample (10 tiles)
# / demo (24 tiles): orthogonal 0.9860 / 0.6785, simplify and none 0.9860 / 0.6774 (one building more matched on the
# demo; the same with seed 1), mean IoU of matches 0.941 / 0.925 vs 0.934 / 0.912, 9.9 / 5.9 vertices per building
# instead of 81 / 67 (simplify) and 91 / 73 (none). A tiny model trained 80 steps on Vegas: F1 0.2069 vs 0.2026
# (48 vs 47 TP), mean IoU 0.715 vs 0.725, 28.6 vs 97 vertices. Polygonisation takes ~1.5x as long (82 vs 53 ms per
# 650² Vegas tile; 3x on a weak model's many fragments)
DEFAULT_OUTLINE: Outline = "orthogonal"
# orthogonal outlines: the Douglas-Peucker tolerance (px) of the polygon whose edges are snapped (0.5 px keeps a
# pixel staircase whole: its steps are exactly 0.5 px off the line), the shortest side kept (px), and the least IoU
# with the pixel polygon below which the simplified polygon is kept instead
ORTHO_TOLERANCE = 1.0
ORTHO_MIN_SIDE = 2.0
ORTHO_MIN_IOU = 0.8


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


def check_outline(outline: str) -> Outline:
    """``outline`` if it is one of :data:`OUTLINES`, else a ValueError naming the choices."""
    if outline not in OUTLINES:
        raise ValueError(f"outline must be one of {', '.join(OUTLINES)}, got {outline!r}")
    return outline  # type: ignore[return-value]


def dominant_angle(poly: shapely.Polygon) -> float:
    """The building's dominant edge direction in degrees, in [-45, 45]: the circular mean of its exterior's edge
    angles mod 90° (so all four sides of a rectangle agree), weighted by length² (long sides decide)."""
    d = np.diff(np.asarray(poly.exterior.coords)[:, :2], axis=0)
    theta, w = np.arctan2(d[:, 1], d[:, 0]), (d ** 2).sum(axis=1)
    return math.degrees(math.atan2(float((w * np.sin(4 * theta)).sum()), float((w * np.cos(4 * theta)).sum())) / 4)


def _snap_ring(xy: np.ndarray, min_side: float) -> np.ndarray | None:
    """Corners (M,2) of the orthogonal version of a closed ring (N+1,2) already rotated so that its dominant
    directions are the axes; None when fewer than 4 sides are left.

    Consecutive edges of one direction (horizontal or vertical) form a side, placed at their length-weighted mean
    position; sides shorter than ``min_side`` are dropped (their two neighbours, parallel, merge into one);
    each corner is where two consecutive sides meet."""
    d = np.diff(xy[:, :2], axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    keep = length > 0
    d, length, mid = d[keep], length[keep], ((xy[:-1, :2] + xy[1:, :2]) / 2)[keep]
    horiz = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    starts = np.flatnonzero(horiz != np.roll(horiz, 1))
    if len(starts) < 4:
        return None
    order = np.roll(np.arange(len(d)), -int(starts[0]))  # begin at a change of direction: runs never wrap
    run = np.cumsum(horiz[order] != np.roll(horiz[order], 1)) - 1
    pos = np.where(horiz, mid[:, 1], mid[:, 0])[order] * length[order]
    weight = np.bincount(run, weights=length[order]).tolist()
    coord = (np.bincount(run, weights=pos) / np.asarray(weight)).tolist()
    is_h = [bool(horiz[order][np.argmax(run == k)]) for k in range(len(weight))]
    while len(coord) > 4:
        n = len(coord)
        side = [abs(coord[(i + 1) % n] - coord[i - 1]) for i in range(n)]
        i = int(np.argmin(side))
        if side[i] >= min_side:
            break
        a, b = (i - 1) % n, (i + 1) % n
        wa, wb = weight[a], weight[b]
        coord[a], weight[a] = (coord[a] * wa + coord[b] * wb) / (wa + wb), wa + wb
        for k in sorted((i, b), reverse=True):
            del coord[k], weight[k], is_h[k]
    n = len(coord)
    return np.array([(coord[(i + 1) % n], coord[i]) if is_h[i] else (coord[i], coord[(i + 1) % n])
                     for i in range(n)])


def rectangle_angle(poly: shapely.Polygon) -> float:
    """The direction of the minimum rotated rectangle's longest side, mod 90°, in degrees in [-45, 45)."""
    xy = np.asarray(shapely.minimum_rotated_rectangle(poly).exterior.coords)
    d = np.diff(xy[:3, :2], axis=0)
    side = d[int(np.argmax(np.hypot(d[:, 0], d[:, 1])))]
    return (math.degrees(math.atan2(side[1], side[0])) + 45.0) % 90.0 - 45.0


def _snapped(work: shapely.Polygon, angle: float, min_side: float) -> shapely.Polygon | None:
    """``work`` with its edges snapped to ``angle`` and ``angle`` + 90° (None if nothing valid is left)."""
    origin = work.centroid
    turned = shapely.affinity.rotate(work, -angle, origin=origin)
    shell = _snap_ring(np.asarray(turned.exterior.coords), min_side)
    if shell is None:
        return None
    holes = [h for h in (_snap_ring(np.asarray(r.coords), min_side) for r in turned.interiors) if h is not None]
    out = shapely.affinity.rotate(shapely.Polygon(shell, holes), angle, origin=origin)
    return out if out.is_valid and out.area > 0 else None


def orthogonalise(poly: shapely.Polygon, tolerance: float = ORTHO_TOLERANCE, min_side: float = ORTHO_MIN_SIDE,
                  min_iou: float = ORTHO_MIN_IOU) -> shapely.Polygon | None:
    """``poly`` with every edge snapped to its two dominant perpendicular directions (right angles only), or None
    when that fails: an invalid or degenerate result, or one whose IoU with ``poly`` is under ``min_iou``.

    The edges snapped are those of ``poly`` simplified at ``tolerance`` px. Two candidate directions are tried, the
    minimum rotated rectangle's (robust to ragged edges) and the edges' own (:func:`dominant_angle`; better for
    shapes a rectangle fits badly); the result closer to ``poly`` (IoU) wins. Holes get the exterior's directions
    (a hole with fewer than 4 sides left is dropped, which the IoU test then judges)."""
    work = poly.simplify(tolerance, preserve_topology=True)
    if not isinstance(work, shapely.Polygon) or work.is_empty or work.area <= 0:
        return None
    best, best_key = None, (min_iou, -math.inf)
    for angle in {round(rectangle_angle(work), 6), round(dominant_angle(work), 6)}:
        out = _snapped(work, angle, min_side)
        if out is None:
            continue
        union = out.union(poly).area
        key = (out.intersection(poly).area / union if union > 0 else 0.0, -vertex_count(out))  # ties: fewer vertices
        if key >= best_key:
            best, best_key = out, key
    return best


def regularise(poly: shapely.Polygon, outline: Outline = DEFAULT_OUTLINE, simplify: float = 0.5) -> shapely.Polygon:
    """One pixel-edge polygon's outline: ``"none"`` as is, ``"simplify"`` Douglas-Peucker (topology-preserving) at
    ``simplify`` px (0 = as is), ``"orthogonal"`` :func:`orthogonalise`, falling back to the simplified polygon."""
    if outline == "none":
        return poly
    simple = poly.simplify(simplify, preserve_topology=True) if simplify > 0 else poly
    if outline == "simplify":
        return simple
    return orthogonalise(poly) or simple


def mask_to_polygons(prob: np.ndarray, threshold: float = 0.5, min_area: float = 20.0,
                     boundary: np.ndarray | None = None, simplify: float = 0.5, hole_area: float = 20.0,
                     split: Literal["none", "watershed"] = "none", boundary_threshold: float = 0.5,
                     min_seed_area: int = 4, outline: Outline = DEFAULT_OUTLINE) -> list[tuple[shapely.Polygon, float]]:
    """Building polygons from a probability map (H,W) → ``[(Polygon, confidence), ...]`` in pixel coordinates.

    ``confidence`` is the mean probability of the building's pixels. Holes smaller than ``hole_area`` px
    are filled; ``outline`` (:func:`regularise`) shapes each polygon: ``"none"`` exact pixel edges, ``"simplify"``
    a topology-preserving Douglas-Peucker at ``simplify`` px (0 = exact pixel edges), ``"orthogonal"`` right
    angles along the building's dominant directions; polygons with area < ``min_area`` px² are dropped. Touching buildings are split with the
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
    check_outline(outline)
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
        # specks (most polygons of a noisy map) are dropped below: not worth orthogonalising
        poly = regularise(poly, "simplify" if outline == "orthogonal" and poly.area < min_area else outline, simplify)
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


def vertex_count(poly: BaseGeometry) -> int:
    """Distinct vertices of a polygon (exterior and holes; a ring's closing point is not counted again)."""
    polys = getattr(poly, "geoms", [poly])
    return sum(len(r.coords) - 1 for p in polys if not p.is_empty for r in (p.exterior, *p.interiors))


__all__ = ["DEFAULT_OUTLINE", "OUTLINES", "Outline", "check_outline", "mask_to_polygons", "orthogonalise",
           "polygons_to_geo", "polygons_to_mask", "regularise", "vertex_count"]
