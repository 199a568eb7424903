"""Synthetic SpaceNet-format fixtures, made in code by tests (no data files in the repo).

Main entry points:

- ``write_geotiff(path, array, bounds=None, crs="EPSG:4326", transform=None, nodata=None)``
- ``write_geojson(path, geoms, crs="EPSG:4326", z=False, crs_member=True)``
- ``make_aoi(root, layout="original"|"bucket", n_tiles=4, bands=3, ...) -> SynthAOI``: a tiny AOI in either
  published SpaceNet 2 layout, with axis-aligned rectangular buildings whose corners sit on pixel edges, so the
  expected footprint mask is known exactly (``SynthTile.expected_mask()``).
- ``write_truncated_tif``, ``write_png_as_tif``, ``write_garbage`` for failure-mode tests.

Tiles are laid out edge to edge in a grid (row-major, ``grid_cols`` wide) near Paris, pixel size 2.7e-6 degrees
(~0.3 m, as in SpaceNet 2), so neighbouring tiles share edges (useful for "blocked" split tests).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

PIXEL_DEG = 2.7e-6
PARIS_ORIGIN = (2.3500, 48.8600)  # (lon, lat) of the top-left corner of tile 0

# Folder / file-name templates per layout and product. ``{aoi}`` e.g. "AOI_3_Paris", ``{n}`` the tile number.
LAYOUTS: dict[str, dict[str, str]] = {
    "original": {
        "PS-RGB": "RGB-PanSharpen/RGB-PanSharpen_{aoi}_img{n}.tif",
        "PS-MS": "MUL-PanSharpen/MUL-PanSharpen_{aoi}_img{n}.tif",
        "MS": "MUL/MUL_{aoi}_img{n}.tif",
        "PAN": "PAN/PAN_{aoi}_img{n}.tif",
        "labels": "geojson/buildings/buildings_{aoi}_img{n}.geojson",
    },
    # The Vegas sample in shared/data: original file names inside the bucket folder names.
    "vegas_sample": {
        "PS-RGB": "PS-RGB/RGB-PanSharpen_{aoi}_img{n}.tif",
        "PS-MS": "PS-MS/MUL-PanSharpen_{aoi}_img{n}.tif",
        "MS": "MS/MUL_{aoi}_img{n}.tif",
        "PAN": "PAN/PAN_{aoi}_img{n}.tif",
        "labels": "geojson_buildings/buildings_{aoi}_img{n}.geojson",
    },
    "bucket": {
        "PS-RGB": "PS-RGB/SN2_buildings_train_{aoi}_PS-RGB_img{n}.tif",
        "PS-MS": "PS-MS/SN2_buildings_train_{aoi}_PS-MS_img{n}.tif",
        "MS": "MS/SN2_buildings_train_{aoi}_MS_img{n}.tif",
        "PAN": "PAN/SN2_buildings_train_{aoi}_PAN_img{n}.tif",
        "labels": "geojson_buildings/SN2_buildings_train_{aoi}_geojson_buildings_img{n}.geojson",
    },
}

DEFAULT_BANDS = {"PS-RGB": 3, "PS-MS": 8, "MS": 8, "PAN": 1}


def _as_chw(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected (H,W) or (C,H,W) array, got shape {array.shape}")
    return array


def write_geotiff(
    path: str | os.PathLike,
    array: np.ndarray,
    bounds: tuple[float, float, float, float] | None = None,
    crs: str | None = "EPSG:4326",
    transform: Affine | None = None,
    nodata: float | None = None,
) -> Path:
    """Write a (C,H,W) or (H,W) array as a GeoTIFF. ``bounds`` = (left, bottom, right, top) in ``crs``.

    Without ``bounds``/``transform`` the image is placed at the Paris origin with 2.7e-6 degree pixels
    (only meaningful for EPSG:4326)."""
    array = _as_chw(array)
    c, h, w = array.shape
    if transform is None:
        if bounds is None:
            left, top = PARIS_ORIGIN
            bounds = (left, top - h * PIXEL_DEG, left + w * PIXEL_DEG, top)
        left, bottom, right, top = bounds
        transform = Affine((right - left) / w, 0.0, left, 0.0, -(top - bottom) / h, top)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype=array.dtype.name, transform=transform)
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def _add_z(coords):
    """Recursively turn (x, y) tuples into (x, y, 0.0), as SpaceNet labels are 3-D."""
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [float(coords[0]), float(coords[1]), 0.0]
    return [_add_z(c) for c in coords]


def write_geojson(
    path: str | os.PathLike,
    geoms: Iterable[BaseGeometry],
    crs: str | None = "EPSG:4326",
    z: bool = False,
    crs_member: bool = True,
    properties: Sequence[dict] | None = None,
) -> Path:
    """Write shapely geometries (already in ``crs`` coordinates) as a GeoJSON FeatureCollection.

    ``z=True`` writes 3-D coordinates (SpaceNet style). ``crs_member=False`` omits the (legacy) ``crs`` member,
    as some SpaceNet empty label files do; readers must then assume EPSG:4326. EPSG:4326 is written as
    ``urn:ogc:def:crs:OGC:1.3:CRS84`` like the real files; other CRSs as ``urn:ogc:def:crs:EPSG::<code>``."""
    geoms = list(geoms)
    features = []
    for i, g in enumerate(geoms):
        gj = mapping(g)
        gj = {"type": gj["type"], "coordinates": _add_z(gj["coordinates"]) if z else json.loads(json.dumps(gj["coordinates"]))}
        props = dict(properties[i]) if properties is not None else {"building_id": i}
        features.append({"type": "Feature", "properties": props, "geometry": gj})
    fc: dict = {"type": "FeatureCollection"}
    if crs_member and crs is not None:
        code = str(crs).upper()
        name = "urn:ogc:def:crs:OGC:1.3:CRS84" if code in ("EPSG:4326", "OGC:CRS84") else f"urn:ogc:def:crs:EPSG::{code.split(':')[-1]}"
        fc["crs"] = {"type": "name", "properties": {"name": name}}
    fc["features"] = features
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fc))
    return path


def write_empty_geojson(path: str | os.PathLike, crs_member: bool = True) -> Path:
    """An empty FeatureCollection, with or without a ``crs`` member (both occur in SpaceNet)."""
    return write_geojson(path, [], crs="EPSG:4326", crs_member=crs_member)


def add_point_feature(labels: str | os.PathLike, index: int = 1) -> Path:
    """Insert a Point feature (no building footprint: a labels file training cannot use) at ``index``."""
    path = Path(labels)
    fc = json.loads(path.read_text())
    fc["features"].insert(index, {"type": "Feature", "properties": {},
                                  "geometry": {"type": "Point", "coordinates": list(PARIS_ORIGIN)}})
    path.write_text(json.dumps(fc))
    return path


def write_truncated_tif(path: str | os.PathLike, keep_fraction: float = 0.3, size: int = 64, bands: int = 3) -> Path:
    """A valid GeoTIFF cut short: the header parses but strip data is missing."""
    path = Path(path)
    write_geotiff(path, np.full((bands, size, size), 1000, np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep_fraction))])
    return path


def write_png_as_tif(path: str | os.PathLike, size: int = 8) -> Path:
    """A real (grey, 8-bit) PNG file saved under a .tif name."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([(x * 30) % 256 for x in range(size)]) for _ in range(size))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def write_garbage(path: str | os.PathLike, text: str = "this is not what the extension says\n") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class SynthTile:
    tile_id: str  # "img3"
    image_id: str  # "AOI_3_Paris_img3"
    number: int
    transform: Affine
    shape: tuple[int, int]  # (H, W)
    images: dict[str, Path]  # product -> path
    labels: Path | None
    boxes_px: list[tuple[int, int, int, int]]  # (col0, row0, col1, row1), pixel-edge aligned, exclusive end
    polygons: list[BaseGeometry]  # the same buildings in EPSG:4326

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        h, w = self.shape
        left, top = self.transform.c, self.transform.f
        return (left, top + h * self.transform.e, left + w * self.transform.a, top)

    def expected_mask(self) -> np.ndarray:
        """Exact (H,W) uint8 footprint mask: 1 inside every building box."""
        m = np.zeros(self.shape, np.uint8)
        for c0, r0, c1, r1 in self.boxes_px:
            m[r0:r1, c0:c1] = 1
        return m


