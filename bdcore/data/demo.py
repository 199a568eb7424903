"""A small *synthetic* SpaceNet 2 AOI, so a fresh machine (no download, no GPU) can run the whole app.

``write_demo_aoi(dest)`` writes tiles in the ORIGINAL SpaceNet 2 release layout::

    RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img<N>.tif    650x650, uint16, 3 bands, EPSG:4326
    geojson/buildings/buildings_AOI_3_Paris_img<N>.geojson  building footprints (CRS84, 3-D like the real files)
    summaryData/AOI_3_Paris_Train_Building_Solutions.csv   ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo
    SYNTHETIC_README.txt, synthetic_demo.json               it is not real imagery

The scene is generated once for the whole AOI as vector data (street grid, blocks of terraced / detached /
commercial buildings, parks, parking lots, trees) and each tile renders its window of it, so tiles are edge to
edge like a real AOI and buildings crossing a tile edge are clipped in the labels (as SpaceNet does). Roofs are
drawn with the same rasterizer (pixel-centre rule) that turns labels into masks, so the two agree pixel for pixel.
Roof colours overlap road/ground colours in every band: a model has to use shape, edges and shadows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize as _rio_rasterize
from scipy.ndimage import map_coordinates
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

DEMO_VERSION = 1
AOI = "AOI_3_Paris"
TILE = 650
# Pixel size of a real SpaceNet 2 PS-RGB tile (RGB-PanSharpen_AOI_2_Vegas_img1265.tif): 2.7e-6 degrees (~0.3 m).
PIXEL_DEG = 2.7000000000043656e-06
# Top-left corner of real Paris training tile img1621 (AOI_3_Paris_Train_Tindex.geojson); the demo grid is aligned
# with the real Paris tile grid (step 650 px = 0.001755 degrees) and extends east and south from there.
ORIGIN_LON = 2.2864464
ORIGIN_LAT = 49.0406859
# Bounding box of the real Paris training tiles (lon_min, lat_min, lon_max, lat_max).
PARIS_BBOX = (2.1864114, 48.9757509, 2.3004864, 49.0582359)
MAX_COLS = 8  # 8 tile columns fit east of the origin inside Paris' bbox
MAX_TILES = 256
MARGIN = 10  # render margin around each tile (blur and noise see no tile edge)
SYNTHETIC_README = "SYNTHETIC_README.txt"
MANIFEST = "synthetic_demo.json"
SOLUTIONS_CSV = f"summaryData/{AOI}_Train_Building_Solutions.csv"

# Shadows fall to the north-north-west (sun in the south-south-east, late morning in Paris); y grows southwards.
SHADOW_DIR = np.array([-0.35, -0.94])

# Colours in PS-RGB-like digital numbers (real tiles: band means ~400-600, max ~1800-2000).
GRASS = np.array([330.0, 470.0, 330.0])
SOIL = np.array([560.0, 590.0, 470.0])
ASPHALT = np.array([430.0, 455.0, 480.0])
SIDEWALK = np.array([640.0, 650.0, 640.0])
PARKING = np.array([500.0, 510.0, 520.0])
MARKING = np.array([1150.0, 1150.0, 1120.0])
TREE = np.array([210.0, 320.0, 220.0])
SHADOW = np.array([0.36, 0.40, 0.52])
ROOFS = {  # name: (colour, weight); several overlap road/ground/soil in every single band on purpose
    "terracotta": (np.array([780.0, 470.0, 370.0]), 3.0),
    "slate": (np.array([420.0, 445.0, 490.0]), 3.0),
    "zinc": (np.array([610.0, 640.0, 660.0]), 2.0),
    "concrete": (np.array([900.0, 900.0, 870.0]), 2.0),
    "beige": (np.array([700.0, 650.0, 560.0]), 2.0),
    "gravel": (np.array([560.0, 570.0, 540.0]), 1.5),
    "dark": (np.array([300.0, 315.0, 340.0]), 1.0),
}


class DemoError(ValueError):
    """The demo cannot be written where asked (names the folder and the fix)."""


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


def tile_id(k: int) -> str:
    return f"img{k + 1}"


def tile_transform(k: int, cols: int) -> Affine:
    r, c = divmod(k, cols)
    return Affine(PIXEL_DEG, 0.0, ORIGIN_LON + c * TILE * PIXEL_DEG, 0.0, -PIXEL_DEG, ORIGIN_LAT - r * TILE * PIXEL_DEG)


# ----------------------------------------------------------------------------------------------- scene (vectors)


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
    details: list[tuple[Polygon, float]] = []
    if style == "flat" and footprint.area > 1500:
        for _ in range(int(rng.integers(1, 6))):
            c = footprint.representative_point() if rng.random() < 0.3 else None
            x0, y0, x1, y1 = footprint.bounds
            pt = c or Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
            unit = _rect(pt.x, pt.y, rng.uniform(4, 9), rng.uniform(4, 9), frame[2])
            if footprint.buffer(-3).contains(unit):
                details.append((unit, float(rng.choice([0.7, 1.25]))))
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


def make_scene(n_tiles: int, seed: int) -> Scene:
    """The whole AOI as vectors, in global pixel coordinates (x east, y south, origin = top-left of tile 0)."""
    rng = np.random.default_rng([seed, 20240])
    cols, rows = grid_shape(n_tiles)
    W, H = cols * TILE, rows * TILE
    n_empty = 0 if n_tiles < 2 else max(1, round(0.1 * n_tiles))
    empty = set(int(k) for k in rng.choice(n_tiles, size=n_empty, replace=False)) if n_empty else set()
    exclusion = [box(c * TILE - 4, r * TILE - 4, (c + 1) * TILE + 4, (r + 1) * TILE + 4)
                 for r, c in (divmod(k, cols) for k in empty)]

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

    def edges(pos, extent):
        cuts = [-60.0] + [v for p, w in pos for v in (p - w / 2 - 5, p + w / 2 + 5)] + [extent + 60.0]
        return [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]

    buildings: list[Building] = []
    parking: list[Polygon] = []
    cars: list[tuple[Polygon, np.ndarray]] = []
    for xa, xb in edges(vroads, W):
        for ya, yb in edges(hroads, H):
            bx0, by0, bx1, by1 = xa + 4, ya + 4, xb - 4, yb - 4
            if bx1 - bx0 < 40 or by1 - by0 < 40:
                continue
            kind = rng.choice(["detached", "terrace", "commercial", "park", "parking"], p=[0.38, 0.32, 0.12, 0.08, 0.10])
            if kind == "terrace":
                new = _terrace(rng, bx0, by0, bx1, by1)
                if by1 - by0 > 170:  # detached houses in the middle of deep blocks
                    new += _detached(rng, bx0, by0 + 75, bx1, by1 - 75, 0.0)
            elif kind == "detached":
                new = _detached(rng, bx0, by0, bx1, by1, float(rng.choice([0.0, rng.uniform(-25, 25)])))
            elif kind == "commercial":
                new = _commercial(rng, bx0, by0, bx1, by1)
            elif kind == "parking":
                lot = box(bx0 + 6, by0 + 6, bx0 + (bx1 - bx0) * rng.uniform(0.5, 0.95), by0 + (by1 - by0) * rng.uniform(0.5, 0.95))
                parking.append(lot)
                lx0, ly0, lx1, ly1 = lot.bounds
                for cy in np.arange(ly0 + 6, ly1 - 16, 24):
                    for cx in np.arange(lx0 + 4, lx1 - 8, 11):
                        if rng.random() < 0.55:
                            colour = rng.choice([200.0, 450.0, 900.0, 1300.0]) * rng.uniform(0.8, 1.2, 3)
                            cars.append((box(cx, cy, cx + 7, cy + 14), colour))
                new = []
            else:
                new = []
            buildings += [b for b in new if not any(b.footprint.intersects(e) for e in exclusion)]

    for b in buildings:
        v = SHADOW_DIR * b.height
        hulls = [unary_union([s, affinity.translate(s, v[0], v[1])]).convex_hull for s, _ in b.segments]
        b.shadow = unary_union(hulls)

    # Trees: anywhere but roads and buildings, denser in empty (park) tiles.
    blocked = unary_union(sidewalks + [b.footprint for b in buildings] + parking)
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
    trees = [(points[i], float(radii[i])) for i in np.flatnonzero(free & keep)]
    return Scene(cols, rows, sidewalks, roads, markings, parking, cars, trees, buildings, empty)


# ----------------------------------------------------------------------------------------------- rendering


def _burn(geoms, shape, ox: float, oy: float, values=None, dtype="uint8") -> np.ndarray:
    """Rasterize global-pixel geometries into a window whose top-left is (ox, oy); pixel-centre rule."""
    pairs = [(g, 1 if values is None else values[i]) for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    if not pairs:
        return np.zeros(shape, dtype=dtype)
    return _rio_rasterize(pairs, out_shape=shape, transform=Affine.translation(ox, oy), fill=0, dtype=dtype)


class _Field:
    """Seamless smooth noise on the global pixel grid (bicubic value noise).

    Evaluated once for the whole AOI at 1/5 resolution; tiles upsample their crop (offsets are multiples of 5).
    """

    STEP = 5

    def __init__(self, rng: np.random.Generator, width: int, height: int, spacing: float):
        lattice = rng.standard_normal((int(height / spacing) + 6, int(width / spacing) + 6))
        ys, xs = np.mgrid[-MARGIN:height + MARGIN + self.STEP:self.STEP, -MARGIN:width + MARGIN + self.STEP:self.STEP]
        coords = [ys / spacing + 2, xs / spacing + 2]
        self.low = map_coordinates(lattice, coords, order=3, mode="nearest").astype(np.float32)

    def sample(self, ox: int, oy: int, size: int) -> np.ndarray:
        import cv2

        i0, j0, n = (oy + MARGIN) // self.STEP, (ox + MARGIN) // self.STEP, size // self.STEP
        crop = self.low[i0:i0 + n + 1, j0:j0 + n + 1]
        big = cv2.resize(crop, ((n + 1) * self.STEP, (n + 1) * self.STEP), interpolation=cv2.INTER_LINEAR)
        return big[:size, :size]


def _near(geoms, window: Polygon):
    return [g for g in geoms if g.intersects(window)]


def render_tile(scene: Scene, k: int, seed: int, fields: tuple[_Field, _Field]) -> np.ndarray:
    """uint16 (3, 650, 650) image of tile ``k``."""
    rng = np.random.default_rng([seed, k, 7])
    r, c = divmod(k, scene.cols)
    S = TILE + 2 * MARGIN
    ox, oy = c * TILE - MARGIN, r * TILE - MARGIN
    window = box(ox - 40, oy - 40, ox + S + 40, oy + S + 40)
    shape = (S, S)

    veg = 1 / (1 + np.exp(-1.6 * fields[0].sample(ox, oy, S)))
    bright = 1 + 0.07 * fields[1].sample(ox, oy, S)
    soil, grass = SOIL.astype(np.float32)[:, None, None], GRASS.astype(np.float32)[:, None, None]
    img = (soil + (grass - soil) * veg) * bright
    img *= 1 + 0.06 * rng.standard_normal((1, S, S), dtype=np.float32)

    def paint(mask: np.ndarray, colour, texture: float = 0.03):
        m = mask.astype(bool)
        if m.any():
            shade = (1 + texture * rng.standard_normal(int(m.sum()), dtype=np.float32)) * bright[m]
            for b in range(3):
                img[b][m] = np.float32(colour[b]) * shade

    paint(_burn(_near(scene.sidewalks, window), shape, ox, oy), SIDEWALK)
    paint(_burn(_near(scene.roads, window), shape, ox, oy), ASPHALT, 0.05)
    paint(_burn(_near(scene.markings, window), shape, ox, oy), MARKING)
    paint(_burn(_near(scene.parking, window), shape, ox, oy), PARKING, 0.04)
    cars = [(g, col) for g, col in scene.cars if g.intersects(window)]
    if cars:
        ids = _burn([g for g, _ in cars], shape, ox, oy, values=list(range(1, len(cars) + 1)), dtype="int32")
        for i, (_, col) in enumerate(cars, start=1):
            paint(ids == i, col, 0.02)

    # Tree shadows, then canopies.
    trees = [(p, rad) for p, rad in scene.trees if window.intersects(p)]
    if trees:
        tshadow = _burn([affinity.translate(p.buffer(rad), *(SHADOW_DIR * rad * 1.2)) for p, rad in trees], shape, ox, oy)
        img[:, tshadow.astype(bool)] *= SHADOW.astype(np.float32)[:, None]
        canopy = _burn([p.buffer(rad) for p, rad in trees], shape, ox, oy).astype(bool)
        import cv2

        blob = 1 + 0.6 * cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.5)  # leaves
        for b in range(3):
            img[b][canopy] = np.float32(TREE[b]) * blob[canopy]

    blds = [scene.buildings[i] for i in sorted(scene.shadow_tree().query(window, predicate="intersects"))]
    if blds:
        shadow = _burn([b.shadow for b in blds], shape, ox, oy).astype(bool)
        img[:, shadow] *= SHADOW.astype(np.float32)[:, None]
        segs, values, colours = [], [], [np.zeros(3)]
        for b in blds:
            for g, f in b.segments + b.details:
                segs.append(g)
                colours.append(b.colour * f)
                values.append(len(colours) - 1)
        owner = np.zeros(len(colours), dtype=np.int32)  # segment id -> building id (1-based), for wall lines
        i = 1
        for bi, b in enumerate(blds, start=1):
            n = len(b.segments) + len(b.details)
            owner[i:i + n] = bi
            i += n
        ids = _burn(segs, shape, ox, oy, values=values, dtype="int32")
        roof = ids > 0
        lut = np.stack(colours).astype(np.float32)
        tex = 1 + 0.025 * rng.standard_normal(int(roof.sum()), dtype=np.float32)
        for b in range(3):
            img[b][roof] = lut[ids[roof], b] * tex
        # Darker outline where a building meets anything else (ground or a neighbour sharing a wall).
        bid = owner[ids]
        edge = np.zeros(shape, bool)
        edge[1:, :] |= bid[1:, :] != bid[:-1, :]
        edge[:-1, :] |= bid[:-1, :] != bid[1:, :]
        edge[:, 1:] |= bid[:, 1:] != bid[:, :-1]
        edge[:, :-1] |= bid[:, :-1] != bid[:, 1:]
        img[:, edge & roof] *= np.float32(0.78)

    # Sensor: slight blur (PSF), per-tile gain, read noise.
    import cv2  # local import: cv2 is heavy and only the renderer needs it

    for b in range(3):
        img[b] = cv2.GaussianBlur(img[b], (0, 0), 0.7)
    img *= np.float32(rng.uniform(0.96, 1.04))
    img += np.float32(9.0) * rng.standard_normal(img.shape, dtype=np.float32)
    img = img[:, MARGIN:MARGIN + TILE, MARGIN:MARGIN + TILE]
    return np.clip(np.rint(img), 1, 2047).astype(np.uint16)


# ----------------------------------------------------------------------------------------------- labels


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


def _to_geo(poly: Polygon, transform: Affine) -> list[tuple[float, float]]:
    return [transform @ (x, y) for x, y in poly.exterior.coords]


def _geojson_text(geo_polys: list[list[tuple[float, float]]], partial: list[float]) -> str:
    """A FeatureCollection written the way SpaceNet's (GDAL-made) label files are: CRS84 member, 3-D rings."""
    lines = [
        "{",
        '"type": "FeatureCollection",',
        '"crs": { "type": "name", "properties": { "name": "urn:ogc:def:crs:OGC:1.3:CRS84" } },',
        " " * 80,
        '"features": [',
    ]
    feats = []
    for i, (ring, frac) in enumerate(zip(geo_polys, partial)):
        coords = ", ".join(f"[ {x!r}, {y!r}, 0.0 ]" for x, y in ring)
        props = {"OBJECTID": i + 1, "partialBuilding": float(frac < 0.999), "partialDec": round(frac, 6)}
        feats.append('{ "type": "Feature", "properties": ' + json.dumps(props)
                     + ', "geometry": { "type": "Polygon", "coordinates": [ [ ' + coords + " ] ] } }")
    lines.append(",\n".join(feats) if feats else "")
    lines += ["]", "}", ""]
    return "\n".join(lines)


