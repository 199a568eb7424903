"""SpaceNet 2 AOI folder (either published layout) → one GeoDataFrame row per tile.

Files are matched by file-name pattern anywhere under the root, not by folder name, so all of these work:

- original release: ``RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img<N>.tif``, ``MUL-PanSharpen/…``, ``MUL/MUL_…``,
  ``PAN/PAN_…``, ``geojson/buildings/buildings_AOI_3_Paris_img<N>.geojson``;
- the same file names inside bucket-style folders (``PS-RGB/``, ``geojson_buildings/``; the Vegas sample);
- current bucket layout: ``PS-RGB/SN2_buildings_train_AOI_3_Paris_PS-RGB_img<N>.tif``, ``PS-MS/…``, ``MS/…``,
  ``PAN/…``, ``geojson_buildings/SN2_buildings_train_AOI_3_Paris_geojson_buildings_img<N>.geojson``.

Products are named as in the bucket: RGB-PanSharpen→PS-RGB, MUL-PanSharpen→PS-MS, MUL→MS, PAN→PAN.

Tile ids are ``img<N>``; if the folder holds several AOIs, tile ids are the full image ids (``AOI_2_Vegas_img<N>``) so
they stay unique. The table is cached as JSON under ``cache_dir()/catalogs/`` (the data folder may be read-only),
keyed by the absolute root and rebuilt when the fingerprint (relative path, size and mtime of every matching file)
changes.

Bad files do not stop the catalog:
- a tile whose primary image (PS-RGB, else the first product present) is corrupt, truncated or not a GeoTIFF is
  **skipped** with a warning and listed in ``catalog.attrs["problems"]`` (path → message);
- a tile with images but no labels file is *unlabelled*: ``labels=None`` and ``n_buildings`` missing (``pd.NA``; the
  column is pandas' nullable ``Int64``), never 0 -- its building count is unknown, not zero (e.g. the public Paris
  imagery, whose labels are not published). ``labelled_tiles`` selects the others; training and evaluation use only
  those;
- an unreadable labels file keeps its path in ``labels`` with ``n_buildings=0`` and is listed in ``attrs["problems"]``
  (reading it later raises ``LabelError``).
Only the primary image's header (and one pixel of its last row, to catch truncation) is read; other products are
checked when read (``ImageryError``).

``catalog.attrs``: ``root``, ``fingerprint``, ``from_cache`` (bool), ``problems`` (dict).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.warp import transform_bounds
from shapely import wkt as shapely_wkt
from shapely.geometry import box

from bdcore.atomic import atomic_write_json
from bdcore.data.imagery import check_readable
from bdcore.data.products import PRODUCT_TABLE, PRODUCTS
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

LABELS = "labels"
CACHE_VERSION = 3  # 2: n_buildings is null (not 0) for unlabelled tiles; 3: n_buildings counted by parsing the JSON

_AOI = r"(?P<aoi>AOI_\d+_[A-Za-z]+)"
_N = r"img(?P<n>\d+)"
_TIF = r"\.tiff?"
# (kind, regex on the file name). Order matters only for readability; the patterns are mutually exclusive.
PATTERNS: list[tuple[str, re.Pattern]] = [
    *[(p.name, re.compile(rf"^{re.escape(p.release_folder)}_{_AOI}_{_N}{_TIF}$", re.I)) for p in PRODUCT_TABLE],
    (LABELS, re.compile(rf"^buildings_{_AOI}_{_N}\.geojson$", re.I)),
    ("bucket", re.compile(rf"^SN\d+_buildings_[A-Za-z0-9]+_{_AOI}_(?P<product>{'|'.join(map(re.escape, PRODUCTS))})"
                          rf"_{_N}{_TIF}$", re.I)),
    (LABELS, re.compile(rf"^SN\d+_buildings_[A-Za-z0-9]+_{_AOI}_geojson_buildings_{_N}\.geojson$", re.I)),
]
PATTERN_HELP = (
    "RGB-PanSharpen_AOI_<k>_<City>_img<N>.tif, MUL-PanSharpen_…, MUL_…, PAN_…, buildings_AOI_<k>_<City>_img<N>.geojson "
    "(original release) or SN2_buildings_train_AOI_<k>_<City>_{PS-RGB,PS-MS,MS,PAN}_img<N>.tif, "
    "SN2_buildings_train_AOI_<k>_<City>_geojson_buildings_img<N>.geojson (bucket layout), in any sub-folder"
)
_PRODUCT_CASE = {p.upper(): p for p in PRODUCTS}


class CatalogError(ValueError):
    """The folder is not a usable SpaceNet AOI (missing, or no recognisable tiles), or a tile lacks a product."""


def match_file(name: str) -> tuple[str, str, int] | None:
    """(kind, aoi, tile number) for a SpaceNet file name, kind in PRODUCTS or "labels"; None if not one."""
    for kind, pat in PATTERNS:
        m = pat.match(name)
        if m:
            if kind == "bucket":
                kind = _PRODUCT_CASE[m.group("product").upper()]
            return kind, m.group("aoi"), int(m.group("n"))
    return None


@dataclass
class _Found:
    aoi: str
    n: int
    files: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # kind -> [(abs path, size, mtime)]


def _scan(root: Path) -> tuple[dict[tuple[str, int], _Found], str]:
    """Walk ``root`` (hidden folders skipped, symlinks followed) → matched files by (aoi, n), and the fingerprint."""
    found: dict[tuple[str, int], _Found] = {}
    entries: list[str] = []
    stack = [root]
    seen_dirs: set[tuple[int, int]] = set()
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            it = list(os.scandir(d))
        except OSError as exc:
            log.warning("catalog: cannot list %s (%s)", d, exc)
            continue
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    stack.append(Path(e.path))
                    continue
                m = match_file(e.name)
                if m is None:
                    continue
                st = e.stat()
            except OSError:
                continue
            kind, aoi, n = m
            rel = os.path.relpath(e.path, root)
            entries.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
            found.setdefault((aoi, n), _Found(aoi, n)).files.setdefault(kind, []).append((e.path, st.st_size, st.st_mtime_ns))
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    h.update("\n".join(sorted(entries)).encode())
    return found, h.hexdigest()[:32]


def _pick(paths: list[tuple[str, int, int]], kind: str, root: Path) -> str:
    """One file per (tile, kind): if the same name occurs twice, prefer the shallowest copy and say so."""
    paths = sorted(paths, key=lambda p: (p[0].count(os.sep), p[0]))
    if len(paths) > 1:
        log.warning("catalog: %d %s files for the same tile, using %s (others: %s)", len(paths), kind,
                    os.path.relpath(paths[0][0], root), ", ".join(os.path.relpath(p[0], root) for p in paths[1:]))
    return paths[0][0]


def _count_buildings(path: str) -> int:
    """Number of features with a geometry in a GeoJSON FeatureCollection; ValueError for an unreadable file.

    Parsed as JSON, so a feature whose properties hold ``"type": "Feature"`` is still one feature. Measured: ~0.9 ms
    for a 40 kB SpaceNet label file, about what the image header read costs (a text pattern took 0.08 ms but miscounted
    such files); paid once per file version, the catalog is cached."""
    fc = json.loads(Path(path).read_bytes())
    if not isinstance(fc, dict) or not isinstance(fc.get("features", []), list):
        raise ValueError("not a GeoJSON FeatureCollection")
    return sum(1 for f in fc.get("features") or [] if isinstance(f, dict) and f.get("geometry"))


def _header(path: str) -> dict:
    prof = check_readable(path)
    left, bottom, right, top = prof["bounds"]
    crs = prof["crs"]
    if crs is None:
        raise ValueError(f"{path}: image has no CRS; the catalog needs georeferenced GeoTIFFs")
    if crs.to_epsg() != 4326:
        left, bottom, right, top = transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    return {
        "bounds": (left, bottom, right, top),
        "bands": prof["count"],
        "width": prof["width"],
        "height": prof["height"],
        "crs": crs.to_string(),
        "dtype": prof["dtype"],
    }


def _tile_rows(root: Path, found: dict[tuple[str, int], _Found]) -> list[dict]:
    """One row per (aoi, tile number) that has an image: ids, one path per product and the labels path."""
    multi = len({aoi for aoi, _ in found}) > 1
    rows: list[dict] = []
    orphan_labels = 0
    for (aoi, n), f in sorted(found.items()):
        row: dict[str, Any] = {"tile_id": f"{aoi}_img{n}" if multi else f"img{n}", "image_id": f"{aoi}_img{n}", "aoi": aoi}
        for p in PRODUCTS:
            row[p] = _pick(f.files[p], p, root) if p in f.files else None
        if not any(row[p] for p in PRODUCTS):
            orphan_labels += 1
            continue
        row[LABELS] = _pick(f.files[LABELS], LABELS, root) if LABELS in f.files else None
        rows.append(row)
    if orphan_labels:
        log.info("catalog: %d labels file(s) have no image and were left out", orphan_labels)
    return rows


def _primary_image(row: dict) -> str:
    """The image whose header describes the tile: PS-RGB, else the first product present (PRODUCTS order)."""
    return next(row[p] for p in PRODUCTS if row[p])


def _headers(paths: list[str]) -> list[dict | Exception]:
    """``_header`` of every path, or the error that made it unreadable."""

    def header(path: str) -> dict | Exception:
        try:
            return _header(path)
        except (ValueError, OSError) as exc:
            return exc

    # GDAL lists the folder on every open to look for sidecar files; with a thousand tiles per folder that dominates
    # (measured 2.9 → 0.7 ms per tile). Headers of SpaceNet tiles do not depend on sidecars.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return [header(p) for p in paths]


def _count_or_problem(labels: str | None, problems: dict[str, str]) -> int | None:
    """``n_buildings`` of a tile: None (unknown) without a labels file, 0 for an unreadable one (recorded)."""
    if labels is None:
        return None
    try:
        return _count_buildings(labels)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        problems[labels] = f"unreadable labels file ({exc})"
        log.warning("catalog: %s: unreadable labels file (%s); counted as 0 buildings", labels, exc)
        return 0


def _build(root: Path, found: dict[tuple[str, int], _Found]) -> tuple[list[dict], dict[str, str]]:
    """Catalog rows of the readable tiles, and ``problems`` (path → message) for the files that were not."""
    tiles = _tile_rows(root, found)
    primaries = [_primary_image(row) for row in tiles]
    problems: dict[str, str] = {}
    rows = []
    for row, primary, hd in zip(tiles, primaries, _headers(primaries)):
        if isinstance(hd, Exception):
            problems[primary] = str(hd)
            log.warning("catalog: skipping tile %s: %s", row["tile_id"], hd)
            continue
        row.update({k: hd[k] for k in ("bands", "width", "height", "crs", "dtype")})
        row["geometry"] = box(*hd["bounds"]).wkt
        row["n_buildings"] = _count_or_problem(row[LABELS], problems)  # None: unknown, not zero
        rows.append(row)
    no_labels = sum(1 for r in rows if r[LABELS] is None)
    if no_labels:
        log.info("catalog: %d of %d tile(s) have no labels file: unlabelled (labels=None, n_buildings=NA)",
                 no_labels, len(rows))
    return rows, problems


COLUMNS = ["tile_id", "image_id", "aoi", *PRODUCTS, LABELS, "bands", "width", "height", "n_buildings", "crs", "dtype"]


def _frame(rows: list[dict], attrs: dict) -> gpd.GeoDataFrame:
    df = pd.DataFrame(rows, columns=[*COLUMNS, "geometry"])
    geometry = gpd.GeoSeries([shapely_wkt.loads(w) for w in df["geometry"]], crs="EPSG:4326")
    gdf = gpd.GeoDataFrame(df.drop(columns="geometry"), geometry=geometry.values, crs="EPSG:4326")
    for c in ("bands", "width", "height"):
        gdf[c] = gdf[c].astype(np.int64)
    gdf["n_buildings"] = pd.array(gdf["n_buildings"].tolist(), dtype="Int64")  # NA = unlabelled tile
    for c in (*PRODUCTS, LABELS):
        gdf[c] = gdf[c].astype(object).where(gdf[c].notna(), None)
    # Natural order: AOI, then tile number.
    gdf["_n"] = gdf["image_id"].str.extract(r"_img(\d+)$", expand=False).astype(np.int64)
    gdf = gdf.sort_values(["aoi", "_n"], kind="stable").drop(columns="_n")
    gdf.index = pd.Index(gdf["tile_id"].tolist())  # unnamed, so "tile_id" is never ambiguous (index vs column)
    gdf.attrs.update(attrs)
    return gdf


def _cache_file(root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:20]
    return cache_dir() / "catalogs" / f"{key}.json"


def load_catalog(root: str | os.PathLike, refresh: bool = False) -> gpd.GeoDataFrame:
    """The tile table of an AOI folder (see module docstring). Served from the on-disk cache when no matching file
    changed (``attrs["from_cache"]``); ``refresh=True`` forces a rescan."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CatalogError(f"{root}: no such folder; point at a SpaceNet 2 AOI folder (or run `python -m bdcore demo`)")
    if not root.is_dir():
        raise CatalogError(f"{root}: is a file, expected a SpaceNet 2 AOI folder")
    root = root.resolve()
    found, fingerprint = _scan(root)
    if not any(set(f.files) & set(PRODUCTS) for f in found.values()):
        raise CatalogError(f"{root}: no SpaceNet tiles found. Looked for {PATTERN_HELP}")
    cache = _cache_file(root)
    if not refresh and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("version") == CACHE_VERSION and data.get("root") == str(root) and data.get("fingerprint") == fingerprint:
                return _frame(data["rows"], {"root": str(root), "fingerprint": fingerprint, "from_cache": True,
                                             "problems": data.get("problems", {})})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("catalog: ignoring unreadable cache %s (%s)", cache, exc)
    rows, problems = _build(root, found)
    if not rows:
        raise CatalogError(
            f"{root}: found SpaceNet file names but no readable tile image ({len(problems)} unreadable: "
            f"{'; '.join(list(problems.values())[:3])}); re-download the images"
        )
    try:
        atomic_write_json(cache, {"version": CACHE_VERSION, "root": str(root), "fingerprint": fingerprint,
                                  "rows": rows, "problems": problems})
    except OSError as exc:
        log.warning("catalog: could not write cache %s (%s); continuing uncached", cache, exc)
    return _frame(rows, {"root": str(root), "fingerprint": fingerprint, "from_cache": False, "problems": problems})


