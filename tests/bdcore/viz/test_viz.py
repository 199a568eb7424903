"""bdcore.viz without Streamlit: offline map HTML, tile lookup, overlays pixel by pixel, figure traces."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon, box

from bdcore.metrics.scoring import TileScore, match_buildings
from bdcore.viz import figures, leaflet, maps, overlays


def grid_catalog(nx=4, ny=3, size=0.002, x0=2.30, y0=48.85):
    rows = []
    for j in range(ny):
        for i in range(nx):
            rows.append({"tile_id": f"img{j * nx + i + 1}", "n_buildings": (j * nx + i) % 5,
                         "geometry": box(x0 + i * size, y0 + j * size, x0 + (i + 1) * size, y0 + (j + 1) * size)})
    return gpd.GeoDataFrame(rows, crs="EPSG:4326").set_index("tile_id", drop=False)


ASSET_RE = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=[\"']([^\"']+)[\"']", re.I)


def asset_urls(html: str) -> list[str]:
    return ASSET_RE.findall(html)


def test_ensure_leaflet_assets_copies_js_css_images(tmp_path):
    dest = leaflet.ensure_leaflet_assets(tmp_path)
    assert dest == tmp_path / "leaflet"
    src = leaflet.leaflet_source_dir()
    assert (dest / "leaflet.js").read_bytes() == (src / "leaflet.js").read_bytes()
    assert (dest / "leaflet.css").stat().st_size == (src / "leaflet.css").stat().st_size
    assert (dest / "images" / "marker-icon.png").is_file()
    # idempotent, and repairs a truncated copy
    (dest / "leaflet.js").write_bytes(b"x")
    leaflet.ensure_leaflet_assets(tmp_path)
    assert (dest / "leaflet.js").read_bytes() == (src / "leaflet.js").read_bytes()


@pytest.mark.parametrize("color_by", ["n_buildings", "split", "value"])
def test_tile_map_has_no_cdn_assets_and_one_feature_per_tile(color_by):
    cat = grid_catalog()
    splits = {t: ("val" if i % 4 == 0 else "train") for i, t in enumerate(cat.index)}
    values = {t: i / 12 for i, t in enumerate(cat.index)}
    m = maps.tile_map(cat, color_by=color_by, splits=splits, values=values)
    html = maps.map_html(m)
    urls = asset_urls(html)
    assert leaflet.LEAFLET_JS_URL in urls and leaflet.LEAFLET_CSS_URL in urls
    offending = [u for u in urls if "cdn" in u.lower() or u.startswith(("http://", "https://", "//"))]
    assert offending == []
    # exactly one GeoJSON layer carrying every tile
    geojsons = [c for c in m._children.values() if type(c).__name__ == "GeoJson"]
    assert len(geojsons) == 1
    feats = geojsons[0].data["features"]
    assert sorted(f["properties"]["tile_id"] for f in feats) == sorted(cat.index)


def test_tile_map_colours():
    cat = grid_catalog()
    splits = {t: "val" if t == "img2" else "train" for t in cat.index}
    m = maps.tile_map(cat, color_by="split", splits=splits)
    feats = {f["properties"]["tile_id"]: f["properties"] for f in next(
        c for c in m._children.values() if type(c).__name__ == "GeoJson").data["features"]}
    assert feats["img2"]["fill"] == maps.SPLIT_COLORS["val"]
    assert feats["img1"]["fill"] == maps.SPLIT_COLORS["train"]
    assert maps.count_color(0, 10) == maps.COUNT_PALETTE[0]
    assert maps.count_color(10, 10) == maps.COUNT_PALETTE[-1]
    assert maps.f1_color(0.0) == maps.F1_PALETTE[0] and maps.f1_color(1.0) == maps.F1_PALETTE[-1]
    assert maps.f1_color(float("nan")) == "#999999"
    with pytest.raises(ValueError, match="color_by"):
        maps.tile_map(cat, color_by="bogus")


def test_osm_layer_is_optional():
    cat = grid_catalog()
    assert "openstreetmap" not in maps.map_html(maps.tile_map(cat)).lower()
    html = maps.map_html(maps.tile_map(cat, osm=True))
    assert "tile.openstreetmap.org" in html
    assert not [u for u in asset_urls(html) if u.startswith("http")]


def test_tile_at_finds_clicked_tile():
    cat = grid_catalog()
    # centre of img6 (row 1, col 1)
    assert maps.tile_at(cat, lat=48.85 + 0.003, lng=2.30 + 0.003) == "img6"
    assert maps.tile_at(cat, lat=48.85 + 0.001, lng=2.30 + 0.007) == "img4"
    assert maps.tile_at(cat, lat=10.0, lng=10.0) is None
    assert maps.tile_at(cat, None, None) is None
    assert maps.tile_from_tooltip("tile img11\nbuildings 3", cat.index) == "img11"
    assert maps.tile_from_tooltip("nothing", cat.index) is None


def test_selection_layer_counts_paths():
    cat = grid_catalog()
    b = gpd.GeoDataFrame(geometry=[box(2.3001, 48.8501, 2.3003, 48.8503), box(2.3005, 48.8505, 2.3007, 48.8507)], crs=4326)
    fg = maps.selection_layer(cat.geometry.iloc[0], b)
    layers = list(fg._children.values())
    assert len(layers) == 2
    assert len(json.loads(b.to_json())["features"]) == 2
    assert len(maps.selection_layer(cat.geometry.iloc[0], None)._children) == 1


def test_polygons_map_offline():
    gdf = gpd.GeoDataFrame({"confidence": [0.9]}, geometry=[box(2.3, 48.85, 2.301, 48.851)], crs=4326)
    html = maps.map_html(maps.polygons_map(gdf))
    assert not [u for u in asset_urls(html) if "cdn" in u or u.startswith("http")]
    with pytest.raises(ValueError, match="no polygons"):
        maps.polygons_map(gdf.iloc[:0])


def test_draw_outlines_pixel_exact():
    rgb = np.zeros((20, 20, 3), np.uint8)
    # pixel-coordinate square covering pixels 5..9 (corners at pixel edges 5.0 and 10.0)
    out = overlays.draw_outlines(rgb, [Polygon([(5, 5), (10, 5), (10, 10), (5, 10)])], color=(255, 0, 0), thickness=1)
    assert rgb.sum() == 0  # input untouched
    red = (out[..., 0] == 255) & (out[..., 1] == 0)
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 10, 5, 10)
    assert not red[7, 7]  # outline only, interior untouched
    assert red.sum() == 20  # a 6x6 ring of 1-px line
    with pytest.raises(ValueError, match="H,W,3"):
        overlays.draw_outlines(np.zeros((3, 4, 4), np.uint8), [])


def test_mask_overlay_blends_only_mask():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 2] = 1
    out = overlays.mask_overlay(rgb, mask, color=(200, 0, 0), alpha=0.5)
    assert out[1, 2].tolist() == [150, 50, 50]
    assert (out[0, 0] == 100).all() and out.dtype == np.uint8
    with pytest.raises(ValueError, match="does not match"):
        overlays.mask_overlay(rgb, np.zeros((3, 3)))


def _sq(x, y, side=8):
    return Polygon([(x, y), (x + side, y), (x + side, y + side), (x, y + side)])


def test_match_overlay_colours_tp_fp_fn():
    rgb = np.zeros((60, 60, 3), np.uint8)
    out = overlays.match_overlay(rgb, tp=[_sq(5, 5)], fp=[_sq(45, 5)], fn=[_sq(30, 30)], thickness=1)
    assert tuple(out[5, 8]) == overlays.TP_RGB
    assert tuple(out[30, 33]) == overlays.FN_RGB
    assert tuple(out[5, 48]) == overlays.FP_RGB


def _score(truth, proposals, shape=(60, 60)) -> TileScore:
    from bdcore.metrics.polygons import polygons_to_mask

    pred = polygons_to_mask([p for p, _ in proposals], shape).astype(bool)
    return TileScore.of(pred, polygons_to_mask(truth, shape), truth, proposals, min_area=20.0)


def test_review_images_draw_the_score_as_scored():
    """The picture's TP/FP/FN are the score row's, also where matching by file order or drawing every polygon
    would not be: a tiny truth (under min_area, not scored) and a proposal of exactly min_area (not scored)."""
    truth = [_sq(5, 5), _sq(30, 30), _sq(50, 50, side=3)]         # matched, missed, too small to score (9 px²)
    props = [(_sq(45, 5), 0.6), (_sq(5, 5), 0.9), (Polygon([(2, 40), (7, 40), (7, 44), (2, 44)]), 0.7)]  # FP, TP, 20 px²
    score = _score(truth, props)
    row = score.row()
    assert (row["tp"], row["fp"], row["fn"], row["n_truth"], row["n_pred"]) == (1, 1, 1, 3, 3)
    image = np.full((3, 60, 60), 500, np.uint16)
    views = overlays.review_images(image, score)
    assert views.drawn == {"tp": row["tp"], "fp": row["fp"], "fn": row["fn"]}
    assert tuple(views.matches[5, 8]) == overlays.TP_RGB and tuple(views.matches[5, 48]) == overlays.FP_RGB
    assert tuple(views.matches[30, 33]) == overlays.FN_RGB
    assert tuple(views.matches[50, 51]) != overlays.FN_RGB and tuple(views.matches[40, 4]) != overlays.FP_RGB
    assert tuple(views.truth[50, 51]) == overlays.TRUTH_RGB  # every truth outline in the truth view
    assert views.image.shape == (60, 60, 3) and views.prediction.shape == (60, 60, 3)
    # the old picture matched polygons itself and drew every unmatched one: 2 FN, 2 FP for this same tile
    old = match_buildings(truth, [p for p, _ in props])
    assert len(truth) - len(old["matches"]) == 2 and len(props) - len(old["matches"]) == 2


def test_tile_preview_bands_and_outlines():
    arr = np.stack([np.arange(400, dtype=np.uint16).reshape(20, 20)] * 4)
    rgb = overlays.tile_preview(arr, [_sq(2, 2)], bands=(3, 1, 0))
    assert rgb.shape == (20, 20, 3) and tuple(rgb[2, 5]) == overlays.TRUTH_RGB
    with pytest.raises(ValueError, match=r"t.tif has 4 bands; band 5 does not exist. Fix: pick bands 1-4"):
        overlays.tile_preview(arr, bands=(4, 1, 0), name="t.tif")
    assert overlays.tile_preview(arr[:1], bands=(4, 1, 0)).shape == (20, 20, 3)  # one band: grey whatever asked


def test_bounds_4326_from_a_profile():
    from rasterio.crs import CRS

    prof = {"crs": CRS.from_epsg(32611), "bounds": (660000.0, 3999700.0, 660300.0, 4000000.0)}
    minx, miny, maxx, maxy = maps.bounds_4326(prof)
    assert -116 < minx < maxx < -114 and 35 < miny < maxy < 37
    assert maps.bounds_4326({"crs": None, "bounds": (0, 0, 1, 1)}) is None


def test_sample_label_paths():
    cat = grid_catalog()
    cat["labels"] = [f"/x/{t}.geojson" if i % 3 else None for i, t in enumerate(cat.index)]
    assert figures.sample_label_paths(cat) == list(cat["labels"].dropna())
    some = figures.sample_label_paths(cat, max_tiles=3, seed=1)
    assert len(some) == 3 and set(some) <= set(cat["labels"].dropna())
    assert figures.sample_label_paths(cat.drop(columns="labels")) == []


def test_figures_traces():
    cat = grid_catalog()
    fig = figures.buildings_per_tile_fig(cat)
    assert len(fig.data) == 1 and list(fig.data[0].x) == cat["n_buildings"].tolist()
    areas = np.array([10.0, 100.0, 1000.0, 0.0])
    fig = figures.building_area_fig(areas)
    np.testing.assert_allclose(fig.data[0].x, [1.0, 2.0, 3.0])  # log10, zero dropped
    arr = np.stack([np.full((5, 5), 3, np.uint16), np.arange(25, dtype=np.uint16).reshape(5, 5)])
    fig = figures.band_histogram_fig(arr, ["red", "green"], bins=5)
    assert [t.name for t in fig.data] == ["red", "green"]
    assert sum(fig.data[0].y) == 25 and sum(fig.data[1].y) == 25
    b = gpd.GeoDataFrame(geometry=[box(2.3, 48.85, 2.3001, 48.8501)], crs=4326)
    a = figures.building_areas_m2(b)
    assert 70 < a[0] < 90  # ~7.3 m x 11.1 m


def test_training_curves_fig():
    metrics = [
        {"kind": "step", "epoch": 0, "step": 1, "loss": 0.9},
        {"kind": "step", "epoch": 0, "step": 2, "loss": 0.8},
        {"kind": "epoch", "epoch": 0, "step": 2, "loss": 0.85, "val_loss": 0.7, "val_iou": 0.3, "val_f1": 0.4},
        {"kind": "step", "epoch": 1, "step": 3, "loss": 0.6},
    ]
    fig = figures.training_curves_fig(metrics)
    by = {t.name: t for t in fig.data}
    assert list(by["train loss"].x) == [1, 2, 3] and list(by["train loss"].y) == [0.9, 0.8, 0.6]
    assert list(by["val IoU"].y) == [0.3] and list(by["val F1"].x) == [2] and list(by["val loss"].y) == [0.7]
    assert len(figures.training_curves_fig([]).data) == 4



def test_compare_curves_fig_one_trace_per_run_per_panel():
    from bdcore.engine.compare import RunCurves

    def run(run_id, label, losses, ious):
        train = pd.DataFrame({"epoch": [0.5, 1.0], "wall_s": [5.0, 10.0], "loss": losses})
        val = pd.DataFrame({"epoch": [1.0], "wall_s": [12.0], "val_iou": ious, "val_f1": [float("nan")]})
        return RunCurves(run_id, label, train, val)

    curves = [run("a", "a (lr=0.001)", [0.9, 0.7], [0.3]), run("b", "b (lr=0.01)", [0.8, 0.5], [0.4]),
              RunCurves("c", "c (lr=0.1)", pd.DataFrame(columns=["epoch", "wall_s", "loss"]),
                        pd.DataFrame(columns=["epoch", "wall_s", "val_iou", "val_f1"]))]  # no metrics yet
    fig = figures.compare_curves_fig(curves)
    panels = {axis: [t for t in fig.data if t.xaxis == axis] for axis in ("x", "x2", "x3")}
    assert [len(p) for p in panels.values()] == [3, 3, 3]
    assert [t.name for t in panels["x"]] == ["a (lr=0.001)", "b (lr=0.01)", "c (lr=0.1)"]
    assert [t.showlegend for t in fig.data].count(True) == 3  # one legend entry per run
    assert list(panels["x"][1].x) == [0.5, 1.0] and list(panels["x"][1].y) == [0.8, 0.5]
    assert list(panels["x2"][0].y) == [0.3] and list(panels["x3"][0].y) == []  # a NaN F1 is no point
    assert panels["x"][0].line.color == panels["x3"][0].line.color != panels["x"][1].line.color
    walled = figures.compare_curves_fig(curves, x="wall_s")
    assert list(walled.data[0].x) == [5.0, 10.0] and walled.layout.xaxis.title.text == "wall time (s)"
    with pytest.raises(ValueError, match="epoch, wall_s"):
        figures.compare_curves_fig(curves, x="step")

def test_unlabelled_tiles_are_grey_dashed_and_not_counted_as_empty():
    cat = grid_catalog()
    cat["n_buildings"] = pd.array([None, *cat["n_buildings"].tolist()[1:]], dtype="Int64")  # img1: no labels file
    for color_by in ("n_buildings", "split"):
        m = maps.tile_map(cat, color_by=color_by, splits={t: "train" for t in cat.index[1:]})
        feats = {f["properties"]["tile_id"]: f["properties"] for f in next(
            c for c in m._children.values() if type(c).__name__ == "GeoJson").data["features"]}
        assert feats["img1"]["buildings"] == maps.UNLABELLED and feats["img1"]["n_buildings"] is None
        assert feats["img1"]["fill"] == maps.UNLABELLED_COLOR and feats["img1"]["dash"]
        assert feats["img2"]["buildings"] == "1" and feats["img2"]["fill"] != maps.UNLABELLED_COLOR
        assert feats["img2"]["dash"] is None
        if color_by == "split":
            assert feats["img1"]["value"] == maps.UNLABELLED and feats["img2"]["value"] == "train"
    assert maps.count_color(None, 10) == maps.UNLABELLED_COLOR
    fig = figures.buildings_per_tile_fig(cat)
    assert len(fig.data[0].x) == len(cat) - 1 and "1 unlabelled left out" in fig.layout.title.text


def _aoi(n: int, seed: int = 0):
    """``n`` small square buildings spread over ~1 km, as ``labels.AoiBuildings``."""
    import shapely

    from bdcore.data.labels import AoiBuildings

    xy = np.random.default_rng(seed).uniform(0, 0.01, (n, 2)) + (2.30, 48.85)
    geoms = [box(x, y, x + 1e-4, y + 1e-4) for x, y in xy]
    text = json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": json.loads(shapely.to_geojson(g))} for g in geoms]})
    return AoiBuildings(text, xy + 5e-5)


def test_buildings_layer_draws_every_building_as_one_canvas_layer():
    layer = maps.buildings_layer(_aoi(300), max_drawn=300)
    assert (layer.mode, layer.count, layer.message) == ("outlines", 300, "300 buildings drawn as outlines.")
    m = maps.tile_map(grid_catalog())
    layer.add_to(m)
    html = maps.map_html(m)
    assert asset_urls(html) == [leaflet.LEAFLET_JS_URL, leaflet.LEAFLET_CSS_URL]  # offline: no CDN
    script = html[html.index("L.geoJSON(", html.index("createPane")):]
    data = json.loads(script[len("L.geoJSON("):script.index(", {\n")])
    assert len(data["features"]) == 300
    assert "L.canvas(" in script and "window.__bdcoreDrawn = n" in script and '"outlines"' in script


def test_buildings_layer_falls_back_to_a_density_grid_above_the_budget(monkeypatch):
    aoi = _aoi(301)
    monkeypatch.setattr(maps, "MAX_DRAWN_BUILDINGS", 300)
    layer = maps.buildings_layer(aoi)
    assert layer.mode == "density" and layer.count == 301
    assert layer.message.startswith("301 buildings: more than the map draws quickly (300)")
    assert "density grid" in layer.message and "pick a tile to see its outlines" in layer.message
    cells = json.loads(layer.data)["features"]
    assert sum(f["properties"]["n"] for f in cells) == 301 and len(cells) <= maps.DENSITY_CELLS ** 2
    for f in cells[:20]:  # each cell holds the centroids it counts
        x0, y0 = f["geometry"]["coordinates"][0][0]
        x1, y1 = f["geometry"]["coordinates"][0][2]
        inside = ((aoi.centroids[:, 0] >= x0 - 1e-6) & (aoi.centroids[:, 0] < x1 + 1e-6)
                  & (aoi.centroids[:, 1] >= y0 - 1e-6) & (aoi.centroids[:, 1] < y1 + 1e-6))
        assert inside.sum() >= f["properties"]["n"]
