"""Explore's 'Show every building' in Debian chromium (Playwright) against `streamlit run app.py`, on the demo AOI:
every building is drawn (canvas: counted by the layer's ``window.__bdcoreDrawn``, not by SVG paths) and a click
still reaches the tile footprint beneath. Screenshot saved when BDCORE_SCREENSHOTS names a folder."""

from __future__ import annotations

import contextlib
import time

import pytest
from browser_kit import SCREENS
from browser_kit import browser  # noqa: F401 (the fixture)
from browser_kit import streamlit_server as _streamlit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAP = 'iframe[title="streamlit_folium.st_folium"]'

@pytest.fixture(scope="module")
def server(_isolated_dirs):
    with _streamlit(_isolated_dirs / "buildings-runs", _isolated_dirs / "streamlit-buildings.log") as url:
        yield url


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1400})
    yield pg
    pg.close()


def _map_value(pg, js: str, want, timeout: float = 60):
    """Poll ``js`` in the (latest) map iframe until it equals ``want``; returns the last value."""
    deadline, value = time.time() + timeout, None
    while time.time() < deadline:
        with contextlib.suppress(Exception):  # the iframe is replaced when the map's key changes
            frame = pg.locator(MAP).last.element_handle(timeout=5000).content_frame()
            value = frame.evaluate(js)
            if value == want:
                return value
        time.sleep(0.25)
    return value


def test_every_building_of_the_demo_is_drawn(server, page):
    from bdcore.data.catalog import load_catalog, summary
    from bdcore.data.demo import demo_root

    cat = load_catalog(demo_root())
    n = summary(cat)["buildings"]
    page.goto(server)
    page.get_by_text("stretched image").first.wait_for(timeout=90000)
    page.get_by_text("Show every building").click()
    page.get_by_text(f"{n:,} buildings drawn as outlines.").wait_for(timeout=60000)
    assert _map_value(page, "window.__bdcoreDrawn", n) == n
    assert _map_value(page, "window.__bdcoreMode", "outlines") == "outlines"
    frame = page.frame_locator(MAP).last
    assert frame.locator("canvas").count() >= 1
    # the tiles stay SVG under the buildings, and a click reaches them through the buildings' pane
    assert frame.locator("path.leaflet-interactive").count() >= len(cat)
    assert "Traceback" not in page.inner_text("body")
    if SCREENS is not None:
        SCREENS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENS / "explore_every_building.png"), full_page=True)
    k = len(cat) // 2 + 1
    target = str(cat.index[k])
    # streamlit-folium hooks its click handlers a moment after the map's own script (which set __bdcoreDrawn) ran:
    # a click before that is not reported, so click again until the selection follows (at most 5 tries)
    for _ in range(5):
        frame.locator("path.leaflet-interactive").nth(k).click()
        with contextlib.suppress(Exception):
            page.get_by_text(f"{target}: stretched image").wait_for(timeout=5000)
            break
    assert page.get_by_text(f"{target}: stretched image").count() == 1
