"""The real app in Debian chromium (Playwright) against `streamlit run app.py`, on the demo AOI.

Screenshots of every page are saved when BDCORE_SCREENSHOTS names a folder (e.g. BDCORE_SCREENSHOTS=/tmp/screens).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from browser_kit import ROOT, assert_clean, shot
from browser_kit import browser  # noqa: F401 (the fixture)
from browser_kit import streamlit_server as _streamlit

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(_isolated_dirs):
    runs_dir = _isolated_dirs / "browser-runs"
    with _streamlit(runs_dir, _isolated_dirs / "streamlit.log") as url:
        yield {"url": url, "runs": runs_dir}


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
    yield pg
    pg.close()


def map_frame(pg):
    pg.wait_for_selector('iframe[title="streamlit_folium.st_folium"]', timeout=60000)
    return pg.frame_locator('iframe[title="streamlit_folium.st_folium"]').first


def wait_paths(frame, n: int, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    count = -1
    while time.time() < deadline:
        count = frame.locator("path.leaflet-interactive").count()
        if count == n:
            return count
        time.sleep(0.25)
    return count


def test_explore_map_click_and_picker(server, page, browser):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.demo import demo_root

    cat = load_catalog(demo_root())
    n0 = int(cat.iloc[0]["n_buildings"])
    page.goto(server["url"])
    page.get_by_text("stretched image").first.wait_for(timeout=90000)
    frame = map_frame(page)
    # every tile footprint + the selected tile's outline + its buildings
    assert wait_paths(frame, len(cat) + 1 + n0) == len(cat) + 1 + n0
    assert_clean(page)
    shot(page, "explore")
    # click the centre of another tile: it becomes the selected tile, its image and buildings appear
    k = len(cat) // 2 + 1
    target = str(cat.index[k])
    frame.locator("path.leaflet-interactive").nth(k).click()
    page.get_by_text(f"{target}: stretched image").wait_for(timeout=30000)
    nk = int(cat.loc[target, "n_buildings"])
    assert wait_paths(frame, len(cat) + 1 + nk) == len(cat) + 1 + nk
    assert page.locator('[data-testid="stImage"] img').first.evaluate("e => e.naturalWidth") == int(cat.loc[target, "width"])
    assert_clean(page)
    shot(page, "explore_clicked")
    # the sidebar folder picker switches to the real Vegas tiles in tests/data and remembers them across a reload
    vegas = ROOT / "tests" / "data" / "spacenet2_vegas"
    page.get_by_label("Folder path", exact=True).fill(str(vegas))
    page.get_by_role("button", name="Use folder").click()
    page.get_by_text("2 tiles, 49 buildings").wait_for(timeout=60000)
    assert wait_paths(map_frame(page), 2 + 1 + int(load_catalog(vegas).iloc[0]["n_buildings"])) > 2
    shot(page, "explore_vegas")
    page.reload()
    page.get_by_text("2 tiles, 49 buildings").wait_for(timeout=60000)
    # another visitor (a separate browser context, its own session) still opens on the demo
    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(server["url"])
        other.get_by_text("Demo AOI (synthetic) —").wait_for(timeout=90000)
        assert "2 tiles, 49 buildings" not in other.inner_text("body")
    finally:
        other.close()
    # back to the demo for the other pages
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Demo AOI (synthetic)").click()
    page.get_by_text("Demo AOI (synthetic) —").wait_for(timeout=60000)


def _steps(run_dir: Path) -> list[int]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("kind") == "step":
            out.append(int(r["step"]))
    return out


def _wait(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _select(pg, label: str, option: str) -> None:
    box = pg.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.click()
    pg.get_by_role("option", name=option, exact=True).click()


def _number(pg, label: str, value) -> None:
    inp = pg.get_by_label(label, exact=True)
    _wait(lambda: inp.count() == 1, 60, f"one {label!r} field (a rerun's stale copy gone)")
    if not inp.is_visible():  # inside the form's Advanced expander, which a rerun may have closed
        pg.get_by_text("Advanced").click()
        inp.wait_for(state="visible", timeout=30000)
    inp.fill(str(value))
    inp.press("Tab")


def test_train_stop_resume_review_predict(server, page):
    url = server["url"]
    _start_tiny_run(page, url, "browser-run")
    assert_clean(page)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started run").wait_for(timeout=30000)
    run_dir = server["runs"] / "browser-run"
    # the live chart gains points (polled from metrics.jsonl every 2 s)
    page.get_by_text("browser-run — state running").wait_for(timeout=90000)
    _wait(lambda: len(_steps(run_dir)) >= 2, 180, "step records")
    _wait(lambda: "0 step records" not in page.inner_text("body") and "step records" in page.inner_text("body"), 30,
          "the chart caption")
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1
    shot(page, "train_running")
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("browser-run — state stopped").wait_for(timeout=120000)
    before = _steps(run_dir)
    assert (run_dir / "last.pt").exists()
    page.get_by_role("button", name="Resume", exact=True).click()
    page.get_by_text("browser-run — state running").wait_for(timeout=60000)
    _wait(lambda: len(_steps(run_dir)) > len(before), 180, "steps after resume")
    after = _steps(run_dir)[len(before):]
    assert after[0] == before[-1] + 1, (before, after)  # step numbers continue where the run stopped
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("browser-run — state stopped").wait_for(timeout=120000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30000)
    assert_clean(page)
    shot(page, "train_stopped")

    page.goto(f"{url}/review")
    page.get_by_text("Per-tile scores").wait_for(timeout=240000)
    page.get_by_text("TP green · FP red · FN blue").wait_for(timeout=60000)
    assert page.locator('[data-testid="stImage"]').count() >= 4
    assert page.locator('[data-testid="stDataFrame"]').count() == 1
    assert_clean(page)
    shot(page, "review")

    from bdcore.data.catalog import load_catalog
    from bdcore.data.demo import demo_root

    tif = load_catalog(demo_root()).iloc[0]["PS-RGB"]
    page.goto(f"{url}/predict")
    page.get_by_text("Upload a GeoTIFF").first.wait_for(timeout=60000)
    page.locator('input[type="file"]').set_input_files(tif)
    page.get_by_role("button", name="Run prediction").click()
    page.get_by_text("buildings found").wait_for(timeout=180000)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download GeoJSON").click()
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["type"] == "FeatureCollection" and isinstance(data["features"], list)
    n = int(page.get_by_text("buildings found").inner_text().split()[0])
    assert len(data["features"]) == n
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in data["features"])
    assert_clean(page)
    shot(page, "predict")
    # a file that is not a GeoTIFF gets a readable error
    bad = server["runs"] / "not-a-tiff.tif"
    bad.write_text("hello")
    page.locator('input[type="file"]').set_input_files(str(bad))
    page.get_by_text("not-a-tiff.tif").first.wait_for(timeout=60000)  # the upload reached the app before the click
    _wait(lambda: page.locator('[data-testid="stStatusWidget"]').count() == 0, 60, "the upload's rerun")
    page.get_by_role("button", name="Run prediction").click()
    page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=60000)
    assert "not-a-tiff" in page.locator('[data-testid="stAlertContentError"]').first.inner_text()
    assert "Traceback" not in page.inner_text("body")
    shot(page, "predict_error")


def test_enter_then_click_on_start_makes_one_run(server, page):
    """Enter in the Epochs field submits the form; a click on Start right after submits it again: one run."""
    from bdcore.engine import runs

    before = {p.name for p in server["runs"].glob("*") if p.is_dir()}
    page.goto(f"{server['url']}/train")
    page.get_by_text("New run").wait_for(timeout=90000)
    _select(page, "Encoder", "resnet18")
    _select(page, "Encoder weights", "none")
    _select(page, "Crop", "64")
    _number(page, "Steps per epoch (0 = one pass)", 2)
    _number(page, "Data workers", 0)
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Enter")
    page.get_by_role("button", name="Start training").click()
    # Whichever submission ran to its end answers (Streamlit may cut the first short when the second arrives):
    # "Started run …" or "… was started a moment ago; not starting a second one".
    page.get_by_text(re.compile("Started run|was started a moment ago")).first.wait_for(timeout=90000)
    _wait(lambda: page.locator('[data-testid="stStatusWidget"]').count() == 0, 60, "the page to settle")
    time.sleep(2)
    new = {p.name for p in server["runs"].glob("*") if p.is_dir()} - before
    assert len(new) == 1, new
    assert_clean(page)
    shot(page, "train_one_run_after_double_submit")
    runs.stop_run(server["runs"] / new.pop())


def _tiny_runs(root: Path, lrs: tuple[float, ...]) -> list[str]:
    """Real runs on the demo AOI, trained in-process: resnet18, 64² crops, 2 epochs of 2 steps, 1-2 val tiles."""
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig
    from bdcore.engine.train import train

    names = []
    for lr in lrs:
        cfg = RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=2, epochs=2,
                        steps_per_epoch=2, val_fraction=0.05, workers=0, device="cpu", log_every=1,
                        building_f1_tiles=0, lr=lr)
        run_dir = runs.create_run(cfg, name=f"cmp-lr{lr:g}", root=root)
        train(cfg, run_dir)
        names.append(run_dir.name)
        time.sleep(0.05)  # list_runs orders by config.json's time: the later run is newer
    return names


def _traces_per_panel(pg) -> list[int]:
    return [pg.locator(f".js-plotly-plot .subplot.{axes} .scatterlayer .trace").count()
            for axes in ("xy", "x2y2", "x3y3")]


def test_compare_two_tiny_runs_with_different_learning_rates(server, page):
    names = _tiny_runs(server["runs"], (1e-3, 1e-2))
    page.goto(f"{server['url']}/compare")
    page.get_by_role("heading", name="Compare", exact=True).wait_for(timeout=90000)
    page.locator(".js-plotly-plot .subplot.x3y3 .scatterlayer .trace").first.wait_for(timeout=60000)
    assert _traces_per_panel(page) == [2, 2, 2]  # loss, val IoU, val F1: one curve per run
    legend = page.locator(".js-plotly-plot .legend").first.text_content()
    assert f"{names[1]} (lr=0.01)" in legend and f"{names[0]} (lr=0.001)" in legend  # the two most recent, picked
    body = page.inner_text("body")
    assert "Config fields that differ: lr" in body
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30000)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download CSV").click()
    header, *rows = Path(dl.value.path()).read_text().splitlines()
    columns = header.split(",")
    assert columns[:2] == ["run", "lr"] and len(rows) == 2
    assert sorted(r.split(",")[columns.index("lr")] for r in rows) == ["0.001", "0.01"]
    assert all(r.split(",")[columns.index("epochs done")] == "2" for r in rows)
    assert_clean(page)
    shot(page, "compare_epoch")
    page.get_by_text("wall time (s)", exact=True).click()  # the x-axis radio
    _wait(lambda: page.locator(".js-plotly-plot .g-xtitle").first.text_content() == "wall time (s)", 30, "wall time x")
    assert _traces_per_panel(page) == [2, 2, 2]
    assert_clean(page)
    shot(page, "compare_wall_time")


def _start_tiny_run(pg, url: str, name: str) -> None:
    pg.goto(f"{url}/train")
    pg.get_by_text("New run").wait_for(timeout=90000)
    _select(pg, "Encoder", "resnet18")
    _select(pg, "Encoder weights", "none")
    _select(pg, "Crop", "64")
    _number(pg, "Epochs", 50)
    _number(pg, "Batch size", 2)
    _number(pg, "Steps per epoch (0 = one pass)", 3)  # opens the Advanced expander
    _number(pg, "Log every (steps)", 1)
    _number(pg, "Data workers", 0)
    pg.get_by_label("Run name (optional)").fill(name)


def _main_button(pg, name: str):
    """A button of the page itself (not the header's Stop that Streamlit shows while a script runs)."""
    return pg.get_by_test_id("stMainBlockContainer").get_by_role("button", name=name, exact=True)


def _run_choices(pg) -> list[str]:
    box = pg.locator('[data-testid="stSelectbox"]').filter(has_text="Run").last
    box.click()
    opts = [o.inner_text().strip() for o in pg.get_by_role("option").all()]
    pg.keyboard.press("Escape")
    return opts


def test_two_users_start_stop_resume_and_review_at_once(_isolated_dirs, browser):
    """Two browser sessions on one app (two slots): each starts, stops, resumes and reviews its own run at the same
    time; each sees both runs, and neither run's log is corrupted (every step once, in order)."""
    runs_dir = _isolated_dirs / "two-users-runs"
    with _streamlit(runs_dir, _isolated_dirs / "two-users.log", BDCORE_MAX_RUNS="2") as url:
        users = {n: browser.new_context(viewport={"width": 1400, "height": 1600}).new_page() for n in ("ua", "ub")}
        for name, pg in users.items():
            _start_tiny_run(pg, url, name)
        for pg in users.values():  # both clicks before either waits
            _main_button(pg, "Start training").click()
        for name, pg in users.items():
            pg.get_by_text(f"{name} — state running").wait_for(timeout=120000)
        _wait(lambda: all(len(_steps(runs_dir / n)) >= 2 for n in users), 240, "steps of both runs")
        for pg in users.values():  # each sees the other's run too (the Run picker lists every run)
            assert set(users) <= set(_run_choices(pg))
        for pg in users.values():
            _main_button(pg, "Stop").click()
        for name, pg in users.items():
            pg.get_by_text(f"{name} — state stopped").wait_for(timeout=120000)
        before = {n: _steps(runs_dir / n) for n in users}
        for pg in users.values():
            _main_button(pg, "Resume").click()
        for name, pg in users.items():
            pg.get_by_text(f"{name} — state running").wait_for(timeout=120000)
        _wait(lambda: all(len(_steps(runs_dir / n)) > len(before[n]) + 1 for n in users), 240, "steps after resume")
        for pg in users.values():
            _main_button(pg, "Stop").click()
        for name, pg in users.items():
            pg.get_by_text(f"{name} — state stopped").wait_for(timeout=120000)
            steps = _steps(runs_dir / name)
            assert steps == list(range(1, len(steps) + 1)), (name, steps)  # each step once, none lost
            assert_clean(pg)
            shot(pg, f"two_users_{name}_train")
        for name, pg in users.items():  # both review at once, each its own run
            pg.goto(f"{url}/review")
            pg.get_by_text("Per-tile scores").wait_for(timeout=240000)  # the newest run's first
            _select(pg, "Run", name)
        for name, pg in users.items():
            pg.get_by_text("Per-tile scores").wait_for(timeout=240000)
            _wait(lambda pg=pg: pg.locator('[data-testid="stStatusWidget"]').count() == 0, 240, "review to finish")
            box = pg.locator('[data-testid="stSelectbox"]').filter(has_text="Run").first
            box.click()
            picked = pg.locator('[role="option"][aria-selected="true"]').first.inner_text()
            pg.keyboard.press("Escape")
            assert picked.strip() == name, picked  # each session keeps its own choice
            pg.get_by_text("Per-tile scores").wait_for(timeout=240000)
            assert_clean(pg)
            shot(pg, f"two_users_{name}_review")
        for pg in users.values():
            pg.context.close()


@pytest.mark.parametrize("path", ["review", "train"])
def test_deep_link_first_after_server_start_goes_through_the_app_navigation(_isolated_dirs, browser, path):
    """A bookmarked page opened before anyone opened ``/`` on a fresh server: the app's own navigation (five
    pages, no helper module listed) and the dataset sidebar, on the page the link names."""
    with _streamlit(_isolated_dirs / f"deep-{path}-runs", _isolated_dirs / f"deep-{path}.log") as url:
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            pg.goto(f"{url}/{path}")
            pg.get_by_role("heading", name=path.capitalize(), exact=True).wait_for(timeout=90000)
            pg.get_by_text("SpaceNet building workbench").first.wait_for(timeout=30000)  # app.py's sidebar ran
            lines = [ln.strip() for ln in pg.locator('[data-testid="stSidebarNav"]').inner_text().split("\n")]
            titles = [ln for ln in lines if ln[:1].isupper()]  # the other lines are material icon names
            assert titles == ["Explore", "Train", "Review", "Compare", "Predict"] and "shared" not in lines, lines
            pg.get_by_label("Folder path", exact=True).wait_for(timeout=30000)  # the dataset sidebar
            assert pg.url.rstrip("/").endswith(f"/{path}")
            assert_clean(pg)
            shot(pg, f"deep_link_{path}")
        finally:
            pg.close()


def test_predict_cancel_stops_the_run_and_leaves_nothing(_isolated_dirs, browser, tmp_path):
    """Cancel while a prediction runs (25 windows of 1,024 px on CPU: minutes): Streamlit stops the page script at its
    next progress update, the page says so, shows no result, and the prediction's temporary files are gone."""
    import numpy as np
    import rasterio
    from synth import write_tiny_checkpoint

    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    runs_dir = _isolated_dirs / "cancel-runs"
    run = runs.create_run(RunConfig(encoder="resnet18", encoder_weights=None), name="tiny", root=runs_dir)
    write_tiny_checkpoint(run / "best.pt")
    img = tmp_path / "scene.tif"
    with rasterio.open(img, "w", driver="GTiff", width=4096, height=4096, count=3, dtype="uint16", crs="EPSG:32611",
                       transform=rasterio.Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0), tiled=True,
                       compress="deflate") as dst:
        dst.write(np.full((3, 4096, 4096), 500, np.uint16))
    predictions = Path(os.environ["BDCORE_CACHE_DIR"]) / "predictions"
    earlier = {p for p in predictions.rglob("*") if p.is_file()}  # other tests' predictions share the cache

    def scene_files() -> list[Path]:
        return [p for p in predictions.rglob("*") if p.is_file() and p not in earlier]

    with _streamlit(runs_dir, _isolated_dirs / "cancel.log") as url:
        pg = browser.new_page(viewport={"width": 1400, "height": 1200})
        try:
            pg.goto(f"{url}/predict")
            pg.get_by_text("Upload a GeoTIFF").first.wait_for(timeout=90000)
            pg.locator('input[type="file"]').set_input_files(str(img))
            pg.get_by_role("button", name="Run prediction").click()
            pg.get_by_text("Predicting… window").first.wait_for(timeout=180000)  # the first batch is done
            deadline = time.time() + 180  # ... and the first window row written (its temporary files exist)
            while not list(predictions.glob("*/.scene-*_prob.tif.tmp")) and time.time() < deadline:
                time.sleep(0.2)
            assert list(predictions.glob("*/.scene-*_prob.tif.tmp")), "the prediction was not writing yet"
            assert pg.get_by_text("buildings found").count() == 0  # still running
            pg.get_by_role("button", name="Cancel").click()
            pg.get_by_text("Prediction cancelled: nothing was saved.").wait_for(timeout=60000)
            assert pg.get_by_text("buildings found").count() == 0
            assert_clean(pg)
            deadline = time.time() + 30  # the stopped run's clean-up happens in the server's script thread
            while scene_files() and time.time() < deadline:
                time.sleep(0.2)
            assert scene_files() == []
            shot(pg, "predict_cancelled")
        finally:
            pg.close()
