"""The demo AOI on disk: georeferencing, the SpaceNet 2 file formats (GeoTIFF, GeoJSON labels, solutions CSV), and
writing the folder atomically (``write_demo_aoi``) or once per cache (``demo_root``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import Polygon

from bdcore.data.demo.render import noise_fields, render_tile
from bdcore.data.demo.scene import TILE, make_scene, tile_labels
from bdcore.paths import cache_dir
from bdcore.progress import Progress

log = logging.getLogger(__name__)

DEMO_VERSION = 1
AOI = "AOI_3_Paris"
# Pixel size of a real SpaceNet 2 PS-RGB tile (RGB-PanSharpen_AOI_2_Vegas_img1265.tif): 2.7e-6 degrees (~0.3 m).
PIXEL_DEG = 2.7000000000043656e-06
# Top-left corner of real Paris training tile img1621 (AOI_3_Paris_Train_Tindex.geojson); the demo grid is aligned
# with the real Paris tile grid (step 650 px = 0.001755 degrees) and extends east and south from there.
ORIGIN_LON = 2.2864464
ORIGIN_LAT = 49.0406859
MAX_TILES = 256
SYNTHETIC_README = "SYNTHETIC_README.txt"
MANIFEST = "synthetic_demo.json"
SOLUTIONS_CSV = f"summaryData/{AOI}_Train_Building_Solutions.csv"

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


class DemoError(ValueError):
    """The demo cannot be written where asked (names the folder and the fix)."""


def tile_id(k: int) -> str:
    return f"img{k + 1}"


def tile_transform(k: int, cols: int) -> Affine:
    r, c = divmod(k, cols)
    return Affine(PIXEL_DEG, 0.0, ORIGIN_LON + c * TILE * PIXEL_DEG, 0.0, -PIXEL_DEG, ORIGIN_LAT - r * TILE * PIXEL_DEG)


# ----------------------------------------------------------------------------------------------- file formats


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


def _write_labels(path: Path, k: int, polys: list[Polygon], partial: list[float], transform: Affine) -> list[list]:
    """Write tile ``k``'s GeoJSON and return its rows of the solutions CSV."""
    geo = [_to_geo(p, transform) for p in polys]
    path.write_text(_geojson_text(geo, partial))
    image_id = f"{AOI}_{tile_id(k)}"
    if not polys:
        return [[image_id, -1, "POLYGON EMPTY", "POLYGON EMPTY"]]
    return [[image_id, i, _wkt3(list(p.exterior.coords), 2), _wkt3(g, None)]
            for i, (p, g) in enumerate(zip(polys, geo), start=1)]


def _write_csv(path: Path, rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"])
    w.writerows(rows)
    path.write_text(buf.getvalue())


def _generate(root: Path, n_tiles: int, seed: int, progress: Progress | None = None) -> None:
    """Write the AOI into ``root``; ``progress(done, n_tiles + 1)`` after the scene and after each tile."""
    scene = make_scene(n_tiles, seed)
    if progress:
        progress(1, n_tiles + 1)
    fields = noise_fields(seed, scene)
    for folder in ("RGB-PanSharpen", "geojson/buildings", "summaryData"):
        (root / folder).mkdir(parents=True)
    csv_rows: list[list] = []
    manifest_tiles = []
    for k in range(n_tiles):
        tid, transform = tile_id(k), tile_transform(k, scene.cols)
        _write_tiff(root / "RGB-PanSharpen" / f"RGB-PanSharpen_{AOI}_{tid}.tif", render_tile(scene, k, seed, fields),
                    transform, seed)
        labelled = tile_labels(scene, k)
        polys, partial = [p for p, _ in labelled], [f for _, f in labelled]
        csv_rows += _write_labels(root / "geojson" / "buildings" / f"buildings_{AOI}_{tid}.geojson", k, polys, partial,
                                  transform)
        r, c = divmod(k, scene.cols)
        manifest_tiles.append({"tile_id": tid, "image_id": f"{AOI}_{tid}", "row": r, "col": c,
                               "n_buildings": len(polys)})
        if progress:
            progress(k + 2, n_tiles + 1)
    _write_csv(root / SOLUTIONS_CSV, csv_rows)
    (root / MANIFEST).write_text(json.dumps({
        "synthetic": True, "generator": "bdcore.data.demo", "version": DEMO_VERSION, "seed": seed, "n_tiles": n_tiles,
        "aoi": AOI, "grid": {"cols": scene.cols, "rows": scene.rows}, "pixel_deg": PIXEL_DEG,
        "origin": [ORIGIN_LON, ORIGIN_LAT], "empty_tiles": [tile_id(k) for k in sorted(scene.empty_tiles)],
        "tiles": manifest_tiles}, indent=2))
    (root / SYNTHETIC_README).write_text(README_TEXT.format(version=DEMO_VERSION, seed=seed, n=n_tiles, aoi=AOI))


# ----------------------------------------------------------------------------------------------- folders


def _check_args(n_tiles: int, seed: int) -> None:
    if not isinstance(n_tiles, (int, np.integer)) or not 1 <= n_tiles <= MAX_TILES:
        raise DemoError(f"demo: n_tiles must be an integer in 1..{MAX_TILES} (got {n_tiles!r}); pass --tiles N")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoError(f"demo: seed must be a non-negative integer (got {seed!r}); pass --seed S")


def _temp_sibling(path: Path) -> Path:
    """A hidden temp folder name beside ``path``, unique per process and call."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_demo_aoi(dest: str | os.PathLike, n_tiles: int = 24, seed: int = 0,
                   progress: Progress | None = None) -> Path:
    """Write the synthetic AOI into ``dest`` (must not exist, or be empty) and return ``dest``.

    Written into a hidden sibling temp folder and renamed into place, so nobody sees half a demo.
    """
    _check_args(n_tiles, seed)
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DemoError(f"{dest} already exists and is not an empty folder; pick another --dest or delete it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dest)
    try:
        _generate(tmp, int(n_tiles), int(seed), progress)
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


def demo_root(n_tiles: int = 24, seed: int = 0, progress: Progress | None = None) -> Path:
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
    tmp = _temp_sibling(root)
    try:
        _generate(tmp, n_tiles, seed, progress)
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
