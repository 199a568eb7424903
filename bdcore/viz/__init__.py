"""Folium maps and plotly figures as plain functions (no Streamlit here, so they are unit-testable).

Maps are built to work offline: Leaflet is served from the app's ``static/leaflet/`` folder
(:func:`ensure_leaflet_assets`) and every other CDN asset folium would add is dropped, because the
streamlit-folium iframe loads script links in order and silently stops at the first failure.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from bdcore.engine.rundir import RunDir
from bdcore.paths import PROJECT_ROOT

STATIC_DIR = PROJECT_ROOT / "static"
LEAFLET_JS_URL = "/app/static/leaflet/leaflet.js"
LEAFLET_CSS_URL = "/app/static/leaflet/leaflet.css"
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = "&copy; OpenStreetMap contributors"

# Colours (RGB) used for outlines in image overlays.
TRUTH_RGB = (255, 221, 0)   # ground truth: yellow
PRED_RGB = (0, 230, 255)    # prediction: cyan
TP_RGB = (40, 220, 60)      # matched proposal: green
FP_RGB = (255, 50, 50)      # unmatched proposal: red
FN_RGB = (60, 120, 255)     # missed ground truth: blue
SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "buffer": "#d9d9d9", None: "#999999"}  # buffer: blocked split's gap
COUNT_PALETTE = ["#fff5eb", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704"]  # 0 .. many buildings
F1_PALETTE = ["#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641"]      # 0 .. 1
UNLABELLED = "unlabelled"  # tooltip/legend word for a tile without a labels file (building count unknown, not 0)
UNLABELLED_COLOR = "#bdbdbd"  # grey, drawn with a dashed outline: never a building-count colour


# --------------------------------------------------------------------------- Leaflet assets


def leaflet_source_dir() -> Path:
    """The ``static/js_lib_leaflet`` folder of the installed ``django-js-lib-leaflet`` package."""
    spec = importlib.util.find_spec("js_lib_leaflet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Leaflet assets not found: the package 'django-js-lib-leaflet' is not installed. "
            "Fix: pip install -r requirements.txt"
        )
    src = Path(list(spec.submodule_search_locations)[0]) / "static" / "js_lib_leaflet"
    if not (src / "leaflet.js").is_file():
        raise FileNotFoundError(f"{src / 'leaflet.js'} is missing; reinstall django-js-lib-leaflet")
    return src


def ensure_leaflet_assets(static_dir: str | Path | None = None) -> Path:
    """Copy leaflet.js, leaflet.css and images/ into ``<static_dir>/leaflet`` (idempotent). Returns that folder."""
    dest = Path(static_dir or STATIC_DIR) / "leaflet"
    src = leaflet_source_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("leaflet.js", "leaflet.css"):
        s, d = src / name, dest / name
        if not d.is_file() or d.stat().st_size != s.stat().st_size:
            tmp = d.with_name(f".{name}.tmp")
            shutil.copyfile(s, tmp)
            tmp.replace(d)
    (dest / "images").mkdir(exist_ok=True)
    for img in (src / "images").glob("*.png"):
        d = dest / "images" / img.name
        if not d.is_file() or d.stat().st_size != img.stat().st_size:
            shutil.copyfile(img, d)
    return dest


# --------------------------------------------------------------------------- folium maps


def base_map(bounds: Sequence[float], osm: bool = False, height: int | None = None):
    """An offline folium map fitted to ``bounds`` = (minx, miny, maxx, maxy) in lon/lat.

    No base tiles unless ``osm`` (OpenStreetMap needs the internet); only the local Leaflet JS/CSS is linked.
    """
    import folium

    minx, miny, maxx, maxy = (float(v) for v in bounds)
    m = folium.Map(
        location=[(miny + maxy) / 2, (minx + maxx) / 2],
        zoom_start=14,
        tiles=None,
        control_scale=True,
        zoom_snap=0.25,
        **({"height": height} if height else {}),
    )
    m.default_js = [("leaflet", LEAFLET_JS_URL)]
    m.default_css = [("leaflet_css", LEAFLET_CSS_URL)]
    if osm:
        folium.TileLayer(OSM_TILES, attr=OSM_ATTRIBUTION, name="OpenStreetMap", max_zoom=19).add_to(m)
    m.fit_bounds([[miny, minx], [maxy, maxx]])
    return m


def count_color(n: int | None, max_n: int) -> str:
    """Sequential colour for a building count (0 → lightest); None (unlabelled tile) → ``UNLABELLED_COLOR``."""
    if n is None:
        return UNLABELLED_COLOR
    if n <= 0 or max_n <= 0:
        return COUNT_PALETTE[0]
    k = 1 + int((len(COUNT_PALETTE) - 2) * min(n, max_n) / max_n + 0.5)
    return COUNT_PALETTE[min(k, len(COUNT_PALETTE) - 1)]


def f1_color(f1: float | None) -> str:
    if f1 is None or not np.isfinite(f1):
        return "#999999"
    return F1_PALETTE[min(int(float(f1) * len(F1_PALETTE)), len(F1_PALETTE) - 1)]


def building_counts(catalog) -> list[int | None]:
    """Per-tile building counts, None for an unlabelled tile (``n_buildings`` NA: no labels file)."""
    if "n_buildings" not in catalog:
        return [0] * len(catalog)
    return [None if _isna(n) else int(n) for n in catalog["n_buildings"].tolist()]


def _isna(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def tiles_geojson(catalog, values: Mapping[str, object] | None = None, simplify: float = 1e-6) -> dict:
    """Tile footprints as a small GeoJSON dict: properties ``tile_id``, ``n_buildings`` (int, or None when the tile
    is unlabelled), ``buildings`` (the count as text, or "unlabelled"; for tooltips) (+ ``value``).

    Footprints are simplified (``simplify`` degrees) and coordinates rounded to 1e-6° (~0.1 m) to keep the
    page small for thousands of tiles.
    """
    import shapely

    geoms = shapely.simplify(np.asarray(catalog.geometry.values), simplify, preserve_topology=True)
    geoms = shapely.set_precision(geoms, 1e-6)
    ids = [str(t) for t in catalog.index]
    feats = []
    for tid, n, g in zip(ids, building_counts(catalog), geoms):
        props: dict = {"tile_id": tid, "n_buildings": n, "buildings": UNLABELLED if n is None else str(n)}
        if values is not None:
            v = values.get(tid)
            props["value"] = None if v is None else (float(v) if isinstance(v, (int, float, np.number)) else str(v))
        feats.append({"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(g)})
    return {"type": "FeatureCollection", "features": feats}


def tile_map(
    catalog,
    color_by: str = "n_buildings",
    splits: Mapping[str, str] | None = None,
    values: Mapping[str, float] | None = None,
    osm: bool = False,
    height: int | None = None,
):
    """All tile footprints as ONE GeoJSON layer.

    ``color_by``: ``"n_buildings"`` (sequential), ``"split"`` (``splits`` maps tile_id → "train"/"val"), or
    ``"value"`` (``values`` maps tile_id → a score in [0,1], e.g. per-tile F1). Unlabelled tiles are grey with a
    dashed outline and say "unlabelled" in the tooltip (and as their split when ``splits`` leaves them out). The
    tooltip text starts with the tile id, so a click can be resolved from ``last_object_clicked_tooltip`` as well
    as from the point.
    """
    import folium

    if len(catalog) == 0:
        raise ValueError("tile_map: the catalog has no tiles")
    if color_by == "split":
        data = tiles_geojson(catalog, splits or {})
        for f in data["features"]:
            p = f["properties"]
            if p["value"] is None and p["n_buildings"] is None:
                p["value"] = UNLABELLED
        fills = {f["properties"]["tile_id"]: SPLIT_COLORS.get(f["properties"]["value"], "#999999") for f in data["features"]}
        fields, aliases = ["tile_id", "buildings", "value"], ["tile", "buildings", "split"]
    elif color_by == "value":
        data = tiles_geojson(catalog, values or {})
        fills = {f["properties"]["tile_id"]: f1_color(f["properties"]["value"]) for f in data["features"]}
        fields, aliases = ["tile_id", "buildings", "value"], ["tile", "buildings", "F1"]
    elif color_by == "n_buildings":
        data = tiles_geojson(catalog)
        max_n = max((f["properties"]["n_buildings"] or 0 for f in data["features"]), default=0)
        fills = {f["properties"]["tile_id"]: count_color(f["properties"]["n_buildings"], max_n) for f in data["features"]}
        fields, aliases = ["tile_id", "buildings"], ["tile", "buildings"]
    else:
        raise ValueError(f"tile_map: color_by must be 'n_buildings', 'split' or 'value', not {color_by!r}")
    for f in data["features"]:
        p = f["properties"]
        p["fill"] = UNLABELLED_COLOR if p["n_buildings"] is None and color_by != "value" else fills[p["tile_id"]]
        p["dash"] = "4 4" if p["n_buildings"] is None else None

    m = base_map(catalog.total_bounds, osm=osm, height=height)
    folium.GeoJson(
        data,
        name="tiles",
        style_function=lambda f: {
            "fillColor": f["properties"]["fill"],
            "color": "#444444",
            "weight": 1,
            "fillOpacity": 0.55,
            "dashArray": f["properties"]["dash"],
        },
        highlight_function=lambda f: {"weight": 3, "color": "#000000"},
        tooltip=folium.GeoJsonTooltip(fields=fields, aliases=aliases),
        smooth_factor=1.0,
    ).add_to(m)
    if osm:
        folium.LayerControl().add_to(m)
    return m


def selection_layer(tile_geometry, buildings=None, name: str = "selection"):
    """A FeatureGroup with the selected tile's outline and its buildings (one path each).

    Passed to ``st_folium(feature_group_to_add=...)`` so selecting a tile does not rebuild the map.
    """
    import folium
    import shapely

    fg = folium.FeatureGroup(name=name)
    folium.GeoJson(
        shapely.geometry.mapping(tile_geometry),
        style_function=lambda f: {"fill": False, "color": "#000000", "weight": 3, "dashArray": "6 4"},
    ).add_to(fg)
    if buildings is not None and len(buildings):
        folium.GeoJson(
            buildings[["geometry"]].to_json(),
            style_function=lambda f: {"color": "#c2185b", "weight": 1.5, "fillColor": "#e91e63", "fillOpacity": 0.35},
        ).add_to(fg)
    return fg


def polygons_map(polygons_gdf, osm: bool = False, height: int | None = None, bounds=None):
    """Predicted (or any) polygons in EPSG:4326 on an offline map, one GeoJSON layer."""
    import folium

    gdf = polygons_gdf.to_crs(4326) if polygons_gdf.crs is not None else polygons_gdf
    b = bounds if bounds is not None else (gdf.total_bounds if len(gdf) else None)
    if b is None or not np.all(np.isfinite(b)):
        raise ValueError("polygons_map: no polygons and no bounds given")
    m = base_map(b, osm=osm, height=height)
    if len(gdf):
        keep = [c for c in gdf.columns if c != "geometry" and gdf[c].dtype.kind in "ifbU O"][:4]
        folium.GeoJson(
            gdf[keep + ["geometry"]].to_json(default=str),
            name="buildings",
            style_function=lambda f: {"color": "#00bcd4", "weight": 1.5, "fillColor": "#00bcd4", "fillOpacity": 0.35},
        ).add_to(m)
    return m


def map_html(m) -> str:
    """Full standalone HTML of a folium map (what the iframe would load)."""
    return m.get_root().render()


def tile_at(catalog, lat: float, lng: float) -> str | None:
    """The tile id whose footprint contains (lat, lng); nearest footprint within ~1 m if on an edge; else None."""
    from shapely.geometry import Point

    if lat is None or lng is None or len(catalog) == 0:
        return None
    p = Point(float(lng), float(lat))
    idx = catalog.sindex.query(p, predicate="intersects")
    if len(idx):
        return str(catalog.index[int(sorted(idx)[0])])
    idx = catalog.sindex.query(p.buffer(1e-5), predicate="intersects")
    return str(catalog.index[int(sorted(idx)[0])]) if len(idx) else None


def tile_from_tooltip(text: str | None, tile_ids: Iterable[str]) -> str | None:
    """Resolve a clicked tooltip text (``"tile img12 buildings 3"``) to a tile id."""
    if not text:
        return None
    ids = set(map(str, tile_ids))
    for tok in str(text).replace("\n", " ").split():
        if tok in ids:
            return tok
    return None


# --------------------------------------------------------------------------- images


def _poly_rings(poly) -> list[np.ndarray]:
    rings = []
    geoms = getattr(poly, "geoms", [poly])
    for g in geoms:
        if g.is_empty or g.geom_type != "Polygon":
            continue
        for ring in [g.exterior, *g.interiors]:
            # pixel-edge coordinates → the pixel whose top-left corner is that point (floor)
            rings.append(np.floor(np.asarray(ring.coords)[:, :2]).astype(np.int32))
    return rings


def draw_outlines(rgb: np.ndarray, polygons: Iterable, color=TRUTH_RGB, thickness: int = 2) -> np.ndarray:
    """Copy of ``rgb`` (H,W,3 uint8) with polygon outlines (pixel coordinates, SpaceNet PolygonWKT_Pix) drawn."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"draw_outlines: expected an (H,W,3) image, got shape {rgb.shape}")
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    rings = [r for p in polygons for r in _poly_rings(p)]
    if rings:
        cv2.polylines(out, rings, isClosed=True, color=tuple(int(c) for c in color), thickness=thickness, lineType=cv2.LINE_8)
    return out


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, color=PRED_RGB, alpha: float = 0.45) -> np.ndarray:
    """Blend a binary mask (H,W) onto ``rgb`` in ``color``."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask_overlay: mask {mask.shape} does not match image {rgb.shape[:2]}")
    out = rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def match_sets(matches, n_truth: int, n_prop: int) -> tuple[set[int], set[int]]:
    """Matched (truth indices, proposal indices) from a ``scoring.match_buildings`` ``matches`` value.

    Tuples are ``(proposal_index, truth_index, iou)`` as scoring returns them; dicts with ``truth``/``prop``
    (or ``truth_idx``/``prop_idx``) are accepted too.
    """
    mt, mp = set(), set()
    for m in matches or []:
        if isinstance(m, Mapping):
            t = m.get("truth", m.get("truth_idx", m.get("truth_index")))
            p = m.get("prop", m.get("prop_idx", m.get("proposal", m.get("prop_index"))))
        else:
            p, t = m[0], m[1]
        if t is not None and 0 <= int(t) < n_truth:
            mt.add(int(t))
        if p is not None and 0 <= int(p) < n_prop:
            mp.add(int(p))
    return mt, mp


def match_overlay(rgb: np.ndarray, truth_polys: Sequence, prop_polys: Sequence, matches, thickness: int = 2) -> np.ndarray:
    """TP/FP/FN view: matched proposals green, unmatched proposals red, missed truths blue."""
    mt, mp = match_sets(matches, len(truth_polys), len(prop_polys))
    out = draw_outlines(rgb, [p for i, p in enumerate(truth_polys) if i not in mt], FN_RGB, thickness)
    out = draw_outlines(out, [p for i, p in enumerate(prop_polys) if i in mp], TP_RGB, thickness)
    return draw_outlines(out, [p for i, p in enumerate(prop_polys) if i not in mp], FP_RGB, thickness)


# --------------------------------------------------------------------------- plotly figures


def buildings_per_tile_fig(catalog):
    import plotly.graph_objects as go

    all_counts = building_counts(catalog)
    counts = np.array([n for n in all_counts if n is not None], dtype=int)  # unlabelled tiles are not 0-building tiles
    n_unlabelled = len(all_counts) - len(counts)
    title = "Buildings per tile" + (f" (labelled tiles; {n_unlabelled} {UNLABELLED} left out)" if n_unlabelled else "")
    fig = go.Figure(go.Histogram(x=counts, name="tiles", marker_color="#d94801"))
    fig.update_layout(title=title, xaxis_title="buildings in tile", yaxis_title="tiles",
                      bargap=0.05, height=320, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def building_areas_m2(buildings) -> np.ndarray:
    """Footprint areas in m² (projected to the local UTM zone) of a GeoDataFrame of buildings."""
    if buildings is None or len(buildings) == 0:
        return np.zeros(0)
    gdf = buildings if buildings.crs is not None else buildings.set_crs(4326)
    return gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()


def building_area_fig(areas_m2: np.ndarray):
    import plotly.graph_objects as go

    a = np.asarray(areas_m2, dtype=float)
    a = a[np.isfinite(a) & (a > 0)]
    fig = go.Figure(go.Histogram(x=np.log10(a) if len(a) else a, name="buildings", marker_color="#c2185b"))
    ticks = [1, 10, 100, 1000, 10000]
    fig.update_layout(title=f"Building footprint area (n={len(a)})", yaxis_title="buildings", height=320,
                      xaxis=dict(title="area (m², log scale)", tickvals=np.log10(ticks).tolist(), ticktext=[str(t) for t in ticks]),
                      margin=dict(l=40, r=10, t=40, b=40), bargap=0.05)
    return fig


def band_histogram_fig(arr: np.ndarray, band_names: Sequence[str] | None = None, nodata=None, bins: int = 128):
    """One line per band: pixel-value histogram of a (C,H,W) array (native units)."""
    import plotly.graph_objects as go

    if arr.ndim != 3:
        raise ValueError(f"band_histogram_fig: expected (C,H,W), got {arr.shape}")
    colors = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    fig = go.Figure()
    for i, band in enumerate(arr):
        v = band.ravel()
        if nodata is not None:
            v = v[v != nodata]
        if v.size == 0:
            continue
        counts, edges = np.histogram(v, bins=bins)
        name = band_names[i] if band_names and i < len(band_names) else f"band {i + 1}"
        fig.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=counts, mode="lines", name=name,
                                 line=dict(color=colors[i % len(colors)])))
    fig.update_layout(title="Band histograms (selected tile)", xaxis_title="pixel value", yaxis_title="pixels",
                      height=320, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def training_curves_fig(metrics: Sequence[Mapping]):
    """Two panels over the global step: train loss (step records) + val loss (epoch records); val IoU / F1."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    steps = [r for r in metrics if r.get("kind") == "step" and r.get("loss") is not None]
    epochs = [r for r in metrics if r.get("kind") == "epoch"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Validation IoU / F1"))
    fig.add_trace(go.Scatter(x=[r["step"] for r in steps], y=[r["loss"] for r in steps], mode="lines+markers",
                             name="train loss", marker=dict(size=4)), row=1, col=1)
    for key, name, col in (("val_loss", "val loss", 1), ("val_iou", "val IoU", 2), ("val_f1", "val F1", 2)):
        pts = [r for r in epochs if r.get(key) is not None]
        fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r[key] for r in pts], mode="lines+markers",
                                 name=name, text=[f"epoch {r.get('epoch')}" for r in pts]), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=340, margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


