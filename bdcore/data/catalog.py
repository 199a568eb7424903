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

- a labels file holding a feature that is not a (Multi)Polygon (a Point, …) keeps its tile; only its polygon
  features are counted and it is listed in ``problems`` (``label_problems(cat)``: every such file at once);
- a file whose ``img<N>`` does not fit a tile id (over 2**63 - 1) is skipped and listed in ``problems``.

The walk is bounded (``ScanLimits``: depth, entries listed, seconds; symlinked folders leading out of the root are
not followed), so pointing at ``/`` or ``/proc`` costs seconds; what was left out is one line in ``attrs["scan"]``.

``catalog.attrs``: ``root``, ``fingerprint``, ``from_cache`` (bool), ``problems`` (dict), ``scan`` (str).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.warp import transform_bounds
from shapely import wkt as shapely_wkt
from shapely.geometry import box

from bdcore.atomic import atomic_write_json
from bdcore.data.imagery import check_readable, quiet_gdal
from bdcore.data.labels import feature_list, geometry_problem
from bdcore.data.products import PRODUCT_TABLE, PRODUCTS
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

LABELS = "labels"
CACHE_VERSION = 4  # 2: n_buildings is null (not 0) for unlabelled tiles; 3: n_buildings counted by parsing the JSON;
# 4: only (Multi)Polygon features counted, other features listed in problems

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


MAX_WARNINGS = 5  # per-file warnings logged one by one; the rest in one line (all of them are in ``problems``)
MAX_TILE_NUMBER = 2**63 - 1  # tile numbers are stored as int64; a longer img<N> is no SpaceNet id


@dataclass(frozen=True)
class ScanLimits:
    """Bounds on the folder walk, so a wrong "Folder path" (``/``, ``/proc``, a home folder) costs seconds, not minutes.
    A real SpaceNet 2 download (all four AOIs, ~55,000 files, at most 4 folder levels deep) is far inside them."""

    max_depth: int = 8  # folder levels below the root that are entered
    max_entries: int = 300_000  # directory entries listed in all
    max_seconds: float = 10.0


@dataclass
class ScanReport:
    """What the walk left out: folders below ``max_depth``, symlinked folders that lead out of the root, folders not
    listed because a limit stopped the walk, and files whose tile number is not a usable id."""

    too_deep: list[str] = field(default_factory=list)
    links_out: list[str] = field(default_factory=list)
    stopped: str = ""  # which limit stopped the walk ("" = the walk finished)
    unlisted: int = 0  # folders still queued when it stopped
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed (permissions)
    bad_names: dict[str, str] = field(default_factory=dict)  # path -> message

    def message(self, root: Path, limits: ScanLimits) -> str:
        """One line saying what was skipped and what to do ("" when nothing was)."""
        parts = []
        if self.stopped:
            parts.append(f"scan stopped at the {self.stopped} limit with {self.unlisted:,} folder(s) not listed")
        if self.too_deep:
            parts.append(f"{len(self.too_deep):,} folder(s) deeper than {limits.max_depth} levels not entered "
                         f"(e.g. {self.too_deep[0]})")
        if self.links_out:
            parts.append(f"{len(self.links_out):,} symlinked folder(s) leading out of the folder not followed "
                         f"(e.g. {self.links_out[0]})")
        if self.unreadable:
            parts.append(f"{len(self.unreadable):,} folder(s) could not be listed (e.g. {self.unreadable[0]})")
        if not parts:
            return ""
        return (f"{root}: {'; '.join(parts)}; tiles there are not in the catalog: point at the AOI folder itself "
                "(the one holding the product folders)")