def _wkt3(ring: list[tuple[float, float]], ndigits: int | None) -> str:
    fmt = (lambda v: repr(round(v, ndigits))) if ndigits is not None else repr
    return "POLYGON ((" + ",".join(f"{fmt(x)} {fmt(y)} 0" for x, y in ring) + "))"


# ----------------------------------------------------------------------------------------------- writing


README_TEXT = """SYNTHETIC DEMO DATA - NOT REAL SATELLITE IMAGERY
================================================

Written by bdcore.data.demo (version {version}, seed {seed}, {n} tiles) so the app and a training run can be tried
without downloading SpaceNet. Everything here is generated: street grid, buildings, shadows, trees and noise.

Layout and formats are those of the original SpaceNet 2 release ({aoi}_Train):
  RGB-PanSharpen/RGB-PanSharpen_{aoi}_img<N>.tif    650x650 px, uint16, 3 bands (R,G,B), EPSG:4326,
                                                    2.7e-6 degree pixels, placed on real Paris coordinates
  geojson/buildings/buildings_{aoi}_img<N>.geojson  building footprints (CRS84), empty for tiles without buildings
  summaryData/{aoi}_Train_Building_Solutions.csv   ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo

Scores measured on this folder say nothing about real imagery. Get real data with:
  python -m bdcore download --aoi paris
"""


