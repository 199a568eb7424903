"""Benchmark: the Explore map of the real SpaceNet 2 Paris footprints (1,148 tiles). Prints JSON.

- ``build_s``: server side, GeoDataFrame → folium map (one simplified GeoJSON layer) → rendered HTML.
- ``browser_s``: Debian chromium opens that HTML (Leaflet served locally, as in the app) until all footprint
  polygons (``path.leaflet-interactive``) are in the DOM.

Usage: python bench/map_render.py [--index PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from bdcore.viz.leaflet import ensure_leaflet_assets
from bdcore.viz.maps import map_html, tile_map

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    ap.add_argument("--repeat", type=int, default=3)
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
        static = ensure_leaflet_assets(Path(tmp) / "static")
        page = Path(tmp) / "map.html"
        page.write_text(html.replace("/app/static/leaflet/", static.as_uri() + "/"))
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS + ["--allow-file-access-from-files"])
            times = []
            for _ in range(args.repeat):
                pg = b.new_page(viewport={"width": 1200, "height": 800})
                t0 = time.perf_counter()
                pg.goto(page.as_uri())
                pg.wait_for_function(f"document.querySelectorAll('path.leaflet-interactive').length >= {len(gdf)}",
                                     timeout=60000, polling=20)
                times.append(time.perf_counter() - t0)
                out["paths_in_dom"] = pg.locator("path.leaflet-interactive").count()
                pg.close()
            b.close()
    out.update(browser_s=round(min(times), 3), browser_s_all=[round(t, 3) for t in times], goal_s=2.0)
    out["ok"] = out["build_s"] + out["browser_s"] < out["goal_s"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