class _Walker:
    """The bounded walk of ``_scan`` (hidden entries skipped; symlinked folders followed only inside the root)."""

    def __init__(self, root: Path, limits: ScanLimits):
        self.root, self.limits = root, limits
        self.report = ScanReport()
        self.listed = 0
        self.seen: set[tuple[int, int]] = set()
        self.deadline = time.monotonic() + limits.max_seconds

    def entries(self) -> Iterator[os.DirEntry]:
        """Every non-hidden file entry under the root, within the limits."""
        stack = [(self.root, 0)]
        while stack:
            stop = self._limit_hit()
            if stop:
                self.report.stopped, self.report.unlisted = stop, len(stack)
                return
            d, depth = stack.pop()
            for e in self._list(d):
                try:
                    if e.is_dir():
                        self._push(e, depth + 1, stack)
                    elif not e.name.startswith("."):
                        yield e
                except OSError:
                    continue

    def _limit_hit(self) -> str:
        if self.listed >= self.limits.max_entries:
            return f"{self.limits.max_entries:,}-entry"
        if time.monotonic() > self.deadline:
            return f"{self.limits.max_seconds:g}-second"
        return ""

    def _list(self, d: Path) -> list[os.DirEntry]:
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in self.seen:  # symlink loop, or a second way into the same folder
                return []
            self.seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                out = list(it)
        except OSError as exc:
            self.report.unreadable.append(f"{os.path.relpath(d, self.root)}: {exc.strerror or exc}")
            if len(self.report.unreadable) <= MAX_WARNINGS:
                log.warning("catalog: cannot list %s (%s)", d, exc)
            return []
        self.listed += len(out)
        return out

    def _push(self, e: os.DirEntry, depth: int, stack: list[tuple[Path, int]]) -> None:
        if e.name.startswith("."):
            return
        rel = os.path.relpath(e.path, self.root)
        if e.is_symlink() and not self._inside(e.path):
            self.report.links_out.append(f"{rel} -> {os.readlink(e.path)}")
            return
        if depth > self.limits.max_depth:
            self.report.too_deep.append(rel)
            return
        stack.append((Path(e.path), depth))

    def _inside(self, link: str) -> bool:
        """A symlinked folder leads to a folder inside the root (and is that folder: /proc/<pid>/root names "/" but
        is another process's root, so its target is compared by identity too)."""
        target = os.path.realpath(link)
        if os.path.commonpath([target, str(self.root)]) != str(self.root):
            return False
        try:
            return os.path.samefile(link, target)
        except OSError:
            return False


def _bad_tile_number(path: str, n: int) -> str | None:
    if n <= MAX_TILE_NUMBER:
        return None
    digits = str(n) if len(str(n)) <= 30 else f"{str(n)[:12]}…({len(str(n))} digits)"
    return (f"tile number img{digits} is not a usable tile id (over {MAX_TILE_NUMBER}); file skipped: "
            "rename it to img<N> with the tile's SpaceNet number, or move it out of the folder")


def _scan(root: Path, limits: ScanLimits | None = None) -> tuple[dict[tuple[str, int], _Found], str, ScanReport]:
    """Walk ``root`` within ``limits`` → matched files by (aoi, n), the fingerprint, and what the walk left out."""
    walker = _Walker(root, limits or ScanLimits())
    found: dict[tuple[str, int], _Found] = {}
    entries: list[str] = []
    for e in walker.entries():
        m = match_file(e.name)
        if m is None:
            continue
        kind, aoi, n = m
        bad = _bad_tile_number(e.path, n)
        if bad:
            walker.report.bad_names[e.path] = bad
            continue
        try:
            st = e.stat()
        except OSError:
            continue
        rel = os.path.relpath(e.path, root)
        entries.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        found.setdefault((aoi, n), _Found(aoi, n)).files.setdefault(kind, []).append((e.path, st.st_size, st.st_mtime_ns))
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    h.update("\n".join(sorted(entries)).encode())
    return found, h.hexdigest()[:32], walker.report


class _Picker:
    """One file per (tile, kind): if the same name occurs twice, the shallowest copy is used. The first
    ``MAX_WARNINGS`` such tiles are logged one by one, the rest in one line (``summary``), so a folder holding a
    second copy of every tile does not log a line per tile."""

    def __init__(self, root: Path):
        self.root, self.duplicated = root, 0

    def __call__(self, paths: list[tuple[str, int, int]], kind: str) -> str:
        paths = sorted(paths, key=lambda p: (p[0].count(os.sep), p[0]))
        if len(paths) > 1:
            self.duplicated += 1
            if self.duplicated <= MAX_WARNINGS:
                log.warning("catalog: %d %s files for the same tile, using %s (others: %s)", len(paths), kind,
                            os.path.relpath(paths[0][0], self.root),
                            ", ".join(os.path.relpath(p[0], self.root) for p in paths[1:]))
        return paths[0][0]

    def summary(self) -> None:
        if self.duplicated > MAX_WARNINGS:
            log.warning("catalog: %d more tile file(s) found more than once (%d in all); the shallowest copy of each "
                        "is used: remove the extra copies to silence this", self.duplicated - MAX_WARNINGS,
                        self.duplicated)