def _write_tiff(path: Path, arr: np.ndarray, transform: Affine, seed: int) -> None:
    profile = dict(driver="GTiff", dtype="uint16", count=3, width=TILE, height=TILE, crs="EPSG:4326",
                   transform=transform, interleave="pixel", tiled=False)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        dst.update_tags(AREA_OR_POINT="Area", SYNTHETIC="true", BDCORE_DEMO_VERSION=str(DEMO_VERSION),
                        BDCORE_DEMO_SEED=str(seed),
                        TIFFTAG_IMAGEDESCRIPTION="SYNTHETIC bdcore demo tile - not real satellite imagery")
        for b, name in enumerate(("red", "green", "blue"), start=1):
            dst.set_band_description(b, name)


def _generate(root: Path, n_tiles: int, seed: int) -> None:
    scene = make_scene(n_tiles, seed)
    frng = np.random.default_rng([seed, 99])
    W, H = scene.cols * TILE, scene.rows * TILE
    fields = (_Field(frng, W, H, 110.0), _Field(frng, W, H, 45.0))
    (root / "RGB-PanSharpen").mkdir(parents=True)
    (root / "geojson" / "buildings").mkdir(parents=True)
    (root / "summaryData").mkdir(parents=True)
    csv_rows: list[list] = []
    manifest_tiles = []
    for k in range(n_tiles):
        tid = tile_id(k)
        transform = tile_transform(k, scene.cols)
        _write_tiff(root / "RGB-PanSharpen" / f"RGB-PanSharpen_{AOI}_{tid}.tif", render_tile(scene, k, seed, fields),
                    transform, seed)
        labelled = tile_labels(scene, k)
        polys, partial = [p for p, _ in labelled], [f for _, f in labelled]
        r, c = divmod(k, scene.cols)
        geo = [_to_geo(p, transform) for p in polys]
        (root / "geojson" / "buildings" / f"buildings_{AOI}_{tid}.geojson").write_text(_geojson_text(geo, partial))
        image_id = f"{AOI}_{tid}"
        if not polys:
            csv_rows.append([image_id, -1, "POLYGON EMPTY", "POLYGON EMPTY"])
        for i, (p, g) in enumerate(zip(polys, geo), start=1):
            csv_rows.append([image_id, i, _wkt3(list(p.exterior.coords), 2), _wkt3(g, None)])
        manifest_tiles.append({"tile_id": tid, "image_id": image_id, "row": r, "col": c, "n_buildings": len(polys)})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"])
    w.writerows(csv_rows)
    (root / SOLUTIONS_CSV).write_text(buf.getvalue())
    (root / MANIFEST).write_text(json.dumps({
        "synthetic": True, "generator": "bdcore.data.demo", "version": DEMO_VERSION, "seed": seed, "n_tiles": n_tiles,
        "aoi": AOI, "grid": {"cols": scene.cols, "rows": scene.rows}, "pixel_deg": PIXEL_DEG,
        "origin": [ORIGIN_LON, ORIGIN_LAT], "empty_tiles": [tile_id(k) for k in sorted(scene.empty_tiles)],
        "tiles": manifest_tiles}, indent=2))
    (root / SYNTHETIC_README).write_text(README_TEXT.format(version=DEMO_VERSION, seed=seed, n=n_tiles, aoi=AOI))