@dataclass
class SynthAOI:
    root: Path
    aoi: str
    layout: str
    tiles: list[SynthTile] = field(default_factory=list)

    @property
    def tile_ids(self) -> list[str]:
        return [t.tile_id for t in self.tiles]

    @property
    def n_buildings(self) -> int:
        return sum(len(t.boxes_px) for t in self.tiles)

    def tile(self, tile_id: str) -> SynthTile:
        return next(t for t in self.tiles if t.tile_id == tile_id)


def _place_boxes(rng: np.random.Generator, size: int, n: int, touching_pair: bool) -> list[tuple[int, int, int, int]]:
    """Non-overlapping rectangles (min 4 px apart) inside the tile; optionally two that share an edge."""
    boxes: list[tuple[int, int, int, int]] = []
    occupied = np.zeros((size, size), bool)
    if touching_pair and size >= 24:
        a = (2, 2, 2 + size // 4, 2 + size // 4)
        b = (a[2], 2, a[2] + size // 5, 2 + size // 4)  # shares a's right edge
        for c0, r0, c1, r1 in (a, b):
            boxes.append((c0, r0, c1, r1))
            occupied[max(0, r0 - 4) : r1 + 4, max(0, c0 - 4) : c1 + 4] = True
    lo, hi = max(3, size // 12), max(4, size // 4)
    tries = 0
    while len(boxes) < n + (2 if touching_pair and size >= 24 else 0) and tries < 500:
        tries += 1
        w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        c0, r0 = int(rng.integers(1, max(2, size - w - 1))), int(rng.integers(1, max(2, size - h - 1)))
        c1, r1 = c0 + w, r0 + h
        if c1 > size - 1 or r1 > size - 1 or occupied[r0:r1, c0:c1].any():
            continue
        boxes.append((c0, r0, c1, r1))
        occupied[max(0, r0 - 4) : r1 + 4, max(0, c0 - 4) : c1 + 4] = True
    return boxes


def _render(rng: np.random.Generator, shape: tuple[int, int], bands: int, boxes, dtype=np.uint16) -> np.ndarray:
    """Dark noisy ground, bright roofs (band-dependent), as uint16 like SpaceNet 11-bit data."""
    h, w = shape
    img = rng.normal(300, 40, size=(bands, h, w))
    for c0, r0, c1, r1 in boxes:
        for b in range(bands):
            img[b, r0:r1, c0:c1] = rng.normal(1400 + 60 * b, 50, size=(r1 - r0, c1 - c0))
    return np.clip(img, 1, 2047).astype(dtype)


def make_aoi(
    root: str | os.PathLike,
    layout: str = "original",
    n_tiles: int = 4,
    bands: int = 3,
    size: int = 64,
    aoi: str = "AOI_3_Paris",
    products: Sequence[str] | None = None,
    buildings_per_tile: int = 3,
    seed: int = 0,
    grid_cols: int | None = None,
    first_number: int = 1,
    empty_tiles: Iterable[int] = (),
    empty_without_crs: bool = False,
    missing_labels: Iterable[int] = (),
    labels_crs: str = "EPSG:4326",
    z: bool = True,
    touching_pair: bool = False,
    summary_csv: bool = True,
) -> SynthAOI:
    """Write a tiny SpaceNet 2 AOI under ``root`` and return what is in it.

    ``layout``: "original" (RGB-PanSharpen/, geojson/buildings/), "bucket" (PS-RGB/, SN2_buildings_train_* names) or
    "vegas_sample" (bucket folder names, original file names). ``products`` defaults to ("PS-RGB",) when
    ``bands == 3``, else ("PS-RGB", "PS-MS") with PS-MS having ``bands`` bands. Tile ``i`` (0-based) gets number
    ``first_number + i`` (tile id ``img<number>``). Tiles in ``empty_tiles`` get an empty FeatureCollection (no ``crs``
    member if ``empty_without_crs``); tiles in ``missing_labels`` get no labels file. ``labels_crs="EPSG:3857"``
    writes the labels reprojected to web mercator. ``touching_pair`` adds two buildings sharing an edge per tile.
    """
    from pyproj import Transformer
    import shapely

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    root = Path(root)
    templates = LAYOUTS[layout]
    if products is None:
        products = ("PS-RGB",) if bands == 3 else ("PS-RGB", "PS-MS")
    band_counts = dict(DEFAULT_BANDS)
    if bands != 3:
        band_counts["PS-MS"] = bands
        band_counts["MS"] = bands
    empty_tiles, missing_labels = set(empty_tiles), set(missing_labels)
    grid_cols = grid_cols or max(1, int(np.ceil(np.sqrt(n_tiles))))
    rng = np.random.default_rng(seed)
    to_labels = None if labels_crs.upper() == "EPSG:4326" else Transformer.from_crs("EPSG:4326", labels_crs, always_xy=True)

    out = SynthAOI(root=root, aoi=aoi, layout=layout)
    for i in range(n_tiles):
        n = first_number + i
        gy, gx = divmod(i, grid_cols)
        left = PARIS_ORIGIN[0] + gx * size * PIXEL_DEG
        top = PARIS_ORIGIN[1] - gy * size * PIXEL_DEG
        transform = Affine(PIXEL_DEG, 0.0, left, 0.0, -PIXEL_DEG, top)
        boxes = [] if (i in empty_tiles or i in missing_labels) else _place_boxes(rng, size, buildings_per_tile, touching_pair)
        polys = []
        for c0, r0, c1, r1 in boxes:
            x0, y0 = transform @ (c0, r1)
            x1, y1 = transform @ (c1, r0)
            polys.append(box(x0, y0, x1, y1))
        images = {}
        for product in products:
            p = root / templates[product].format(aoi=aoi, n=n)
            nb = band_counts[product]
            if product == "MS":  # low-res multispectral: quarter resolution, same footprint
                s = max(1, size // 4)
                arr = _render(rng, (s, s), nb, [])
                t = Affine(PIXEL_DEG * size / s, 0.0, left, 0.0, -PIXEL_DEG * size / s, top)
                write_geotiff(p, arr, transform=t)
            else:
                write_geotiff(p, _render(rng, (size, size), nb, boxes), transform=transform)
            images[product] = p
        labels_path: Path | None = root / templates["labels"].format(aoi=aoi, n=n)
        if i in missing_labels:
            labels_path = None
        elif i in empty_tiles:
            write_empty_geojson(labels_path, crs_member=not empty_without_crs)
        else:
            geoms = polys if to_labels is None else [shapely.transform(g, to_labels.transform, interleaved=False) for g in polys]
            write_geojson(labels_path, geoms, crs=labels_crs, z=z)
        image_id = f"{aoi}_img{n}"
        out.tiles.append(
            SynthTile(
                tile_id=f"img{n}", image_id=image_id, number=n, transform=transform, shape=(size, size),
                images=images, labels=labels_path, boxes_px=boxes, polygons=polys,
            )
        )
    if summary_csv:
        sd = root / "summaryData" / f"{aoi}_Train_Building_Solutions.csv"
        sd.parent.mkdir(parents=True, exist_ok=True)
        lines = ["ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo"]
        for t in out.tiles:
            for k, (c0, r0, c1, r1) in enumerate(t.boxes_px):
                pix = f"POLYGON (({c0} {r0} 0,{c1} {r0} 0,{c1} {r1} 0,{c0} {r1} 0,{c0} {r0} 0))"
                lines.append(f'{t.image_id},{k + 1},"{pix}","{t.polygons[k].wkt}"')
            if not t.boxes_px:
                lines.append(f"{t.image_id},-1,POLYGON EMPTY,POLYGON EMPTY")
        sd.write_text("\n".join(lines) + "\n")
    return out


def write_tiny_checkpoint(
    path: str | os.PathLike,
    lo: Sequence[float] | None = (133.0, 283.0, 251.0),
    hi: Sequence[float] | None = (938.0, 1118.0, 741.0),
    seed: int = 0,
    in_channels: int = 3,
) -> Path:
    """A loadable random-init smp U-Net (resnet18, no pretrained weights) checkpoint, as ``models.load_model`` and
    ``predict.Predictor.from_checkpoint`` read it. ``lo``/``hi``: the training band statistics it carries (default:
    those of the real Vegas sample, uint16 ~130-1,100); None: none (per-image stretch)."""
    import torch

    from bdcore.engine import models
    from bdcore.engine.config import RunConfig

    torch.manual_seed(seed)
    cfg = RunConfig(arch="Unet", encoder="resnet18", encoder_weights=None, data_root="/nonexistent")
    model = models.build_model("Unet", "resnet18", in_channels, 1, encoder_weights=None)
    payload = {"config": cfg.model_dump(mode="json"), "arch": "Unet", "encoder": "resnet18",
               "in_channels": in_channels, "classes": 1, "model": model.state_dict()}
    if lo is not None and hi is not None:
        payload["band_stats"] = {"product": "PS-RGB", "lo": list(map(float, lo)), "hi": list(map(float, hi))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save_checkpoint(path, payload)
    return path
