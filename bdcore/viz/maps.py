"""Folium maps (offline: only the local Leaflet JS/CSS is linked, see ``viz.leaflet``) and what a click on them
resolves to. Unlabelled tiles (``n_buildings`` NA: no labels file) are grey with a dashed outline and say
``UNLABELLED`` in tooltips: their building count is unknown, never 0."""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.warp import transform_bounds
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from bdcore.viz.leaflet import LEAFLET_CSS_URL, LEAFLET_JS_URL

OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = "&copy; OpenStreetMap contributors"
SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "buffer": "#d9d9d9", None: "#999999"}  # buffer: blocked split's gap
COUNT_PALETTE = ["#fff5eb", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704"]  # 0 .. many buildings
F1_PALETTE = ["#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641"]      # 0 .. 1
NO_VALUE_COLOR = "#999999"
UNLABELLED = "unlabelled"  # tooltip/legend word for a tile without a labels file (building count unknown, not 0)
UNLABELLED_COLOR = "#bdbdbd"  # grey, drawn with a dashed outline: never a building-count colour


def base_map(bounds: Sequence[float], osm: bool = False, height: int | None = None) -> folium.Map:
    """An offline folium map fitted to ``bounds`` = (minx, miny, maxx, maxy) in lon/lat.

    No base tiles unless ``osm`` (OpenStreetMap needs the internet); only the local Leaflet JS/CSS is linked.
    """
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
        return NO_VALUE_COLOR
    return F1_PALETTE[min(int(float(f1) * len(F1_PALETTE)), len(F1_PALETTE) - 1)]


def building_counts(catalog: pd.DataFrame) -> list[int | None]:
    """Per-tile building counts, None for an unlabelled tile (``n_buildings`` NA: no labels file)."""
    if "n_buildings" not in catalog:
        return [0] * len(catalog)
    return [None if n is None or pd.isna(n) else int(n) for n in catalog["n_buildings"].tolist()]


def tiles_geojson(catalog: gpd.GeoDataFrame, values: Mapping[str, object] | None = None,
                  simplify: float = 1e-6) -> dict:
    """Tile footprints as a small GeoJSON dict: properties ``tile_id``, ``n_buildings`` (int, or None when the tile
    is unlabelled), ``buildings`` (the count as text, or "unlabelled"; for tooltips) (+ ``value``).

    Footprints are simplified (``simplify`` degrees) and coordinates rounded to 1e-6° (~0.1 m) to keep the
    page small for thousands of tiles.
    """
    geoms = shapely.simplify(np.asarray(catalog.geometry.values), simplify, preserve_topology=True)
    geoms = shapely.set_precision(geoms, 1e-6)
    feats = []
    for tid, n, g in zip((str(t) for t in catalog.index), building_counts(catalog), geoms):
        props: dict = {"tile_id": tid, "n_buildings": n, "buildings": UNLABELLED if n is None else str(n)}
        if values is not None:
            v = values.get(tid)
            props["value"] = None if v is None else (float(v) if isinstance(v, (int, float, np.number)) else str(v))
        feats.append({"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(g)})
    return {"type": "FeatureCollection", "features": feats}


def _styled_tiles(catalog: gpd.GeoDataFrame, color_by: str, splits: Mapping[str, str] | None,
                  values: Mapping[str, float] | None) -> tuple[dict, list[str], list[str]]:
    """(GeoJSON with ``fill``/``dash`` properties, tooltip fields, tooltip aliases) for :func:`tile_map`."""
    if color_by == "split":
        data = tiles_geojson(catalog, splits or {})
        for f in data["features"]:
            p = f["properties"]
            if p["value"] is None and p["n_buildings"] is None:
                p["value"] = UNLABELLED
        fills = [SPLIT_COLORS.get(f["properties"]["value"], NO_VALUE_COLOR) for f in data["features"]]
        fields, aliases = ["tile_id", "buildings", "value"], ["tile", "buildings", "split"]
    elif color_by == "value":
        data = tiles_geojson(catalog, values or {})
        fills = [f1_color(f["properties"]["value"]) for f in data["features"]]
        fields, aliases = ["tile_id", "buildings", "value"], ["tile", "buildings", "F1"]
    elif color_by == "n_buildings":
        data = tiles_geojson(catalog)
        max_n = max((f["properties"]["n_buildings"] or 0 for f in data["features"]), default=0)
        fills = [count_color(f["properties"]["n_buildings"], max_n) for f in data["features"]]
        fields, aliases = ["tile_id", "buildings"], ["tile", "buildings"]
    else:
        raise ValueError(f"tile_map: color_by must be 'n_buildings', 'split' or 'value', not {color_by!r}")
    for f, fill in zip(data["features"], fills):
        p = f["properties"]
        p["fill"] = UNLABELLED_COLOR if p["n_buildings"] is None and color_by != "value" else fill
        p["dash"] = "4 4" if p["n_buildings"] is None else None
    return data, fields, aliases


def tile_map(catalog: gpd.GeoDataFrame, color_by: str = "n_buildings", splits: Mapping[str, str] | None = None,
             values: Mapping[str, float] | None = None, osm: bool = False, height: int | None = None) -> folium.Map:
    """All tile footprints as ONE GeoJSON layer.

    ``color_by``: ``"n_buildings"`` (sequential), ``"split"`` (``splits`` maps tile_id → "train"/"val"), or
    ``"value"`` (``values`` maps tile_id → a score in [0,1], e.g. per-tile F1). Unlabelled tiles are grey with a
    dashed outline and say "unlabelled" in the tooltip (and as their split when ``splits`` leaves them out). The
    tooltip text starts with the tile id, so a click can be resolved from ``last_object_clicked_tooltip`` as well
    as from the point.
    """
    if len(catalog) == 0:
        raise ValueError("tile_map: the catalog has no tiles")
    data, fields, aliases = _styled_tiles(catalog, color_by, splits, values)
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


def selection_layer(tile_geometry: BaseGeometry, buildings: gpd.GeoDataFrame | None = None,
                    name: str = "selection") -> folium.FeatureGroup:
    """A FeatureGroup with the selected tile's outline and its buildings (one path each).

    Passed to ``st_folium(feature_group_to_add=...)`` so selecting a tile does not rebuild the map.
    """
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


def polygons_map(polygons_gdf: gpd.GeoDataFrame, osm: bool = False, height: int | None = None,
                 bounds: Sequence[float] | None = None) -> folium.Map:
    """Predicted (or any) polygons in EPSG:4326 on an offline map, one GeoJSON layer."""
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


def bounds_4326(profile: Mapping) -> tuple[float, float, float, float] | None:
    """(minx, miny, maxx, maxy) in lon/lat of a raster from its ``imagery.read_profile``; None without a CRS."""
    if profile["crs"] is None:
        return None
    return tuple(transform_bounds(profile["crs"], "EPSG:4326", *profile["bounds"]))


def map_html(m: folium.Map) -> str:
    """Full standalone HTML of a folium map (what the iframe would load)."""
    return m.get_root().render()


def tile_at(catalog: gpd.GeoDataFrame, lat: float | None, lng: float | None) -> str | None:
    """The tile id whose footprint contains (lat, lng); nearest footprint within ~1 m if on an edge; else None."""
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


# ------------------------------------------------------------------------------- every building of the AOI

# Above this many buildings the map draws a density grid instead of outlines. Chromium (canvas renderer, headless,
# 2 shared cores, bench/map_render.py, 1,148 tiles + synthetic buildings) drew 25k in 0.87 s, 50k in 1.3-1.4 s, 100k in
# 3.0 s, 150k in 4.4 s; the server part (cached buildings -> HTML) took 0.36 / 0.65 / 1.2 / 1.75 s.
MAX_DRAWN_BUILDINGS = 40_000  # 50k fits 2 s on an idle machine only; 25k took 0.96-1.87 s loaded
DENSITY_CELLS = 64  # density grid cells along the AOI's longer side
BUILDINGS_PANE = "bdcoreBuildings"


class BuildingsLayer(folium.MacroElement):
    """Every building as ONE ``L.geoJSON`` layer on a canvas renderer, in its own pane that lets clicks through to
    the tile footprints (which stay SVG). The GeoJSON text is embedded as is (no re-serialisation). Once the layer
    is added and the canvas has painted, the page's ``window.__bdcoreDrawn`` is the number of features drawn and
    ``window.__bdcoreMode`` the mode ("outlines" or "density"): what tests and the benchmark wait for."""

    _template = folium.template.Template("""
{% macro script(this, kwargs) %}
(function(map) {
    var pane = map.getPane("{{ this.pane }}") || map.createPane("{{ this.pane }}");
    pane.style.zIndex = 450;
    pane.style.pointerEvents = "none";
    var layer = L.geoJSON({{ this.data }}, {
        pane: "{{ this.pane }}", interactive: false,
        renderer: L.canvas({pane: "{{ this.pane }}", padding: 0.2}),
        style: {{ this.style_js }}
    }).addTo(map);
    var n = layer.getLayers().length;
    requestAnimationFrame(function() { requestAnimationFrame(function() {
        window.__bdcoreDrawn = n; window.__bdcoreMode = "{{ this.mode }}";
    }); });
})({{ this._parent.get_name() }});
{% endmacro %}
""")

    def __init__(self, data: str, mode: str, count: int, message: str):
        super().__init__()
        self._name = "BuildingsLayer"
        self.data, self.mode, self.count, self.message, self.pane = data, mode, count, message, BUILDINGS_PANE
        self.style_js = ('{"color": "#c2185b", "weight": 1, "fillColor": "#e91e63", "fillOpacity": 0.35}'
                         if mode == "outlines" else
                         'function(f) { return {"stroke": false, "fillColor": f.properties.c, "fillOpacity": 0.75}; }')


def density_geojson(centroids: np.ndarray, cells: int = DENSITY_CELLS) -> tuple[str, float]:
    """(GeoJSON text of the non-empty grid cells, coloured by building count in ``fill``-ready property ``c`` and
    counted in ``n``; the cell side in metres). The grid spans the centroids' bounds, ``cells`` along the longer
    side, square in metres."""
    lon, lat = centroids[:, 0], centroids[:, 1]
    x0, y0, x1, y1 = lon.min(), lat.min(), lon.max(), lat.max()
    coslat = max(np.cos(np.radians((y0 + y1) / 2)), 1e-6)
    side = max((x1 - x0) * coslat, y1 - y0, 1e-6) / cells  # degrees of latitude
    dx, dy = side / coslat, side
    ix = np.minimum(((lon - x0) / dx).astype(int), int((x1 - x0) / dx))
    iy = np.minimum(((lat - y0) / dy).astype(int), int((y1 - y0) / dy))
    keys, counts = np.unique(np.stack([ix, iy], 1), axis=0, return_counts=True)
    max_n = int(counts.max())
    feats = []
    for (i, j), n in zip(keys.tolist(), counts.tolist()):
        a, b = round(x0 + i * dx, 6), round(y0 + j * dy, 6)
        c, d = round(a + dx, 6), round(b + dy, 6)
        feats.append({"type": "Feature", "properties": {"n": n, "c": count_color(n, max_n)},
                      "geometry": {"type": "Polygon", "coordinates": [[[a, b], [c, b], [c, d], [a, d], [a, b]]]}})
    return json.dumps({"type": "FeatureCollection", "features": feats}, separators=(",", ":")), side * 111_320


def buildings_layer(buildings, max_drawn: int | None = None) -> BuildingsLayer:
    """The layer for ``buildings`` (a ``labels.AoiBuildings``: ``geojson``, ``centroids``, ``count``): outlines up to
    ``max_drawn`` (default ``MAX_DRAWN_BUILDINGS``) buildings, else a density grid; ``.mode`` and ``.message`` say
    which (the page shows it)."""
    max_drawn = MAX_DRAWN_BUILDINGS if max_drawn is None else max_drawn
    n = buildings.count
    if n <= max_drawn:
        return BuildingsLayer(buildings.geojson, "outlines", n, f"{n:,} buildings drawn as outlines.")
    data, cell_m = density_geojson(buildings.centroids)
    msg = (f"{n:,} buildings: more than the map draws quickly ({max_drawn:,}), so they are drawn as a density grid "
           f"(cells of ~{cell_m:,.0f} m, darker = more buildings); pick a tile to see its outlines.")
    return BuildingsLayer(data, "density", n, msg)
