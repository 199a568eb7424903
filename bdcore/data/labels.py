"""Building polygons and the masks made from them, on a tile's exact pixel grid.

SpaceNet label quirks handled here: empty tiles (an empty FeatureCollection, sometimes with no ``crs`` member),
3-D (Z) coordinates, legacy ``crs`` members (``urn:ogc:def:crs:OGC:1.3:CRS84``), labels in another CRS than the image
(reprojected), and the odd invalid (self-intersecting) polygon.

Mask channels from ``tile_mask``: 0 = footprint (1 inside a building), and with ``boundary=True``
1 = boundary/contact band (see ``boundary_band``): the inner edge of every building plus the background gap between
buildings that (nearly) touch. A later step can subtract it from the footprint to split adjacent buildings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio import features
from scipy import ndimage
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from bdcore.atomic import StagedFiles
from bdcore.data.imagery import read_profile
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)


class LabelError(ValueError):
    """A labels file that cannot be used (unreadable, wrong structure, unrepairable geometry)."""


def _file_crs(fc: dict, path: Path) -> CRS:
    """The legacy GeoJSON ``crs`` member, or EPSG:4326 when absent (RFC 7946)."""
    member = fc.get("crs")
    if not member:
        return WGS84
    try:
        props = member.get("properties", {}) if isinstance(member, dict) else {}
        name = props.get("name") or props.get("href")
        if not name:
            raise LabelError(f"{path}: 'crs' member has no name: {member!r}")
        crs = CRS.from_user_input(name)
    except (CRSError, AttributeError, TypeError) as exc:
        raise LabelError(f"{path}: unknown CRS in the 'crs' member ({member!r}); fix or remove it") from exc
    # GeoJSON coordinates are lon/lat whatever the EPSG:4326 axis order says.
    return WGS84 if crs.equals(WGS84, ignore_axis_order=True) else crs


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid may return a GeometryCollection with lines/points)."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    polys: list[Polygon] = []
    for g in parts:
        polys.extend(g.geoms if isinstance(g, MultiPolygon) else [g])
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def feature_list(fc: Any) -> list:
    """The ``features`` of a parsed GeoJSON FeatureCollection (a missing member = no features); ValueError saying
    what is wrong otherwise (the caller adds the file name and the fix)."""
    if not isinstance(fc, dict):
        return _not_a_collection(f"a JSON {type(fc).__name__}")
    if fc.get("type") != "FeatureCollection":
        return _not_a_collection(f"an object of type {fc.get('type')!r}")
    feats = fc.get("features", [])
    if not isinstance(feats, list):
        what = "null" if feats is None else f"a JSON {type(feats).__name__}"
        raise ValueError(f'"features" is {what}, expected a list of Feature objects ([] for a tile without buildings)')
    return feats


def _not_a_collection(got: str) -> list:
    raise ValueError(f"expected a GeoJSON FeatureCollection, got {got}")


POLYGONAL = ("Polygon", "MultiPolygon")


def geometry_problem(feat: Any) -> str | None:
    """Why one GeoJSON feature cannot be a building footprint (not a Feature object, a Point/LineString/…, no
    coordinates), or None: the cheap structural check the catalog runs on every feature (no geometry is built;
    ``read_buildings`` does the full check). A feature with a null geometry is fine (it is skipped)."""
    if not isinstance(feat, dict):
        return "is not a GeoJSON Feature object"
    gj = feat.get("geometry")
    if gj is None:
        return None
    if not isinstance(gj, dict):
        return f"has a geometry that is a JSON {type(gj).__name__}, not a GeoJSON geometry object"
    kind = gj.get("type")
    if kind not in POLYGONAL:
        return f"is a {kind}, expected a (Multi)Polygon building footprint"
    if not isinstance(gj.get("coordinates"), list):
        return "has no coordinate list"
    return None


def read_buildings(path: str | os.PathLike, crs: str | CRS | None = "EPSG:4326", on_invalid: str = "repair",
                   bad_features: str = "raise") -> gpd.GeoDataFrame:
    """Read a SpaceNet buildings GeoJSON as 2-D (Multi)Polygons in ``crs`` (None = keep the file's CRS).

    Columns: the feature properties, ``feature_index`` (position in the file) and ``geometry``. Features with a null
    or empty geometry are dropped. Invalid polygons: ``on_invalid="repair"`` applies ``make_valid`` and keeps the
    polygonal part (a feature with no area left is dropped with a warning); ``on_invalid="raise"`` raises LabelError
    naming the file and the feature index. Non-polygon geometries and unreadable files raise LabelError; with
    ``bad_features="skip"`` the features :func:`geometry_problem` rejects are left out instead (the buildings the
    catalog counts: what a map of every building draws)."""
    path = Path(path)
    if on_invalid not in ("repair", "raise"):
        raise ValueError(f"on_invalid must be 'repair' or 'raise', got {on_invalid!r}")
    if bad_features not in ("raise", "skip"):
        raise ValueError(f"bad_features must be 'raise' or 'skip', got {bad_features!r}")
    try:
        fc = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise LabelError(f"{path}: labels file not found (rebuild the catalog if files moved)") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LabelError(f"{path}: not readable GeoJSON ({exc}); re-download the labels file") from exc
    if isinstance(fc, dict) and fc.get("type") == "Feature":
        fc = {"type": "FeatureCollection", "features": [fc]}
    try:
        feats = feature_list(fc)
    except ValueError as exc:
        raise LabelError(f"{path}: {exc}; re-download the labels file") from None
    src_crs = _file_crs(fc, path)

    geoms: list[BaseGeometry] = []
    rows: list[dict] = []
    for i, feat in enumerate(feats):
        if bad_features == "skip" and geometry_problem(feat):
            continue
        if not isinstance(feat, dict):
            raise LabelError(f"{path}: feature {i} is not a GeoJSON Feature object")
        gj = feat.get("geometry")
        if gj is None:
            continue
        try:
            geom = shape(gj)
        except Exception as exc:  # shapely raises assorted errors on malformed coordinates
            raise LabelError(f"{path}: feature {i} has malformed geometry ({exc})") from exc
        if geom.is_empty:
            continue
        if not isinstance(geom, (Polygon, MultiPolygon)):
            raise LabelError(f"{path}: feature {i} is a {geom.geom_type}, expected a (Multi)Polygon building footprint")
        geom = shapely.force_2d(geom)
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise LabelError(f"{path}: feature {i} has non-finite coordinates")
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            if on_invalid == "raise":
                raise LabelError(f"{path}: feature {i} is an invalid polygon ({reason}); fix it or use on_invalid='repair'")
            geom = _polygonal(shapely.make_valid(geom))
            if geom.is_empty or geom.area == 0:
                log.warning("%s: dropping feature %d: invalid polygon (%s) with no area left after repair", path, i, reason)
                continue
            log.debug("%s: repaired feature %d (%s)", path, i, reason)
        props = dict(feat.get("properties") or {})
        props.pop("geometry", None)
        props["feature_index"] = i
        rows.append(props)
        geoms.append(geom)

    gdf = gpd.GeoDataFrame(rows if rows else {"feature_index": []}, geometry=geoms, crs=src_crs)
    if crs is not None:
        target = CRS.from_user_input(crs)
        if not target.equals(src_crs, ignore_axis_order=True):
            gdf = gdf.to_crs(target)
            bad = ~gdf.geometry.is_valid
            if bad.any():  # reprojection can nudge a vertex across an edge
                gdf.loc[bad, "geometry"] = [_polygonal(shapely.make_valid(g)) for g in gdf.geometry[bad]]
        else:
            gdf = gdf.set_crs(target, allow_override=True)
    return gdf


def _geom_list(geoms) -> list[BaseGeometry]:
    if isinstance(geoms, gpd.GeoDataFrame):
        geoms = geoms.geometry
    return [g for g in geoms if g is not None and not g.is_empty]


def rasterize(geoms: Iterable[BaseGeometry], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Burn polygons (in the grid's CRS) into a uint8 (H,W) mask: 1 where a pixel centre is inside a building."""
    geoms = _geom_list(geoms)
    if not geoms:
        return np.zeros(shape, np.uint8)
    return features.rasterize(
        ((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype=np.uint8, all_touched=False
    )


def instance_map(geoms: Iterable[BaseGeometry], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """int32 (H,W): 0 background, k (1-based) inside building k (later buildings win where they overlap)."""
    geoms = _geom_list(geoms)
    if not geoms:
        return np.zeros(shape, np.int32)
    return features.rasterize(
        ((g, k + 1) for k, g in enumerate(geoms)), out_shape=shape, transform=transform, fill=0, dtype=np.int32
    )


def boundary_band(geoms: Iterable[BaseGeometry], transform: Affine, shape: tuple[int, int], width: int = 3) -> np.ndarray:
    """uint8 (H,W) boundary/contact band, ``r = max(1, width // 2)`` pixels deep:

    - building pixels with a pixel of another label (background or another building) within ``r`` (chessboard
      distance): the inner edge of each building, so two buildings sharing a wall get a ~``2r``-pixel band across it;
    - background pixels with two different buildings within ``r``: the narrow gaps between nearly touching buildings.

    Isolated background and building interiors stay 0, so footprint minus band separates adjacent buildings."""
    inst = instance_map(geoms, transform, shape)
    if not inst.any():
        return np.zeros(shape, np.uint8)
    r = max(1, int(width) // 2)
    size = 2 * r + 1
    # mode='nearest' repeats the border, so a building cut by the tile edge gets no band along the tile border.
    mx = ndimage.maximum_filter(inst, size=size, mode="nearest")
    mn = ndimage.minimum_filter(inst, size=size, mode="nearest")
    big = np.iinfo(np.int32).max
    mn_nz = ndimage.minimum_filter(np.where(inst > 0, inst, big), size=size, mode="nearest")
    edge = (inst > 0) & (mx != mn)
    contact = (inst == 0) & (mn_nz != big) & (mn_nz != mx)
    return (edge | contact).astype(np.uint8)


def tile_mask(
    image_path: str | os.PathLike,
    labels_path: str | os.PathLike | None,
    boundary: bool = False,
    boundary_width: int = 3,
) -> np.ndarray:
    """uint8 (C,H,W) target for one tile on the image's exact grid: C=1 footprint, or C=2 (footprint, boundary band).
    ``labels_path=None`` (a tile without a labels file) gives all zeros. Labels are reprojected to the image CRS."""
    prof = read_profile(image_path)
    h, w, transform = prof["height"], prof["width"], prof["transform"]
    c = 2 if boundary else 1
    out = np.zeros((c, h, w), np.uint8)
    if labels_path is None:
        return out
    if prof["crs"] is None:
        raise LabelError(f"{image_path}: image has no CRS, so its labels cannot be placed on it; use a georeferenced GeoTIFF")
    gdf = read_buildings(labels_path, crs=CRS.from_user_input(prof["crs"]))
    geoms = _geom_list(gdf)
    if not geoms:
        return out
    out[0] = rasterize(geoms, transform, (h, w))
    if boundary:
        out[1] = boundary_band(geoms, transform, (h, w), boundary_width)
    return out


def pixel_polygons(gdf, transform: Affine) -> list[Polygon]:
    """Geometries (GeoDataFrame or iterable, in the raster's CRS) as polygons in pixel coordinates (col, row; origin
    at the top-left corner of the top-left pixel), like SpaceNet's ``PolygonWKT_Pix``. MultiPolygons are split into
    their parts."""
    inv = ~transform
    params = [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f]
    out: list[Polygon] = []
    for g in _geom_list(gdf):
        g = affinity.affine_transform(g, params)
        out.extend(g.geoms if isinstance(g, MultiPolygon) else [g])
    return out


def building_areas_m2(buildings: gpd.GeoDataFrame | None) -> np.ndarray:
    """Footprint areas in m² (projected to the local UTM zone) of a GeoDataFrame of buildings (no CRS: EPSG:4326)."""
    if buildings is None or len(buildings) == 0:
        return np.zeros(0)
    gdf = buildings if buildings.crs is not None else buildings.set_crs(4326)
    return gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()


__all__: Sequence[str] = (
    "LabelError", "read_buildings", "rasterize", "instance_map", "boundary_band", "tile_mask", "pixel_polygons",
    "feature_list", "geometry_problem", "building_areas_m2",
)


# ------------------------------------------------------------------------------------ every building of an AOI

AOI_BUILDINGS_VERSION = 1
COORD_DECIMALS = 6  # 1e-6 deg ~ 0.1 m: far below a pixel (0.3 m), and ~40 % fewer bytes than full floats


@dataclass(frozen=True)
class AoiBuildings:
    """Every building of a catalog in EPSG:4326, ready to draw: ``geojson`` is the FeatureCollection text (one
    Feature per building, properties ``{}``, coordinates rounded to ``COORD_DECIMALS``), ``centroids`` (N, 2)
    lon/lat in the same order, ``skipped`` the labels files left out (path -> reason).

    ``source`` is that text, or the cache file holding it: read only when ``geojson`` is first used (a density view
    needs only the centroids; Vegas' text is ~28 MB)."""

    source: str | Path
    centroids: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False

    @cached_property
    def geojson(self) -> str:
        return self.source.read_text() if isinstance(self.source, Path) else self.source

    @property
    def count(self) -> int:
        return int(len(self.centroids))


def _labels_paths(catalog) -> list[str]:
    if "labels" not in catalog:
        return []
    return sorted({str(p) for p in catalog["labels"].tolist() if isinstance(p, str) and p})


def _buildings_key(paths: list[str]) -> str:
    """Digest of the labels files' paths, sizes and mtimes: any edit, addition or removal gives a new key."""
    h = hashlib.sha1(f"v{AOI_BUILDINGS_VERSION}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:20]


def _round(geoms: np.ndarray) -> np.ndarray:
    return shapely.transform(geoms, lambda c: np.round(c, COORD_DECIMALS))


def _collect(paths: list[str]) -> AoiBuildings:
    parts, skipped = [], {}
    for p in paths:
        try:
            parts.append(np.asarray(read_buildings(p, bad_features="skip").geometry.values))
        except LabelError as exc:
            skipped[p] = str(exc).removeprefix(f"{p}: ")  # path -> reason, as catalog.label_problems
    geoms = _round(np.concatenate(parts)) if parts else np.empty(0, dtype=object)
    centroids = shapely.get_coordinates(shapely.centroid(geoms)) if len(geoms) else np.zeros((0, 2))
    feats = ",".join('{"type":"Feature","properties":{},"geometry":' + g + "}" for g in shapely.to_geojson(geoms))
    return AoiBuildings('{"type":"FeatureCollection","features":[' + feats + "]}", centroids, skipped)


def aoi_buildings(catalog, refresh: bool = False) -> AoiBuildings:
    """Every building of ``catalog``'s labels files (read with :func:`read_buildings`, EPSG:4326), read once and
    cached under ``cache_dir()/buildings/`` keyed on the files' paths, sizes and mtimes (``from_cache`` says which).

    Unreadable labels files are left out and listed in ``skipped`` (their tiles keep their outlines elsewhere);
    an unreadable cache is rebuilt."""
    paths = _labels_paths(catalog)
    folder = cache_dir() / "buildings"
    key = _buildings_key(paths)
    files = {k: folder / f"{key}.{k}" for k in ("geojson", "npy", "json")}
    if not refresh and all(f.is_file() for f in files.values()):
        try:
            meta = json.loads(files["json"].read_text())
            return AoiBuildings(files["geojson"], np.load(files["npy"]), meta["skipped"], True)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("buildings cache %s unreadable (%s); rebuilding", files["json"], exc)
    out = _collect(paths)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with StagedFiles() as staged:
            staged.path(files["geojson"]).write_text(out.geojson)
            with open(staged.path(files["npy"]), "wb") as f:
                np.save(f, out.centroids)
            staged.path(files["json"]).write_text(json.dumps({"count": out.count, "skipped": out.skipped}))
            staged.commit()
    except OSError as exc:
        log.warning("could not write the buildings cache in %s (%s); continuing uncached", folder, exc)
    return out
