"""bdcore.viz.layers: the image as an offline PNG overlay (decimated for a big raster), building layers coloured
by status with popups, a layer control; and imagery.display_overview, the decimated read behind it."""

from __future__ import annotations

import base64
import re

import cv2
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import box

from bdcore.data import imagery
from bdcore.viz import layers, maps, overlays


def test_png_data_url_round_trips_the_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    url = layers.png_data_url(rgb)
    assert url.startswith("data:image/png;base64,")
    back = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(back[..., ::-1], rgb)
    with pytest.raises(ValueError, match="expected an"):
        layers.png_data_url(rgb[..., 0])



def test_image_overlay_strides_a_long_array_down_to_max_px():
    rgb = np.zeros((100, 5000, 3), np.uint8)
    url = layers.image_overlay(rgb, (0, 0, 1, 1), max_px=2048).url
    png = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[:2] == (34, 1667)  # every 3rd pixel: 5,000 / 3 <= 2,048


@pytest.fixture(scope="module")
def big_utm_tif(tmp_path_factory):
    """12,000 × 12,000 px, 3 bands, UTM 11N at 0.3 m (sparse, deflate: a few MB on disk, 864 MB as uint16): a
    bright 2,400 × 2,400 px block at the top-left corner (4 %: the 98th percentile) and a dim one in the middle."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    n = 12000
    t = Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0)
    with rasterio.Env(GDAL_CACHEMAX=32), rasterio.open(
            path, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint16", crs="EPSG:32611", transform=t,
            tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, BIGTIFF="YES") as dst:
        dst.write(np.full((3, 2400, 2400), 1800, np.uint16), window=Window(0, 0, 2400, 2400))
        dst.write(np.full((3, 512, 512), 300, np.uint16), window=Window(6000, 6000, 512, 512))
    return path


def test_big_raster_overview_is_decimated_and_placed_in_4326(big_utm_tif):
    rgb = imagery.display_overview(big_utm_tif, max_side=1000)
    assert rgb.dtype == np.uint8 and rgb.shape == (1000, 1000, 3)  # 12,000 px / 12: never the full raster
    assert rgb[:190, :190].min() == 255 and rgb[-40:, -40:].max() == 0  # the bright corner block, stretched
    assert np.all(np.abs(rgb[505:540, 505:540].astype(int) - 300 * 255 / 1800) <= 1)  # the dim block
    assert max(imagery.display_overview(big_utm_tif).shape[:2]) <= 2048  # the default max_side
    bounds = maps.bounds_4326(imagery.read_profile(big_utm_tif))
    minx, miny, maxx, maxy = bounds
    assert -115.23 < minx < maxx < -115.18 and 36.09 < miny < maxy < 36.14  # UTM 11N 660-663.6 km E, 4000 km N
    assert (maxx - minx) * 111_000 * np.cos(np.radians(36.1)) == pytest.approx(3600, rel=0.02)  # 12,000 × 0.3 m
    html = maps.map_html(layers.layered_map(bounds, rgb))
    assert f"[[{miny}, {minx}], [{maxy}, {maxx}]]" in html and "L.imageOverlay" in html
    assert len(html) < 2_000_000  # the PNG of the overview, not of 144 megapixels


def test_read_decimated_bands_and_errors(big_utm_tif, tmp_path):
    arr, nodata = imagery.read_decimated(big_utm_tif, 100, bands=[2])
    assert arr.shape == (1, 100, 100) and nodata is None
    bad = tmp_path / "not.tif"
    bad.write_text("hello")
    with pytest.raises(imagery.ImageryError, match="not.tif"):
        imagery.display_overview(bad)


def _buildings() -> gpd.GeoDataFrame:
    x, y = -115.30, 36.10
    rows = [("prediction", "TP", 0.81, 0.9), ("prediction", "FP", np.nan, 0.6), ("truth", "TP", 0.81, 0.9),
            ("truth", "FN", np.nan, np.nan)]
    geoms = [box(x + i * 1e-4, y, x + i * 1e-4 + 5e-5, y + 5e-5) for i in range(len(rows))]
    return gpd.GeoDataFrame({"layer": [r[0] for r in rows], "status": [r[1] for r in rows],
                             "iou": [r[2] for r in rows], "confidence": [r[3] for r in rows],
                             "area": [20.5, 30.0, 21.0, 40.2], "area_unit": "m²"}, geometry=geoms, crs=4326)


def test_review_map_layers_colours_and_popups():
    b = _buildings()
    rgb = np.zeros((20, 20, 3), np.uint8)
    m = layers.review_map(rgb, b.total_bounds, b)
    html = maps.map_html(m)
    assert "L.imageOverlay" in html and "data:image/png;base64," in html
    assert "L.control.layers" in html and '"ground truth"' in html and '"predictions"' in html
    assert "https://" not in "".join(re.findall(r"<(?:script|link)[^>]*>", html))  # offline: local Leaflet only
    table = layers.popup_table(b)
    assert table["status"].tolist() == ["TP", "FP", "TP", "FN"]
    assert table["IoU"].tolist() == ["0.810", "—", "0.810", "—"]
    assert table["confidence"].tolist() == ["0.90", "0.60", "0.90", "—"]
    assert table["area"].tolist() == ["20 m²", "30 m²", "21 m²", "40 m²"]
    # each building's colour is its status's: TP green, FP red, FN blue (the overlays' colours)
    assert layers.STATUS_COLORS["TP"] == "#{:02x}{:02x}{:02x}".format(*overlays.TP_RGB)
    for status in ("TP", "FP", "FN"):
        assert layers.STATUS_COLORS[status] in html
    assert html.count(".bindPopup(") == 2 and 'let fields = ["status", "IoU", "confidence", "area"];' in html


def test_prediction_map_without_status_or_area_computes_m2():
    b = _buildings()[["confidence", "geometry"]].iloc[:2]
    table = layers.popup_table(b)
    assert table["status"].tolist() == ["predicted"] * 2 and table["IoU"].tolist() == ["—", "—"]
    # 5e-5° × 5e-5° at 36.1° N: ~5.55 m × 4.49 m
    assert [float(a.split()[0]) for a in table["area"]] == pytest.approx([25, 25], abs=1)
    html = maps.map_html(layers.prediction_map(None, b.total_bounds, b))
    assert "L.imageOverlay" not in html and layers.PREDICTION_COLOR in html