def _count_buildings(path: str) -> tuple[int, str | None]:
    """(number of building features, problem or None) of a GeoJSON FeatureCollection; ValueError for an unreadable
    file. A feature counts when its geometry is a (Multi)Polygon; any other feature (a Point, a LineString, no
    coordinates) is a problem ("feature 3 is a Point, ...", all of them counted in one line), found here so a run can
    refuse or exclude the file before training instead of failing when the tile is first sampled.

    Parsed as JSON, so a feature whose properties hold ``"type": "Feature"`` is still one feature. Measured: ~0.9 ms
    for a 40 kB SpaceNet label file, about what the image header read costs (a text pattern took 0.08 ms but miscounted
    such files); paid once per file version, the catalog is cached."""
    feats = feature_list(json.loads(Path(path).read_bytes()))
    why_not = [geometry_problem(f) for f in feats]
    bad = [(i, why) for i, why in enumerate(why_not) if why]
    n = sum(1 for f, why in zip(feats, why_not) if not why and f.get("geometry"))
    if not bad:
        return n, None
    i, why = bad[0]
    more = f" (and {len(bad) - 1} more bad feature(s))" if len(bad) > 1 else ""
    return n, (f"bad labels file: feature {i} {why}{more}; fix or delete those features, or leave the tile out of "
               "training (exclude its tile id)")


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
    pick = _Picker(root)
    for (aoi, n), f in sorted(found.items()):
        row: dict[str, Any] = {"tile_id": f"{aoi}_img{n}" if multi else f"img{n}", "image_id": f"{aoi}_img{n}", "aoi": aoi}
        for p in PRODUCTS:
            row[p] = pick(f.files[p], p) if p in f.files else None
        if not any(row[p] for p in PRODUCTS):
            orphan_labels += 1
            continue
        row[LABELS] = pick(f.files[LABELS], LABELS) if LABELS in f.files else None
        rows.append(row)
    pick.summary()
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
    # GDAL's own line per failed open is silenced: each failure is one message in ``problems``.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), quiet_gdal():
        return [header(p) for p in paths]


def _count_or_problem(labels: str | None, problems: dict[str, str]) -> int | None:
    """``n_buildings`` of a tile: None (unknown) without a labels file, 0 for an unreadable one, the (Multi)Polygon
    features of one with bad features (those two recorded in ``problems``)."""
    if labels is None:
        return None
    try:
        n, bad = _count_buildings(labels)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        problems[labels] = f"unreadable labels file ({exc})"
        log.warning("catalog: %s: unreadable labels file (%s); counted as 0 buildings", labels, exc)
        return 0
    if bad:
        problems[labels] = bad
        log.warning("catalog: %s: %s", labels, bad)
    return n


def _build(root: Path, found: dict[tuple[str, int], _Found]) -> tuple[list[dict], dict[str, str]]:
    """Catalog rows of the readable tiles, and ``problems`` (path → message) for the files that were not."""
    tiles = _tile_rows(root, found)
    primaries = [_primary_image(row) for row in tiles]
    problems: dict[str, str] = {}
    rows = []
    skipped = 0
    for row, primary, hd in zip(tiles, primaries, _headers(primaries)):
        if isinstance(hd, Exception):
            problems[primary] = str(hd)
            skipped += 1
            if skipped <= MAX_WARNINGS:
                log.warning("catalog: skipping tile %s: %s", row["tile_id"], hd)
            continue
        row.update({k: hd[k] for k in ("bands", "width", "height", "crs", "dtype")})
        row["geometry"] = box(*hd["bounds"]).wkt
        row["n_buildings"] = _count_or_problem(row[LABELS], problems)  # None: unknown, not zero
        rows.append(row)
    if skipped > MAX_WARNINGS:
        log.warning("catalog: %d more unreadable tile image(s) skipped (%d in all; each is listed in the catalog's "
                    "problems)", skipped - MAX_WARNINGS, skipped)
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


def _no_tiles(root: Path, report: ScanReport, note: str) -> CatalogError:
    skipped = "".join(f" ({path}: {msg})" for path, msg in list(report.bad_names.items())[:1])
    scanned = f" (in the part scanned: {note})" if note else ""
    return CatalogError(f"{root}: no SpaceNet tiles found{scanned}{skipped}. Looked for {PATTERN_HELP}")


