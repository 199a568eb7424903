"""bdcore.viz without Streamlit: offline map HTML, tile lookup, overlays pixel by pixel, figure traces."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon, box

from bdcore import viz


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
    dest = viz.ensure_leaflet_assets(tmp_path)
    assert dest == tmp_path / "leaflet"
    src = viz.leaflet_source_dir()
    assert (dest / "leaflet.js").read_bytes() == (src / "leaflet.js").read_bytes()
    assert (dest / "leaflet.css").stat().st_size == (src / "leaflet.css").stat().st_size
    assert (dest / "images" / "marker-icon.png").is_file()
    # idempotent, and repairs a truncated copy
    (dest / "leaflet.js").write_bytes(b"x")
    viz.ensure_leaflet_assets(tmp_path)
    assert (dest / "leaflet.js").read_bytes() == (src / "leaflet.js").read_bytes()


@pytest.mark.parametrize("color_by", ["n_buildings", "split", "value"])
def test_tile_map_has_no_cdn_assets_and_one_feature_per_tile(color_by):
    cat = grid_catalog()
    splits = {t: ("val" if i % 4 == 0 else "train") for i, t in enumerate(cat.index)}
    values = {t: i / 12 for i, t in enumerate(cat.index)}
    m = viz.tile_map(cat, color_by=color_by, splits=splits, values=values)
    html = viz.map_html(m)
    urls = asset_urls(html)
    assert viz.LEAFLET_JS_URL in urls and viz.LEAFLET_CSS_URL in urls
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
    m = viz.tile_map(cat, color_by="split", splits=splits)
    feats = {f["properties"]["tile_id"]: f["properties"] for f in next(
        c for c in m._children.values() if type(c).__name__ == "GeoJson").data["features"]}
    assert feats["img2"]["fill"] == viz.SPLIT_COLORS["val"]
    assert feats["img1"]["fill"] == viz.SPLIT_COLORS["train"]
    assert viz.count_color(0, 10) == viz.COUNT_PALETTE[0]
    assert viz.count_color(10, 10) == viz.COUNT_PALETTE[-1]
    assert viz.f1_color(0.0) == viz.F1_PALETTE[0] and viz.f1_color(1.0) == viz.F1_PALETTE[-1]
    assert viz.f1_color(float("nan")) == "#999999"
    with pytest.raises(ValueError, match="color_by"):
        viz.tile_map(cat, color_by="bogus")


def test_osm_layer_is_optional():
    cat = grid_catalog()
    assert "openstreetmap" not in viz.map_html(viz.tile_map(cat)).lower()
    html = viz.map_html(viz.tile_map(cat, osm=True))
    assert "tile.openstreetmap.org" in html
    assert not [u for u in asset_urls(html) if u.startswith("http")]


def test_tile_at_finds_clicked_tile():
    cat = grid_catalog()
    # centre of img6 (row 1, col 1)
    assert viz.tile_at(cat, lat=48.85 + 0.003, lng=2.30 + 0.003) == "img6"
    assert viz.tile_at(cat, lat=48.85 + 0.001, lng=2.30 + 0.007) == "img4"
    assert viz.tile_at(cat, lat=10.0, lng=10.0) is None
    assert viz.tile_at(cat, None, None) is None
    assert viz.tile_from_tooltip("tile img11\nbuildings 3", cat.index) == "img11"
    assert viz.tile_from_tooltip("nothing", cat.index) is None


def test_selection_layer_counts_paths():
    cat = grid_catalog()
    b = gpd.GeoDataFrame(geometry=[box(2.3001, 48.8501, 2.3003, 48.8503), box(2.3005, 48.8505, 2.3007, 48.8507)], crs=4326)
    fg = viz.selection_layer(cat.geometry.iloc[0], b)
    layers = list(fg._children.values())
    assert len(layers) == 2
    assert len(json.loads(b.to_json())["features"]) == 2
    assert len(viz.selection_layer(cat.geometry.iloc[0], None)._children) == 1


def test_polygons_map_offline():
    gdf = gpd.GeoDataFrame({"confidence": [0.9]}, geometry=[box(2.3, 48.85, 2.301, 48.851)], crs=4326)
    html = viz.map_html(viz.polygons_map(gdf))
    assert not [u for u in asset_urls(html) if "cdn" in u or u.startswith("http")]
    with pytest.raises(ValueError, match="no polygons"):
        viz.polygons_map(gdf.iloc[:0])


def test_draw_outlines_pixel_exact():
    rgb = np.zeros((20, 20, 3), np.uint8)
    # pixel-coordinate square covering pixels 5..9 (corners at pixel edges 5.0 and 10.0)
    out = viz.draw_outlines(rgb, [Polygon([(5, 5), (10, 5), (10, 10), (5, 10)])], color=(255, 0, 0), thickness=1)
    assert rgb.sum() == 0  # input untouched
    red = (out[..., 0] == 255) & (out[..., 1] == 0)
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 10, 5, 10)
    assert not red[7, 7]  # outline only, interior untouched
    assert red.sum() == 20  # a 6x6 ring of 1-px line
    with pytest.raises(ValueError, match="H,W,3"):
        viz.draw_outlines(np.zeros((3, 4, 4), np.uint8), [])


def test_mask_overlay_blends_only_mask():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 2] = 1
    out = viz.mask_overlay(rgb, mask, color=(200, 0, 0), alpha=0.5)
    assert out[1, 2].tolist() == [150, 50, 50]
    assert (out[0, 0] == 100).all() and out.dtype == np.uint8
    with pytest.raises(ValueError, match="does not match"):
        viz.mask_overlay(rgb, np.zeros((3, 3)))


def test_match_overlay_colours_tp_fp_fn():
    rgb = np.zeros((60, 60, 3), np.uint8)
    sq = lambda x, y: Polygon([(x, y), (x + 8, y), (x + 8, y + 8), (x, y + 8)])
    truth = [sq(5, 5), sq(30, 30)]            # truth 0 matched, truth 1 missed
    props = [sq(45, 5), sq(5, 5)]              # prop 1 matched, prop 0 false positive
    # real scoring output: (proposal_index, truth_index, iou)
    from bdcore.metrics.scoring import match_buildings
    matches = match_buildings(truth, props)["matches"]
    assert [(p, t) for p, t, _ in matches] == [(1, 0)]
    out = viz.match_overlay(rgb, truth, props, matches=matches, thickness=1)
    assert tuple(out[5, 8]) == viz.TP_RGB
    assert tuple(out[30, 33]) == viz.FN_RGB
    assert tuple(out[5, 48]) == viz.FP_RGB
    assert viz.match_sets([{"truth": 1, "prop": 0}], 2, 2) == ({1}, {0})


def test_figures_traces():
    cat = grid_catalog()
    fig = viz.buildings_per_tile_fig(cat)
    assert len(fig.data) == 1 and list(fig.data[0].x) == cat["n_buildings"].tolist()
    areas = np.array([10.0, 100.0, 1000.0, 0.0])
    fig = viz.building_area_fig(areas)
    np.testing.assert_allclose(fig.data[0].x, [1.0, 2.0, 3.0])  # log10, zero dropped
    arr = np.stack([np.full((5, 5), 3, np.uint16), np.arange(25, dtype=np.uint16).reshape(5, 5)])
    fig = viz.band_histogram_fig(arr, ["red", "green"], bins=5)
    assert [t.name for t in fig.data] == ["red", "green"]
    assert sum(fig.data[0].y) == 25 and sum(fig.data[1].y) == 25
    b = gpd.GeoDataFrame(geometry=[box(2.3, 48.85, 2.3001, 48.8501)], crs=4326)
    a = viz.building_areas_m2(b)
    assert 70 < a[0] < 90  # ~7.3 m x 11.1 m


def test_training_curves_fig():
    metrics = [
        {"kind": "step", "epoch": 0, "step": 1, "loss": 0.9},
        {"kind": "step", "epoch": 0, "step": 2, "loss": 0.8},
        {"kind": "epoch", "epoch": 0, "step": 2, "loss": 0.85, "val_loss": 0.7, "val_iou": 0.3, "val_f1": 0.4},
        {"kind": "step", "epoch": 1, "step": 3, "loss": 0.6},
    ]
    fig = viz.training_curves_fig(metrics)
    by = {t.name: t for t in fig.data}
    assert list(by["train loss"].x) == [1, 2, 3] and list(by["train loss"].y) == [0.9, 0.8, 0.6]
    assert list(by["val IoU"].y) == [0.3] and list(by["val F1"].x) == [2] and list(by["val loss"].y) == [0.7]
    assert len(viz.training_curves_fig([]).data) == 4


def test_unlabelled_tiles_are_grey_dashed_and_not_counted_as_empty():
    cat = grid_catalog()
    cat["n_buildings"] = pd.array([None, *cat["n_buildings"].tolist()[1:]], dtype="Int64")  # img1: no labels file
    for color_by in ("n_buildings", "split"):
        m = viz.tile_map(cat, color_by=color_by, splits={t: "train" for t in cat.index[1:]})
        feats = {f["properties"]["tile_id"]: f["properties"] for f in next(
            c for c in m._children.values() if type(c).__name__ == "GeoJson").data["features"]}
        assert feats["img1"]["buildings"] == viz.UNLABELLED and feats["img1"]["n_buildings"] is None
        assert feats["img1"]["fill"] == viz.UNLABELLED_COLOR and feats["img1"]["dash"]
        assert feats["img2"]["buildings"] == "1" and feats["img2"]["fill"] != viz.UNLABELLED_COLOR
        assert feats["img2"]["dash"] is None
        if color_by == "split":
            assert feats["img1"]["value"] == viz.UNLABELLED and feats["img2"]["value"] == "train"
    assert viz.count_color(None, 10) == viz.UNLABELLED_COLOR
    fig = viz.buildings_per_tile_fig(cat)
    assert len(fig.data[0].x) == len(cat) - 1 and "1 unlabelled left out" in fig.layout.title.text
