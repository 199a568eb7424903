"""Benchmark: the Explore map of the real SpaceNet 2 Paris footprints (1,148 tiles). Prints JSON.

- ``build_s``: server side, GeoDataFrame → folium map (one simplified GeoJSON layer) → rendered HTML.
- ``browser_s``: Debian chromium opens that HTML (Leaflet served locally, as in the app) until all footprint
  polygons (``path.leaflet-interactive``) are in the DOM.
- ``buildings``: the same map with every building of a SYNTHETIC AOI on top (``--buildings``, default 25,000 over
  the 1,148 tiles; rotated rectangles of 6-20 m on a jittered grid, written as labels GeoJSON files without imagery),
  once under the draw budget (outlines) and once above it (``--fallback-buildings``, ~150,000 like Vegas: the
  density grid). ``cold_s``: first read of the labels files into the cache; ``server_s``: cached buildings ->
  layer -> full HTML (tiles + buildings), what each page view pays; ``browser_s``: until the canvas has painted
  every feature (``window.__bdcoreDrawn``). ``st_folium_s``: the app's path instead of the full HTML (cached
  buildings -> layer -> the script streamlit-folium sends).

Usage: python bench/map_render.py [--index PATH] [--repeat 3] [--buildings 25000] [--fallback-buildings 150000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from bdcore.data.labels import aoi_buildings
from bdcore.viz.leaflet import ensure_leaflet_assets
from bdcore.viz.maps import MAX_DRAWN_BUILDINGS, buildings_layer, map_html, tile_map

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_INDEX = ROOT.parent / "shared" / "data" / "tile_index" / "AOI_3_Paris_Train_Tindex.geojson"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def load_index(path: Path):
    import geopandas as gpd

    gdf = gpd.read_file(path).to_crs(4326)
    gdf["tile_id"] = gdf["location"].map(lambda s: re.search(r"(img\d+)", s).group(1))
    gdf["n_buildings"] = 0
    return gdf.set_index("tile_id", drop=False)


def synthetic_labels(tiles, per_tile: int, dest: Path, seed: int = 0):
    """SYNTHETIC buildings: ``per_tile`` rotated rectangles (6-20 m) on a jittered grid inside each tile footprint,
    one labels GeoJSON per tile in ``dest``; returns ``tiles`` with ``labels`` and ``n_buildings`` set."""
    rng = np.random.default_rng(seed)
    tiles = tiles.copy()
    side = int(np.ceil(np.sqrt(per_tile)))
    paths, counts = [], []
    for tid, geom in zip(tiles.index, tiles.geometry):
        x0, y0, x1, y1 = geom.bounds
        cells = rng.choice(side * side, per_tile, replace=False)
        cx = x0 + (cells % side + 0.5 + rng.uniform(-0.2, 0.2, per_tile)) * (x1 - x0) / side
        cy = y0 + (cells // side + 0.5 + rng.uniform(-0.2, 0.2, per_tile)) * (y1 - y0) / side
        feats = []
        for x, y, w, h, a in zip(cx, cy, rng.uniform(6, 20, per_tile), rng.uniform(6, 20, per_tile),
                                 rng.uniform(0, 90, per_tile)):
            r = shapely.affinity.rotate(shapely.box(-w / 2, -h / 2, w / 2, h / 2), a)
            r = shapely.affinity.scale(r, 1 / 73_000, 1 / 111_000, origin=(0, 0))  # metres -> degrees near 49 N
            r = shapely.affinity.translate(r, x, y)
            feats.append({"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(r)})
        path = dest / f"buildings_{tid}.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        paths.append(str(path))
        counts.append(per_tile)
    tiles["labels"], tiles["n_buildings"] = paths, counts
    return tiles


def launch(p):
    return p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS + ["--allow-file-access-from-files"])


def browser_times(b, page: Path, ready_js: str, repeat: int) -> list[float]:
    """Seconds from ``goto`` until ``ready_js`` is true, ``repeat`` times (fresh page each)."""
    times = []
    for _ in range(repeat):
        pg = b.new_page(viewport={"width": 1200, "height": 800})
        t0 = time.perf_counter()
        pg.goto(page.as_uri())
        pg.wait_for_function(ready_js, timeout=120000, polling=20)
        times.append(time.perf_counter() - t0)
        pg.close()
    return times


def local_page(html: str, tmp: Path, static: Path, name: str) -> Path:
    page = tmp / name
    page.write_text(html.replace("/app/static/leaflet/", static.as_uri() + "/"))
    return page


def buildings_case(b, tiles, n: int, tmp: Path, static: Path, repeat: int,
                   max_drawn: int = MAX_DRAWN_BUILDINGS) -> dict:
    """Synthetic AOI of ``n`` buildings over ``tiles``: cold cache, warm server build, browser until drawn."""
    import os

    per_tile = max(1, round(n / len(tiles)))
    folder = tmp / f"aoi_{n}"
    folder.mkdir()
    os.environ["BDCORE_CACHE_DIR"] = str(tmp / f"cache_{n}")
    cat = synthetic_labels(tiles, per_tile, folder)
    t0 = time.perf_counter()
    first = aoi_buildings(cat)
    cold = time.perf_counter() - t0
    builds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        layer = buildings_layer(aoi_buildings(cat), max_drawn)
        m = tile_map(cat)
        layer.add_to(m)
        html = map_html(m)
        builds.append(time.perf_counter() - t0)
    app = []  # the app's own path: st_folium sends the map's script, not folium's full page
    get_script = getattr(importlib.import_module("streamlit_folium"), "_get_map_string", None)
    for _ in range(repeat if get_script else 0):
        t0 = time.perf_counter()
        m = tile_map(cat)
        buildings_layer(aoi_buildings(cat), max_drawn).add_to(m)
        get_script(m)
        app.append(time.perf_counter() - t0)
    page = local_page(html, tmp, static, f"buildings_{n}.html")
    times = browser_times(b, page, f"window.__bdcoreDrawn !== undefined", repeat)
    pg = b.new_page(viewport={"width": 1200, "height": 800})
    pg.goto(page.as_uri())
    pg.wait_for_function("window.__bdcoreDrawn !== undefined", timeout=120000)
    drawn = pg.evaluate("window.__bdcoreDrawn")
    pg.screenshot(path=str(tmp / f"buildings_{n}.png"))
    pg.close()
    return {"synthetic": True, "tiles": len(cat), "buildings": first.count, "mode": layer.mode,
            "features_drawn": drawn, "html_bytes": len(html), "cold_s": round(cold, 3),
            "server_s": round(min(builds), 3), "server_s_all": [round(x, 3) for x in builds],
            "st_folium_s": round(min(app), 3) if app else None,
            "browser_s": round(min(times), 3), "browser_s_all": [round(x, 3) for x in times],
            "max_drawn": max_drawn, "ok": min(builds) < 1.0 and min(times) < 2.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--buildings", type=int, default=25_000, help="synthetic buildings drawn as outlines (0: skip)")
    ap.add_argument("--fallback-buildings", type=int, default=150_000,
                    help="synthetic buildings above the budget: the density grid (0: skip)")
    ap.add_argument("--max-drawn", type=int, default=MAX_DRAWN_BUILDINGS,
                    help="the draw budget (to measure where outlines get too slow)")
    ap.add_argument("--screenshots", type=Path, default=None, help="copy the buildings maps' screenshots here")
    args = ap.parse_args()
    gdf = load_index(args.index)
    builds = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        html = map_html(tile_map(gdf))
        builds.append(time.perf_counter() - t0)

    out = {"tiles": len(gdf), "html_bytes": len(html), "build_s": round(min(builds), 3),
           "build_s_all": [round(b, 3) for b in builds]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        static = ensure_leaflet_assets(tmp / "static")
        page = local_page(html, tmp, static, "map.html")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = launch(p)
            times = browser_times(b, page, "document.querySelectorAll('path.leaflet-interactive').length >= "
                                  f"{len(gdf)}", args.repeat)
            pg = b.new_page()
            pg.goto(page.as_uri())
            out["paths_in_dom"] = pg.locator("path.leaflet-interactive").count()
            pg.close()
            out.update(browser_s=round(min(times), 3), browser_s_all=[round(t, 3) for t in times], goal_s=2.0)
            out["ok"] = out["build_s"] + out["browser_s"] < out["goal_s"]
            for key, n in (("buildings", args.buildings), ("fallback", args.fallback_buildings)):
                if n > 0:
                    out[key] = buildings_case(b, gdf, n, tmp, static, args.repeat, args.max_drawn)
                    if args.screenshots:
                        args.screenshots.mkdir(parents=True, exist_ok=True)
                        (args.screenshots / f"buildings_{n}.png").write_bytes((tmp / f"buildings_{n}.png").read_bytes())
            b.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