def _from_cache(cache: Path, root: Path, fingerprint: str, attrs: dict) -> gpd.GeoDataFrame | None:
    """The cached table if the cache file is current, else None (an unreadable cache is logged and ignored)."""
    if not cache.exists():
        return None
    try:
        data = json.loads(cache.read_text())
        if data.get("version") == CACHE_VERSION and data.get("root") == str(root) and data.get("fingerprint") == fingerprint:
            return _frame(data["rows"], {**attrs, "from_cache": True,
                                         "problems": {**attrs["problems"], **data.get("problems", {})}})
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
        log.warning("catalog: ignoring unreadable cache %s (%s)", cache, exc)
    return None


def load_catalog(root: str | os.PathLike, refresh: bool = False, limits: ScanLimits | None = None) -> gpd.GeoDataFrame:
    """The tile table of an AOI folder (see module docstring). Served from the on-disk cache when no matching file
    changed (``attrs["from_cache"]``); ``refresh=True`` forces a rescan. The walk is bounded by ``limits``
    (``ScanLimits()``); what it left out is one line in ``attrs["scan"]`` ("" when nothing), also logged."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CatalogError(f"{root}: no such folder; point at a SpaceNet 2 AOI folder (or run `python -m bdcore demo`)")
    if not root.is_dir():
        raise CatalogError(f"{root}: is a file, expected a SpaceNet 2 AOI folder")
    root = root.resolve()
    limits = limits or ScanLimits()
    found, fingerprint, report = _scan(root, limits)
    note = report.message(root, limits)
    for path, msg in report.bad_names.items():
        log.warning("catalog: %s: %s", path, msg)
    if not any(set(f.files) & set(PRODUCTS) for f in found.values()):
        raise _no_tiles(root, report, note)
    if note:
        log.warning("catalog: %s", note)
    attrs = {"root": str(root), "fingerprint": fingerprint, "scan": note, "problems": dict(report.bad_names)}
    cache = _cache_file(root)
    cached = None if refresh else _from_cache(cache, root, fingerprint, attrs)
    if cached is not None:
        return cached
    rows, problems = _build(root, found)
    if not rows:
        raise CatalogError(
            f"{root}: found SpaceNet file names but no readable tile image ({len(problems)} unreadable: "
            f"{'; '.join(list(problems.values())[:3])}); re-download the images"
        )
    frame = _frame(rows, {**attrs, "from_cache": False, "problems": {**attrs["problems"], **problems}})
    try:  # written only once the table is built: a failure above leaves no cache behind
        atomic_write_json(cache, {"version": CACHE_VERSION, "root": str(root), "fingerprint": fingerprint,
                                  "rows": rows, "problems": problems})
    except OSError as exc:
        log.warning("catalog: could not write cache %s (%s); continuing uncached", cache, exc)
    return frame


def label_problems(cat: gpd.GeoDataFrame) -> dict[str, str]:
    """Labels files of the catalog's tiles that training cannot use (unreadable, or holding a feature that is not a
    (Multi)Polygon), path → message, all of them at once: found while the catalog was built (no file is re-read), so
    a run can refuse or exclude them before it starts rather than fail when such a tile is first sampled."""
    problems = cat.attrs.get("problems", {})
    labels = {str(p) for p in cat[LABELS].dropna()} if LABELS in cat.columns else set()
    return {path: msg for path, msg in problems.items() if path in labels}


def describe_label_problems(problems: dict[str, str], limit: int = 10) -> str:
    """``label_problems`` as one line: each file with its reason (the catalog message without its fix), at most
    ``limit`` of them, then "and N more"."""
    parts = [f"{path} ({msg.split('; ')[0].removeprefix('bad labels file: ')})"
             for path, msg in list(problems.items())[:limit]]
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(parts) + more


def tiles_with_bad_labels(cat: gpd.GeoDataFrame) -> list[str]:
    """Tile ids whose labels file is in ``label_problems`` (what ``--exclude-tiles`` / an exclude option leaves out)."""
    bad = label_problems(cat)
    if not bad or LABELS not in cat.columns:
        return []
    return [str(t) for t, path in cat[LABELS].items() if path is not None and str(path) in bad]


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
        "bad_labels": sorted(label_problems(cat)),
        "scan": cat.attrs.get("scan", ""),
    }