# --------------------------------------------------------------------------- catalog helpers for the pages


def tile_preview(row, product: str = "PS-RGB", bands: Sequence[int] = (0, 1, 2), lo: float = 2.0, hi: float = 98.0,
                 outlines: bool = True):
    """(display RGB uint8 with building outlines, raw CHW array, buildings GeoDataFrame in EPSG:4326) of a catalog row."""
    from bdcore.data import catalog as cat_mod
    from bdcore.data import imagery, labels

    path = cat_mod.product_path(row, product)
    arr = imagery.read_image(path)
    bands = tuple(int(b) for b in bands)
    if arr.shape[0] == 1:
        bands = (0, 0, 0)
    elif max(bands) >= arr.shape[0]:
        raise ValueError(f"{path} has {arr.shape[0]} bands; band {max(bands) + 1} does not exist. Fix: pick bands 1-{arr.shape[0]}.")
    rgb = imagery.to_display_rgb(arr, bands=bands, lo=lo, hi=hi)
    lab = row.get("labels") if hasattr(row, "get") else None
    if lab is None or (isinstance(lab, float) and np.isnan(lab)):
        import geopandas as gpd

        return rgb, arr, gpd.GeoDataFrame(geometry=[], crs=4326)
    prof = imagery.read_profile(path)
    bldg = labels.read_buildings(lab, crs=prof["crs"] or "EPSG:4326")
    if outlines and len(bldg):
        rgb = draw_outlines(rgb, labels.pixel_polygons(bldg, prof["transform"]), TRUTH_RGB, 2)
    return rgb, arr, bldg.to_crs(4326) if bldg.crs is not None else bldg


