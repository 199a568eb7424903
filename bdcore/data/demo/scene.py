"""The demo AOI as vector data: street grid, blocks of terraced / detached / commercial buildings, parking lots,
parks and trees, in global pixel coordinates (x east, y south, origin = top-left corner of tile 0).

Every random choice draws from one generator in a fixed order, so a seed gives the same scene (and the same files)
on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

TILE = 650  # tile side in pixels, as a real SpaceNet 2 PS-RGB tile
# 8 tile columns fit east of the origin inside the real Paris training tiles' bounding box
# (lon 2.1864114 .. 2.3004864, lat 48.9757509 .. 49.0582359).
MAX_COLS = 8

# Shadows fall to the north-north-west (sun in the south-south-east, late morning in Paris); y grows southwards.
SHADOW_DIR = np.array([-0.35, -0.94])

# Roof colours in PS-RGB-like digital numbers (real tiles: band means ~400-600, max ~1800-2000).
ROOFS = {  # name: (colour, weight); several overlap road/ground/soil in every single band on purpose
    "terracotta": (np.array([780.0, 470.0, 370.0]), 3.0),
    "slate": (np.array([420.0, 445.0, 490.0]), 3.0),
    "zinc": (np.array([610.0, 640.0, 660.0]), 2.0),
    "concrete": (np.array([900.0, 900.0, 870.0]), 2.0),
    "beige": (np.array([700.0, 650.0, 560.0]), 2.0),
    "gravel": (np.array([560.0, 570.0, 540.0]), 1.5),
    "dark": (np.array([300.0, 315.0, 340.0]), 1.0),
}
BLOCK_KINDS = (("detached", 0.38), ("terrace", 0.32), ("commercial", 0.12), ("park", 0.08), ("parking", 0.10))


@dataclass
class Building:
    footprint: Polygon  # label geometry, global pixel coordinates
    segments: list[tuple[Polygon, float]]  # roof facets (geometry, brightness factor)
    colour: np.ndarray
    height: float  # shadow length in pixels
    details: list[tuple[Polygon, float]] = field(default_factory=list)  # AC units, skylights (still roof)
    shadow: BaseGeometry | None = None


@dataclass
class Scene:
    cols: int
    rows: int
    sidewalks: list[Polygon]
    roads: list[Polygon]
    markings: list[Polygon]
    parking: list[Polygon]
    cars: list[tuple[Polygon, np.ndarray]]
    trees: list[tuple[Point, float]]
    buildings: list[Building]
    empty_tiles: set[int]
    _trees: dict = field(default_factory=dict, repr=False)

    def shadow_tree(self) -> shapely.STRtree:
        if "shadow" not in self._trees:
            self._trees["shadow"] = shapely.STRtree([b.shadow for b in self.buildings])
        return self._trees["shadow"]

    def footprint_tree(self) -> shapely.STRtree:
        if "footprint" not in self._trees:
            self._trees["footprint"] = shapely.STRtree([b.footprint for b in self.buildings])
        return self._trees["footprint"]


def grid_shape(n_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the demo's tile grid: about 3:2, at most ``MAX_COLS`` wide."""
    cols = max(1, min(MAX_COLS, n_tiles, math.ceil(math.sqrt(1.5 * n_tiles))))
    return cols, math.ceil(n_tiles / cols)


# ----------------------------------------------------------------------------------------------- buildings


def _rect(cx: float, cy: float, w: float, h: float, angle: float) -> Polygon:
    return affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle, origin=(cx, cy))


def _gable(rect: Polygon, along_x: bool, frame: tuple[float, float, float]) -> list[tuple[Polygon, float]]:
    """Split an (unrotated-frame) rectangle into two roof facets along its long axis, lit by the sun."""
    x0, y0, x1, y1 = rect.bounds
    if along_x:
        a, b = box(x0, y0, x1, (y0 + y1) / 2), box(x0, (y0 + y1) / 2, x1, y1)
    else:
        a, b = box(x0, y0, (x0 + x1) / 2, y1), box((x0 + x1) / 2, y0, x1, y1)
    out = []
    for half in (a, b):
        half_r = affinity.rotate(half, frame[2], origin=frame[:2])
        d = np.array(half_r.centroid.coords[0]) - np.array(affinity.rotate(rect, frame[2], origin=frame[:2]).centroid.coords[0])
        lit = float(-(d @ SHADOW_DIR))  # facet facing the sun is brighter
        out.append((half_r, 1.12 if lit > 0 else 0.80))
    return out


