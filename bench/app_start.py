"""Benchmark: a fresh start of the app, until the first map is drawn in Debian chromium. Prints JSON.

Two fresh machines (each an empty cache folder and runs folder):

- ``prepared``: the README's set-up command writes the demo AOI (``python -m bdcore demo``, timed as
  ``demo_write_s``) before ``streamlit run``; then server start → first request → map drawn.
- ``in_app``: ``streamlit run`` on an empty cache: the first page writes the demo itself behind a progress bar
  (``progress_seen`` says whether the bar's text reached the browser), then draws the map.

``first_map_s`` counts from the browser's first request to the first footprint ``path`` inside the map's iframe;
``server_s`` is process start → health endpoint answering. Goal: first map under 5 s on a fresh machine.

Usage: python bench/app_start.py [--port 8591]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MAP_FRAME = 'iframe[title="streamlit_folium.st_folium"]'


def _wait_health(port: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"streamlit did not answer on port {port} within {timeout} s")


def one_start(env: dict, port: int, browser) -> dict:
    t0 = time.perf_counter()
    srv = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                            "--server.port", str(port)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_health(port)
        server_s = time.perf_counter() - t0
        page = browser.new_page()
        t1 = time.perf_counter()
        page.goto(f"http://localhost:{port}/")
        progress_seen = False
        end = time.time() + 120
        while time.time() < end:  # poll: the progress text is visible only while the demo is written
            if page.locator("text=writing the synthetic demo AOI").count():
                progress_seen = True
            if page.locator(MAP_FRAME).count() and \
                    page.frame_locator(MAP_FRAME).first.locator("path.leaflet-interactive").count():
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("no map within 120 s")
        first_map_s = time.perf_counter() - t1
        page.close()
        return {"server_s": round(server_s, 2), "first_map_s": round(first_map_s, 2),
                "progress_seen": progress_seen}
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8591)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for mode in ("prepared", "in_app"):
            env = dict(os.environ, BDCORE_CACHE_DIR=tempfile.mkdtemp(prefix="bdcore-cache-"),
                       BDCORE_RUNS_DIR=tempfile.mkdtemp(prefix="bdcore-runs-"))
            res: dict = {}
            if mode == "prepared":
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "bdcore", "demo"], cwd=ROOT, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                res["demo_write_s"] = round(time.perf_counter() - t, 2)
            res.update(one_start(env, args.port, browser))
            out[mode] = res
        browser.close()
    out["goal_first_map_s"] = 5.0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
