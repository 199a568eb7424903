"""The Review page's tile map in Debian chromium (Playwright) against `streamlit run app.py`: the stretched image as
an offline PNG layer under the truth and prediction layers (TP green / FP red / FN blue), a popup per building.

The run's predictions are written into its prediction cache (the truth, partly erased, plus a made-up building), so
the tile has TP, FP and FN without training a model. BDCORE_SCREENSHOTS=/some/folder saves a screenshot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

# the server helpers of the Chromium tests (importing them skips this module without chromium)
from browser_kit import SCREENS, assert_clean
from browser_kit import browser  # noqa: F401 (the fixture)
from browser_kit import streamlit_server as _streamlit

from bdcore.viz import layers

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VEGAS = ROOT / "tests" / "data" / "spacenet2_vegas"


def _cached_run(runs_dir: Path) -> Path:
    """A run on the Vegas sample whose best.pt 'predicted' the truth with the right part erased and one extra blob."""
    from synth import write_tiny_checkpoint

    from bdcore.data import labels
    from bdcore.data.catalog import load_catalog
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from bdcore.inference import evaluate

    cfg = RunConfig(data_root=str(VEGAS), encoder="resnet18", encoder_weights=None, crop_size=64)
    run_dir = runs.create_run(cfg, name="overlay", root=runs_dir)
    write_tiny_checkpoint(run_dir / "best.pt")
    cache = evaluate.prediction_dir(run_dir, "best")
    cache.mkdir(parents=True)
    for tid, row in load_catalog(VEGAS).iterrows():
        prob = labels.tile_mask(row["PS-RGB"], row["labels"])[0] * 230
        prob[:, prob.shape[1] * 2 // 3:] = 0  # missed: FN
        prob[5:40, 5:40] = 200  # made up: FP
        np.save(cache / f"{tid}.npy", prob[None].astype(np.uint8))
    return run_dir


@pytest.fixture(scope="module")
def server(_isolated_dirs):
    runs_dir = _isolated_dirs / "overlay-runs"
    _cached_run(runs_dir)
    with _streamlit(runs_dir, _isolated_dirs / "streamlit-overlay.log") as url:
        yield url


def _paths_by_colour(frame, timeout: float = 30) -> dict[str, int]:
    """{stroke colour: count} of the map's building paths, once they are drawn."""
    deadline = time.time() + timeout
    counts: dict[str, int] = {}
    while time.time() < deadline:
        strokes = frame.locator("path.leaflet-interactive").evaluate_all("ps => ps.map(p => p.getAttribute('stroke'))")
        counts = {c: strokes.count(c) for c in set(strokes)}
        if counts:
            return counts
        time.sleep(0.25)
    return counts


def test_review_tile_map_image_layers_and_popup(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(f"{server}/review")
        page.get_by_text("On the map").wait_for(timeout=180000)
        page.wait_for_selector('iframe[title="streamlit_folium.st_folium"] >> nth=1', timeout=60000)
        tile_map = page.frame_locator('iframe[title="streamlit_folium.st_folium"]').nth(1)
        tile_map.locator("img.leaflet-image-layer").wait_for(timeout=30000)
        img = tile_map.locator("img.leaflet-image-layer")
        assert img.count() == 1 and img.get_attribute("src").startswith("data:image/png;base64,")
        assert img.evaluate("e => e.naturalWidth") == 650  # the whole (small) tile, stretched
        counts = _paths_by_colour(tile_map)
        tp, fp, fn = (layers.STATUS_COLORS[s] for s in ("TP", "FP", "FN"))
        assert counts.get(tp, 0) >= 2 and counts.get(fp, 0) >= 1 and counts.get(fn, 0) >= 1, counts
        # the subheader's counts are the map's: TP (truth + prediction), FP, FN
        head = page.locator("h3").filter(has_text="TP ").first.inner_text()
        n = {k: int(head.split(f"{k} ")[1].split(",")[0].split(")")[0]) for k in ("TP", "FP", "FN")}
        assert (counts[tp], counts[fp], counts[fn]) == (2 * n["TP"], n["FP"], n["FN"]), (counts, head)
        assert [t.strip() for t in tile_map.locator(".leaflet-control-layers-overlays label").all_inner_texts()] == [
            "image", "ground truth", "predictions"]
        assert_clean(page)
        # click a matched prediction (solid green): its popup says its IoU, confidence and area
        pred_tp = tile_map.locator(f'path.leaflet-interactive[stroke="{tp}"]:not([stroke-dasharray])').first
        pred_tp.click(force=True)
        popup = tile_map.locator(".leaflet-popup-content")
        popup.wait_for(timeout=10000)
        text = popup.inner_text()
        assert "IoU" in text and "confidence" in text and "m²" in text, text
        iou = float(text.split("IoU")[1].split()[0])
        assert 0.5 < iou <= 1.0, text
        if SCREENS is not None:
            SCREENS.mkdir(parents=True, exist_ok=True)
            page.locator('iframe[title="streamlit_folium.st_folium"]').nth(1).scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENS / "review_tile_map.png"), full_page=True)
            page.locator('iframe[title="streamlit_folium.st_folium"]').nth(1).screenshot(
                path=str(SCREENS / "review_tile_map_only.png"))
        # toggle the predictions off: only the truth layer's paths stay
        tile_map.locator(".leaflet-control-layers-overlays label").nth(2).click()
        time.sleep(0.5)
        left = _paths_by_colour(tile_map)
        assert fp not in left and left.get(tp, 0) == n["TP"] and left.get(fn, 0) == n["FN"], left
    finally:
        page.close()


def test_predict_map_shows_the_image_under_the_predictions(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    try:
        page.goto(f"{server}/predict")
        page.get_by_text("Upload a GeoTIFF").first.wait_for(timeout=90000)
        page.locator('input[type="file"]').set_input_files(
            str(VEGAS / "PS-RGB" / "RGB-PanSharpen_AOI_2_Vegas_img1265.tif"))
        page.get_by_role("button", name="Run prediction").click()
        found = page.get_by_text("buildings found")
        found.wait_for(timeout=180000)
        n = int(found.inner_text().split()[0])
        page.wait_for_selector('iframe[title="streamlit_folium.st_folium"]', timeout=60000)
        pred_map = page.frame_locator('iframe[title="streamlit_folium.st_folium"]').first
        img = pred_map.locator("img.leaflet-image-layer")
        img.wait_for(timeout=30000)
        assert img.count() == 1 and img.evaluate("e => e.naturalWidth") == 650
        counts = _paths_by_colour(pred_map) if n else {}
        assert counts == ({layers.PREDICTION_COLOR: n} if n else {}), (counts, n)
        assert_clean(page)
        if SCREENS is not None:
            page.screenshot(path=str(SCREENS / "predict_map.png"), full_page=True)
    finally:
        page.close()