def product_path(row, product: str) -> Path:
    """Path of ``product`` for one catalog row (Series or dict). CatalogError if the tile lacks it."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown product {product!r}; choose one of {', '.join(PRODUCTS)}")
    value = row.get(product)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        tile = row.get("tile_id", "?")
        have = [p for p in PRODUCTS if row.get(p)]
        raise CatalogError(
            f"tile {tile} has no {product} image (available: {', '.join(have) or 'none'}); "
            f"download the {product} product or pick one of those"
        )
    return Path(value)


# ---------------------------------------------------------------------------------------------- labelled tiles and summary


def is_labelled(cat: gpd.GeoDataFrame) -> pd.Series:
    """Boolean Series: the tile has a building labels file (its ``n_buildings`` is known)."""
    return cat[LABELS].notna() if LABELS in cat.columns else pd.Series(True, index=cat.index)


def labelled_tiles(cat: gpd.GeoDataFrame, product: str | None = None, purpose: str = "training") -> gpd.GeoDataFrame:
    """The tiles that have a labels file (and a ``product`` image, if given): what training and evaluation use.

    An unlabelled tile is not known to be empty, so it must never count as a tile without buildings. CatalogError
    naming the folder when none is left (e.g. the public Paris imagery, whose labels are not published)."""
    root = cat.attrs.get("root") or "this folder"
    out = cat[is_labelled(cat)]
    if len(out) == 0:
        raise CatalogError(
            f"{root}: {len(cat)} tile(s), 0 labelled (no buildings_*.geojson label files): {purpose} needs labelled "
            "tiles; add the geojson_buildings files or pick a labelled AOI folder (unlabelled imagery can still be "
            "explored and predicted on)"
        )
    if product is not None and product in out.columns:
        have = out[out[product].notna()]
        if len(have) == 0:
            raise CatalogError(f"{root}: no labelled tile has a {product} image; pick another product")
        out = have
    return out


def summary(cat: gpd.GeoDataFrame) -> dict:
    """Counts for display: tiles, labelled tiles, buildings (in labelled tiles), bands, products, bounds, per-AOI
    table, and ``headline`` (one line: "10 tiles, 213 buildings" / "2 tiles, 0 labelled (2 unlabelled: no labels
    file), 0 buildings")."""
    b = cat.total_bounds.tolist() if len(cat) else [float("nan")] * 4
    lab = is_labelled(cat)
    per_aoi = (
        cat.assign(_labelled=lab)
        .groupby("aoi")
        .agg(tiles=("image_id", "size"), labelled=("_labelled", "sum"), buildings=("n_buildings", "sum"),
             empty=("n_buildings", lambda s: int((s == 0).sum())))
        .reset_index()
        .to_dict("records")
    )
    for r in per_aoi:
        r.update(tiles=int(r["tiles"]), labelled=int(r["labelled"]), buildings=int(r["buildings"]), empty=int(r["empty"]))
    n, n_lab, n_bld = int(len(cat)), int(lab.sum()), int(cat["n_buildings"].sum())
    if n_lab == n:
        headline = f"{n:,} tiles, {n_bld:,} buildings"
    else:
        headline = f"{n:,} tiles, {n_lab:,} labelled ({n - n_lab:,} unlabelled: no labels file), {n_bld:,} buildings"
    return {
        "root": cat.attrs.get("root"),
        "tiles": n,
        "labelled": n_lab,
        "unlabelled": n - n_lab,
        "headline": headline,
        "buildings": n_bld,
        "tiles_without_labels": n - n_lab,
        "tiles_without_buildings": int((cat["n_buildings"] == 0).sum()),  # labelled tiles with 0 buildings only
        "bands": sorted(int(x) for x in cat["bands"].unique()),
        "products": {p: int(cat[p].notna().sum()) for p in PRODUCTS},
        "sizes": sorted({f"{w}x{h}" for w, h in zip(cat["width"], cat["height"])}),
        "bounds": b,
        "per_aoi": per_aoi,
        "problems": dict(cat.attrs.get("problems", {})),
    }
