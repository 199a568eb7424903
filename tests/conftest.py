"""Shared fixtures. Tests never touch the user's cache or checkpoints: both are redirected to tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline: never wait on the Hugging Face hub for pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_NUM_THREADS", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_dirs(tmp_path_factory):
    """Point bdcore's cache and runs folders at a session tmp dir (the demo AOI is built once per session)."""
    base = tmp_path_factory.mktemp("bdcore-home")
    old = {k: os.environ.get(k) for k in ("BDCORE_CACHE_DIR", "BDCORE_RUNS_DIR")}
    os.environ["BDCORE_CACHE_DIR"] = str(base / "cache")
    os.environ["BDCORE_RUNS_DIR"] = str(base / "checkpoints")
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the clone; tests that need it skip when it is absent, or fail with
    ``BDCORE_REQUIRE_SHARED=1`` (CI)."""
    if not SHARED_DATA.is_dir():
        msg = f"{SHARED_DATA} is missing: these tests need ../shared/data beside the clone"
        if os.environ.get("BDCORE_REQUIRE_SHARED") == "1":
            pytest.fail(f"{msg} (BDCORE_REQUIRE_SHARED=1)")
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def vegas_root(shared_data) -> Path:
    return shared_data / "spacenet2_vegas_sample"


@pytest.fixture(scope="session")
def paris_imagery(shared_data) -> Path:
    """Two real, unlabelled SpaceNet 2 Paris PS-RGB tiles (img197, img1180)."""
    return shared_data / "spacenet2_paris_imagery"


@pytest.fixture(scope="session")
def scoring_dir(shared_data) -> Path:
    return shared_data / "scoring"


@pytest.fixture(scope="session")
def paris_tile_index(shared_data) -> Path:
    return shared_data / "tile_index" / "AOI_3_Paris_Train_Tindex.geojson"
