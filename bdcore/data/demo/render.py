"""Pixels of a demo tile: its window of the scene painted ground first, then streets, lots, cars, trees, shadows and
roofs, then a sensor model (blur, gain, read noise).

Roofs are drawn with the same rasterizer (pixel-centre rule) that turns labels into masks, so the two agree pixel
for pixel. Roof colours overlap road/ground colours in every band: a model has to use shape, edges and shadows.
"""

from __future__ import annotations

import cv2
import numpy as np
from affine import Affine
from rasterio.features import rasterize
from scipy.ndimage import map_coordinates
from shapely import affinity
from shapely.geometry import Polygon, box

from bdcore.data.demo.scene import SHADOW_DIR, TILE, Building, Scene

MARGIN = 10  # render margin around each tile (blur and noise see no tile edge)

# Colours in PS-RGB-like digital numbers (real tiles: band means ~400-600, max ~1800-2000).
GRASS = np.array([330.0, 470.0, 330.0])
SOIL = np.array([560.0, 590.0, 470.0])
ASPHALT = np.array([430.0, 455.0, 480.0])
SIDEWALK = np.array([640.0, 650.0, 640.0])
PARKING = np.array([500.0, 510.0, 520.0])
MARKING = np.array([1150.0, 1150.0, 1120.0])
TREE = np.array([210.0, 320.0, 220.0])
SHADOW = np.array([0.36, 0.40, 0.52])


