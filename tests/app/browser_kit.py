"""What the Chromium tests share: Debian chromium's path and flags, a fresh `streamlit run app.py` server on a free
port, screenshots (BDCORE_SCREENSHOTS=/some/folder) and the no-traceback check. Importing it skips the importing test
module when chromium is missing (fails under CI, which must install it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SCREENS = Path(os.environ["BDCORE_SCREENSHOTS"]) if os.environ.get("BDCORE_SCREENSHOTS") else None
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing (CI must install Debian chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(runs_dir: Path, log_path: Path, **extra_env: str):
    """``streamlit run app.py`` on a free port (a fresh server), yielding its URL."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", BDCORE_CACHE_DIR=os.environ["BDCORE_CACHE_DIR"],
               BDCORE_RUNS_DIR=str(runs_dir), **extra_env)
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])
    try:
        yield url
    finally:
        from bdcore.engine import runs

        for d in runs_dir.glob("*"):  # never leave a trainer behind
            if d.is_dir() and runs.is_alive(d):
                runs.stop_run(d, timeout=20)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def shot(pg, name: str) -> None:
    if SCREENS is not None:
        SCREENS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def assert_clean(pg) -> None:
    body = pg.inner_text("body")
    assert "Traceback" not in body
    assert pg.locator('[data-testid="stException"]').count() == 0
    assert pg.locator('[data-testid="stAlertContentError"]').count() == 0, body[:2000]


@pytest.fixture(scope="module")
def browser():
    """One Debian chromium per test module (test modules import this fixture by name)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