def _roof_details(rng: np.random.Generator, footprint: Polygon, angle: float) -> list[tuple[Polygon, float]]:
    """AC units and skylights on a large flat roof (darker or brighter boxes fully inside it)."""
    details: list[tuple[Polygon, float]] = []
    for _ in range(int(rng.integers(1, 6))):
        c = footprint.representative_point() if rng.random() < 0.3 else None
        x0, y0, x1, y1 = footprint.bounds
        pt = c or Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        unit = _rect(pt.x, pt.y, rng.uniform(4, 9), rng.uniform(4, 9), angle)
        if footprint.buffer(-3).contains(unit):
            details.append((unit, float(rng.choice([0.7, 1.25]))))
    return details


def _make_building(rng: np.random.Generator, parts: list[Polygon], frame: tuple[float, float, float],
                   style: str | None = None, colour_name: str | None = None) -> Building:
    """``parts`` are axis-aligned boxes in a local frame (cx, cy, angle) sharing edges exactly."""
    names = list(ROOFS)
    weights = np.array([ROOFS[n][1] for n in names])
    colour_name = colour_name or names[rng.choice(len(names), p=weights / weights.sum())]
    colour = ROOFS[colour_name][0] * rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, 3)
    style = style or ("gable" if colour_name in ("terracotta", "slate", "zinc") and rng.random() < 0.8 else "flat")
    footprint = unary_union(parts)
    if not isinstance(footprint, Polygon):  # parts must touch along edges; fall back to the biggest piece
        footprint = max(getattr(footprint, "geoms", [footprint]), key=lambda g: g.area)
    footprint = affinity.rotate(Polygon(footprint.exterior), frame[2], origin=frame[:2])
    footprint = footprint.simplify(0.0)  # drop collinear vertices left by the union
    segments: list[tuple[Polygon, float]] = []
    for p in parts:
        if style == "gable":
            x0, y0, x1, y1 = p.bounds
            segments += _gable(p, (x1 - x0) >= (y1 - y0), frame)
        else:
            segments.append((affinity.rotate(p, frame[2], origin=frame[:2]), 1.0))
    details = _roof_details(rng, footprint, frame[2]) if style == "flat" and footprint.area > 1500 else []
    return Building(footprint, segments, colour, height=float(rng.uniform(7, 20)), details=details)


def _terrace(rng, bx0, by0, bx1, by1) -> list[Building]:
    """Rows of houses sharing walls along the north and (if room) south edges of a block."""
    out = []
    depth = rng.uniform(32, 55)
    rows = [(by0, +1)] + ([(by1, -1)] if by1 - by0 > 2 * depth + 25 else [])
    for yedge, sign in rows:
        x = bx0 + rng.uniform(0, 8)
        while True:
            w = rng.uniform(22, 46)
            if x + w > bx1:
                break
            y_a, y_b = (yedge, yedge + depth) if sign > 0 else (yedge - depth, yedge)
            parts = [box(x, y_a, x + w, y_b)]
            if rng.random() < 0.2:  # back wing -> L-shaped footprint
                wing_d = rng.uniform(10, 22)
                ww = w * rng.uniform(0.35, 0.6)
                wy = (y_b, y_b + wing_d) if sign > 0 else (y_a - wing_d, y_a)
                parts.append(box(x, wy[0], x + ww, wy[1]))
            out.append(_make_building(rng, parts, (x, yedge, 0.0)))
            x += w + (rng.uniform(8, 20) if rng.random() < 0.15 else 0.0)
    return out