def _check_args(n_tiles: int, seed: int) -> None:
    if not isinstance(n_tiles, (int, np.integer)) or not 1 <= n_tiles <= MAX_TILES:
        raise DemoError(f"demo: n_tiles must be an integer in 1..{MAX_TILES} (got {n_tiles!r}); pass --tiles N")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoError(f"demo: seed must be a non-negative integer (got {seed!r}); pass --seed S")


def write_demo_aoi(dest: str | os.PathLike, n_tiles: int = 24, seed: int = 0) -> Path:
    """Write the synthetic AOI into ``dest`` (must not exist, or be empty) and return ``dest``.

    Written into a hidden sibling temp folder and renamed into place, so nobody sees half a demo.
    """
    _check_args(n_tiles, seed)
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DemoError(f"{dest} already exists and is not an empty folder; pick another --dest or delete it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, int(n_tiles), int(seed))
        if dest.exists():
            dest.rmdir()  # empty (checked above); fails loudly if someone filled it meanwhile
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote synthetic demo AOI (%d tiles, seed %d) to %s", n_tiles, seed, dest)
    return dest


def default_demo_path(n_tiles: int = 24, seed: int = 0) -> Path:
    name = f"{AOI}_Train_synthetic_v{DEMO_VERSION}"
    if (n_tiles, seed) != (24, 0):
        name += f"_n{n_tiles}_seed{seed}"
    return cache_dir() / "demo" / name


def is_complete(root: Path) -> bool:
    return (root / SYNTHETIC_README).is_file() and (root / MANIFEST).is_file()


def demo_root(n_tiles: int = 24, seed: int = 0) -> Path:
    """The default demo AOI under ``cache_dir()/demo``, written on first use.

    Safe with concurrent callers (two app sessions, a training run): each writes its own temp folder and the
    first rename wins; the loser discards its copy.
    """
    _check_args(n_tiles, seed)
    root = default_demo_path(n_tiles, seed)
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():  # not written by us (renames are atomic): move it aside rather than delete someone's files
        aside = root.with_name(f"{root.name}.broken-{uuid.uuid4().hex[:8]}")
        log.warning("demo folder %s is incomplete; moved to %s and rewriting", root, aside)
        try:
            os.rename(root, aside)
        except FileNotFoundError:
            pass
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, n_tiles, seed)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


# ----------------------------------------------------------------------------------------------- CLI


def _cli(args) -> int:
    if args.dest:
        path = write_demo_aoi(args.dest, n_tiles=args.tiles, seed=args.seed)
    else:
        path = demo_root(n_tiles=args.tiles, seed=args.seed)
    print(path)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="write the synthetic demo AOI (SpaceNet 2 layout, Paris coordinates)")
    p.add_argument("--dest", default=None, help="new folder to write (default: the cached demo under the cache dir)")
    p.add_argument("--tiles", type=int, default=24, help="number of 650x650 tiles (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same files)")
    p.set_defaults(func=_cli)