def _burn(geoms, shape, ox: float, oy: float, values=None, dtype="uint8") -> np.ndarray:
    """Rasterize global-pixel geometries into a window whose top-left is (ox, oy); pixel-centre rule."""
    pairs = [(g, 1 if values is None else values[i]) for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    if not pairs:
        return np.zeros(shape, dtype=dtype)
    return rasterize(pairs, out_shape=shape, transform=Affine.translation(ox, oy), fill=0, dtype=dtype)


class NoiseField:
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
        i0, j0, n = (oy + MARGIN) // self.STEP, (ox + MARGIN) // self.STEP, size // self.STEP
        crop = self.low[i0:i0 + n + 1, j0:j0 + n + 1]
        big = cv2.resize(crop, ((n + 1) * self.STEP, (n + 1) * self.STEP), interpolation=cv2.INTER_LINEAR)
        return big[:size, :size]


def noise_fields(seed: int, scene: Scene) -> tuple[NoiseField, NoiseField]:
    """(vegetation, brightness) fields of the whole AOI."""
    rng = np.random.default_rng([seed, 99])
    W, H = scene.cols * TILE, scene.rows * TILE
    return NoiseField(rng, W, H, 110.0), NoiseField(rng, W, H, 45.0)


class _Canvas:
    """A tile's float32 (3, S, S) image (S = tile + margins) being painted, with its window in global pixels."""

    def __init__(self, scene: Scene, k: int, seed: int, fields: tuple[NoiseField, NoiseField]):
        self.rng = np.random.default_rng([seed, k, 7])
        r, c = divmod(k, scene.cols)
        S = TILE + 2 * MARGIN
        self.ox, self.oy = c * TILE - MARGIN, r * TILE - MARGIN
        self.window = box(self.ox - 40, self.oy - 40, self.ox + S + 40, self.oy + S + 40)
        self.shape = (S, S)
        veg = 1 / (1 + np.exp(-1.6 * fields[0].sample(self.ox, self.oy, S)))
        self.bright = 1 + 0.07 * fields[1].sample(self.ox, self.oy, S)
        soil, grass = SOIL.astype(np.float32)[:, None, None], GRASS.astype(np.float32)[:, None, None]
        self.img = (soil + (grass - soil) * veg) * self.bright
        self.img *= 1 + 0.06 * self.rng.standard_normal((1, S, S), dtype=np.float32)

    def burn(self, geoms, values=None, dtype="uint8") -> np.ndarray:
        return _burn(geoms, self.shape, self.ox, self.oy, values=values, dtype=dtype)

    def near(self, geoms) -> list:
        return [g for g in geoms if g.intersects(self.window)]

    def paint(self, mask: np.ndarray, colour, texture: float = 0.03) -> None:
        m = mask.astype(bool)
        if m.any():
            shade = (1 + texture * self.rng.standard_normal(int(m.sum()), dtype=np.float32)) * self.bright[m]
            for b in range(3):
                self.img[b][m] = np.float32(colour[b]) * shade

    def shade(self, mask: np.ndarray) -> None:
        self.img[:, mask.astype(bool)] *= SHADOW.astype(np.float32)[:, None]


def _paint_ground(cv: _Canvas, scene: Scene) -> None:
    """Sidewalks, roads, road markings, parking lots and cars."""
    cv.paint(cv.burn(cv.near(scene.sidewalks)), SIDEWALK)
    cv.paint(cv.burn(cv.near(scene.roads)), ASPHALT, 0.05)
    cv.paint(cv.burn(cv.near(scene.markings)), MARKING)
    cv.paint(cv.burn(cv.near(scene.parking)), PARKING, 0.04)
    cars = [(g, col) for g, col in scene.cars if g.intersects(cv.window)]
    if cars:
        ids = cv.burn([g for g, _ in cars], values=list(range(1, len(cars) + 1)), dtype="int32")
        for i, (_, col) in enumerate(cars, start=1):
            cv.paint(ids == i, col, 0.02)


def _paint_trees(cv: _Canvas, scene: Scene) -> None:
    """Tree shadows, then canopies with a leafy texture."""
    trees = [(p, rad) for p, rad in scene.trees if cv.window.intersects(p)]
    if not trees:
        return
    cv.shade(cv.burn([affinity.translate(p.buffer(rad), *(SHADOW_DIR * rad * 1.2)) for p, rad in trees]))
    canopy = cv.burn([p.buffer(rad) for p, rad in trees]).astype(bool)
    blob = 1 + 0.6 * cv2.GaussianBlur(cv.rng.standard_normal(cv.shape).astype(np.float32), (0, 0), 1.5)  # leaves
    for b in range(3):
        cv.img[b][canopy] = np.float32(TREE[b]) * blob[canopy]


def _paint_buildings(cv: _Canvas, blds: list[Building]) -> None:
    """Building shadows, then roof facets and details, then a darker outline where a building meets anything else
    (ground or a neighbour sharing a wall)."""
    cv.shade(cv.burn([b.shadow for b in blds]))
    segs: list[Polygon] = []
    values: list[int] = []
    colours = [np.zeros(3)]
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
    ids = cv.burn(segs, values=values, dtype="int32")
    roof = ids > 0
    lut = np.stack(colours).astype(np.float32)
    tex = 1 + 0.025 * cv.rng.standard_normal(int(roof.sum()), dtype=np.float32)
    for b in range(3):
        cv.img[b][roof] = lut[ids[roof], b] * tex
    bid = owner[ids]
    edge = np.zeros(cv.shape, bool)
    edge[1:, :] |= bid[1:, :] != bid[:-1, :]
    edge[:-1, :] |= bid[:-1, :] != bid[1:, :]
    edge[:, 1:] |= bid[:, 1:] != bid[:, :-1]
    edge[:, :-1] |= bid[:, :-1] != bid[:, 1:]
    cv.img[:, edge & roof] *= np.float32(0.78)


def render_tile(scene: Scene, k: int, seed: int, fields: tuple[NoiseField, NoiseField]) -> np.ndarray:
    """uint16 (3, 650, 650) image of tile ``k``."""
    cv = _Canvas(scene, k, seed, fields)
    _paint_ground(cv, scene)
    _paint_trees(cv, scene)
    blds = [scene.buildings[i] for i in sorted(scene.shadow_tree().query(cv.window, predicate="intersects"))]
    if blds:
        _paint_buildings(cv, blds)
    # Sensor: slight blur (PSF), per-tile gain, read noise.
    img = cv.img
    for b in range(3):
        img[b] = cv2.GaussianBlur(img[b], (0, 0), 0.7)
    img *= np.float32(cv.rng.uniform(0.96, 1.04))
    img += np.float32(9.0) * cv.rng.standard_normal(img.shape, dtype=np.float32)
    img = img[:, MARGIN:MARGIN + TILE, MARGIN:MARGIN + TILE]
    return np.clip(np.rint(img), 1, 2047).astype(np.uint16)