def _detached(rng, bx0, by0, bx1, by1, angle0: float) -> list[Building]:
    out: list[Building] = []
    taken: list[Polygon] = []
    target = max(1, int((bx1 - bx0) * (by1 - by0) / 6000))
    block = box(bx0, by0, bx1, by1)
    for _ in range(target * 8):
        if len(out) >= target:
            break
        w, h = rng.uniform(22, 70), rng.uniform(20, 55)
        if w > bx1 - bx0 or h > by1 - by0:
            continue
        cx, cy = rng.uniform(bx0 + w / 2, bx1 - w / 2 + 1e-6), rng.uniform(by0 + h / 2, by1 - h / 2 + 1e-6)
        angle = angle0 + rng.uniform(-6, 6)
        parts = [box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
        if rng.random() < 0.35:  # L-shape: wing sharing part of an edge
            ww, wh = w * rng.uniform(0.3, 0.55), rng.uniform(12, 28)
            if rng.random() < 0.5:
                parts.append(box(cx - w / 2, cy + h / 2, cx - w / 2 + ww, cy + h / 2 + wh))
            else:
                parts.append(box(cx + w / 2 - ww, cy - h / 2 - wh, cx + w / 2, cy - h / 2))
        fp = affinity.rotate(unary_union(parts), angle, origin=(cx, cy))
        if not block.contains(fp):
            continue
        grown = fp.buffer(7, join_style="mitre")
        if any(grown.intersects(t) for t in taken):
            continue
        b = _make_building(rng, parts, (cx, cy, angle))
        taken.append(b.footprint)
        out.append(b)
    return out


def _commercial(rng, bx0, by0, bx1, by1) -> list[Building]:
    w, h = (bx1 - bx0) * rng.uniform(0.5, 0.85), (by1 - by0) * rng.uniform(0.5, 0.85)
    x, y = rng.uniform(bx0, bx1 - w), rng.uniform(by0, by1 - h)
    parts = [box(x, y, x + w, y + h)]
    if rng.random() < 0.5 and w > 60 and h > 60:  # notch it into an L
        cut = box(x + w * rng.uniform(0.4, 0.7), y + h * rng.uniform(0.4, 0.7), x + w, y + h)
        parts = [box(x, y, x + w, cut.bounds[1]), box(x, cut.bounds[1], cut.bounds[0], y + h)]
    colour = str(rng.choice(["concrete", "gravel", "zinc", "dark"]))
    return [_make_building(rng, parts, (x, y, 0.0), style="flat", colour_name=colour)]


def _parking_lot(rng, bx0, by0, bx1, by1) -> tuple[Polygon, list[tuple[Polygon, np.ndarray]]]:
    """A lot in the block's north-west corner and the cars parked on it."""
    lot = box(bx0 + 6, by0 + 6, bx0 + (bx1 - bx0) * rng.uniform(0.5, 0.95), by0 + (by1 - by0) * rng.uniform(0.5, 0.95))
    lx0, ly0, lx1, ly1 = lot.bounds
    cars = []
    for cy in np.arange(ly0 + 6, ly1 - 16, 24):
        for cx in np.arange(lx0 + 4, lx1 - 8, 11):
            if rng.random() < 0.55:
                colour = rng.choice([200.0, 450.0, 900.0, 1300.0]) * rng.uniform(0.8, 1.2, 3)
                cars.append((box(cx, cy, cx + 7, cy + 14), colour))
    return lot, cars


# ----------------------------------------------------------------------------------------------- the AOI


@dataclass
class _Streets:
    vroads: list[tuple[float, float]]  # (x centre, width) of north-south roads
    hroads: list[tuple[float, float]]  # (y centre, width) of east-west roads
    sidewalks: list[Polygon]
    roads: list[Polygon]
    markings: list[Polygon]


def _streets(rng: np.random.Generator, W: int, H: int) -> _Streets:
    """A street grid over the W×H pixel AOI (roads run 60 px past its edges)."""

    def positions(extent: int) -> list[tuple[float, float]]:
        out, x = [], rng.uniform(30, 180)
        while x < extent + 60:
            out.append((x, rng.uniform(14, 26)))
            x += rng.uniform(210, 340)
        return out

    vroads, hroads = positions(W), positions(H)
    sidewalks, roads, markings = [], [], []
    for x, w in vroads:
        sidewalks.append(box(x - w / 2 - 5, -60, x + w / 2 + 5, H + 60))
        roads.append(box(x - w / 2, -60, x + w / 2, H + 60))
        markings += [box(x - 1, y, x + 1, y + 12) for y in np.arange(-60, H + 60, 32)]
    for y, w in hroads:
        sidewalks.append(box(-60, y - w / 2 - 5, W + 60, y + w / 2 + 5))
        roads.append(box(-60, y - w / 2, W + 60, y + w / 2))
        markings += [box(x, y - 1, x + 12, y + 1) for x in np.arange(-60, W + 60, 32)]
    return _Streets(vroads, hroads, sidewalks, roads, markings)


def _between(pos: list[tuple[float, float]], extent: int) -> list[tuple[float, float]]:
    """The (start, end) spans between consecutive roads (sidewalks included), edge to edge."""
    cuts = [-60.0] + [v for p, w in pos for v in (p - w / 2 - 5, p + w / 2 + 5)] + [extent + 60.0]
    return [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]


def _fill_blocks(rng: np.random.Generator, streets: _Streets, W: int, H: int):
    """(buildings, parking lots, cars) of every block between the streets; a block gets one kind at random."""
    buildings: list[Building] = []
    parking: list[Polygon] = []
    cars: list[tuple[Polygon, np.ndarray]] = []
    kinds, weights = zip(*BLOCK_KINDS)
    for xa, xb in _between(streets.vroads, W):
        for ya, yb in _between(streets.hroads, H):
            bx0, by0, bx1, by1 = xa + 4, ya + 4, xb - 4, yb - 4
            if bx1 - bx0 < 40 or by1 - by0 < 40:
                continue
            kind = rng.choice(list(kinds), p=list(weights))
            if kind == "terrace":
                buildings += _terrace(rng, bx0, by0, bx1, by1)
                if by1 - by0 > 170:  # detached houses in the middle of deep blocks
                    buildings += _detached(rng, bx0, by0 + 75, bx1, by1 - 75, 0.0)
            elif kind == "detached":
                buildings += _detached(rng, bx0, by0, bx1, by1, float(rng.choice([0.0, rng.uniform(-25, 25)])))
            elif kind == "commercial":
                buildings += _commercial(rng, bx0, by0, bx1, by1)
            elif kind == "parking":
                lot, lot_cars = _parking_lot(rng, bx0, by0, bx1, by1)
                parking.append(lot)
                cars += lot_cars
    return buildings, parking, cars


def _cast_shadows(buildings: list[Building]) -> None:
    for b in buildings:
        v = SHADOW_DIR * b.height
        hulls = [unary_union([s, affinity.translate(s, v[0], v[1])]).convex_hull for s, _ in b.segments]
        b.shadow = unary_union(hulls)


def _plant_trees(rng: np.random.Generator, W: int, H: int, cols: int, empty: set[int], exclusion: list[Polygon],
                 blocked: BaseGeometry) -> list[tuple[Point, float]]:
    """Trees anywhere but on ``blocked`` (streets, buildings, lots), denser in the empty (park) tiles."""
    shapely.prepare(blocked)
    n_trees = int(W * H / 9000)
    candidates = rng.uniform([0, 0], [W, H], size=(n_trees * 3, 2))
    for k in empty:
        r, c = divmod(k, cols)
        candidates = np.vstack([candidates, rng.uniform([c * TILE, r * TILE], [(c + 1) * TILE, (r + 1) * TILE], size=(60, 2))])
    radii = rng.uniform(5, 16, len(candidates))
    keep = rng.random(len(candidates)) < 0.6
    points = shapely.points(candidates)
    if exclusion:
        keep |= shapely.contains(unary_union(exclusion), points)
    free = ~shapely.dwithin(blocked, points, radii + 2)
    return [(points[i], float(radii[i])) for i in np.flatnonzero(free & keep)]


def make_scene(n_tiles: int, seed: int) -> Scene:
    """The whole AOI as vectors, in global pixel coordinates (x east, y south, origin = top-left of tile 0).
    About a tenth of the tiles (at least one when there are two or more) hold no building."""
    rng = np.random.default_rng([seed, 20240])
    cols, rows = grid_shape(n_tiles)
    W, H = cols * TILE, rows * TILE
    n_empty = 0 if n_tiles < 2 else max(1, round(0.1 * n_tiles))
    empty = set(int(k) for k in rng.choice(n_tiles, size=n_empty, replace=False)) if n_empty else set()
    exclusion = [box(c * TILE - 4, r * TILE - 4, (c + 1) * TILE + 4, (r + 1) * TILE + 4)
                 for r, c in (divmod(k, cols) for k in empty)]
    streets = _streets(rng, W, H)
    buildings, parking, cars = _fill_blocks(rng, streets, W, H)
    buildings = [b for b in buildings if not any(b.footprint.intersects(e) for e in exclusion)]
    _cast_shadows(buildings)
    blocked = unary_union(streets.sidewalks + [b.footprint for b in buildings] + parking)
    trees = _plant_trees(rng, W, H, cols, empty, exclusion, blocked)
    return Scene(cols, rows, streets.sidewalks, streets.roads, streets.markings, parking, cars, trees, buildings, empty)


def tile_labels(scene: Scene, k: int) -> list[tuple[Polygon, float]]:
    """Building footprints clipped to tile ``k`` in tile pixel coordinates (x=col, y=row), each with the
    fraction of its building's area inside the tile (SpaceNet's ``partialDec``)."""
    r, c = divmod(k, scene.cols)
    tile_box = box(c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE)
    out = []
    for i in sorted(scene.footprint_tree().query(tile_box, predicate="intersects")):
        whole = scene.buildings[i].footprint
        clipped = whole.intersection(tile_box)
        for p in getattr(clipped, "geoms", [clipped]):
            if isinstance(p, Polygon) and p.area >= 4.0:
                out.append((affinity.translate(p, -c * TILE, -r * TILE), min(1.0, p.area / whole.area)))
    return out