def sample_building_areas(catalog, max_tiles: int = 150, seed: int = 0) -> tuple[np.ndarray, int]:
    """Building areas (m²) over up to ``max_tiles`` labelled tiles (random sample); returns (areas, tiles read)."""
    from bdcore.data import labels

    rows = catalog[catalog["labels"].notna()] if "labels" in catalog else catalog.iloc[:0]
    if len(rows) > max_tiles:
        rows = rows.sample(max_tiles, random_state=seed)
    parts = [building_areas_m2(labels.read_buildings(p)) for p in rows["labels"]]
    return (np.concatenate(parts) if parts else np.zeros(0)), len(rows)


def raster_bounds_4326(path) -> tuple[float, float, float, float] | None:
    """(minx, miny, maxx, maxy) in lon/lat of a georeferenced raster; None without a CRS."""
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        if src.crs is None:
            return None
        return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds))


def checkpoints_of(run_dirs: Iterable) -> dict[str, Path]:
    """``"<run> · best.pt"`` → path for every best.pt / last.pt found in the given run folders."""
    out: dict[str, Path] = {}
    for d in run_dirs:
        for p in RunDir(d).checkpoints().values():
            out[f"{Path(d).name} · {p.name}"] = p
    return out


def review_images(prob: np.ndarray, image_path, labels_path, threshold: float = 0.5, min_area: float = 20.0,
                  lo: float = 2.0, hi: float = 98.0) -> dict[str, np.ndarray]:
    """The Review page's four views of one tile from its probabilities (K,H,W in [0,1]):

    ``image`` (stretched), ``truth`` (ground-truth outlines), ``prediction`` (mask tint + predicted outlines),
    ``matches`` (TP green / FP red / FN blue, SpaceNet IoU ≥ 0.5 matching).
    """
    from bdcore.data import imagery, labels
    from bdcore.metrics import scoring
    from bdcore.metrics.polygons import mask_to_polygons

    arr = imagery.read_image(image_path)
    prof = imagery.read_profile(image_path)
    rgb = imagery.to_display_rgb(arr, bands=(0, 1, 2) if arr.shape[0] >= 3 else (0, 0, 0), lo=lo, hi=hi)
    truth = []
    if labels_path:
        truth = labels.pixel_polygons(labels.read_buildings(labels_path, crs=prof["crs"]), prof["transform"])
    props = [p for p, _ in mask_to_polygons(prob[0], threshold=threshold, min_area=min_area,
                                            boundary=prob[1] if prob.shape[0] > 1 else None)]
    m = scoring.match_buildings(truth, props, min_area=min_area)
    return {
        "image": rgb,
        "truth": draw_outlines(rgb, truth, TRUTH_RGB),
        "prediction": draw_outlines(mask_overlay(rgb, prob[0] > threshold, PRED_RGB, 0.35), props, PRED_RGB),
        "matches": match_overlay(rgb, truth, props, m["matches"]),
    }
