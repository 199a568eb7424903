"""Shared fixtures. Tests never touch the user's cache or checkpoints: both are redirected to tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline: never wait on the Hugging Face hub for pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_NUM_THREADS", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Small real files shipped with the tests (provenance and licences: tests/data/README.md).
TEST_DATA = Path(__file__).resolve().parent / "data"
# The larger real data sets, beside the checkout (not in a fresh clone).
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
REQUIRE_SHARED = "BDCORE_REQUIRE_SHARED"


def shared_path(*parts: str) -> Path:
    """``../shared/data/<parts>``, or skip the calling test when it is missing (called at module level, the
    whole module). With ``BDCORE_REQUIRE_SHARED=1`` (CI: ``.ci/run``) a missing path fails instead of skipping.

    The one place that decides what a test needing ``../shared`` does without it; fixtures below use it, and a
    test module may call it directly (``from conftest import shared_path``).
    """
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    reason = f"needs ../shared/data{''.join('/' + p for p in parts)} beside the checkout ({path} is missing)"
    if os.environ.get(REQUIRE_SHARED) == "1":
        pytest.fail(f"{reason}; {REQUIRE_SHARED}=1 requires it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


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
    """``../shared/data`` (skips without it, see ``shared_path``)."""
    return shared_path()


@pytest.fixture(scope="session")
def vegas_root() -> Path:
    """The ten-tile SpaceNet 2 Vegas sample (213 buildings) in ``../shared`` (skips without it)."""
    return shared_path("spacenet2_vegas_sample")


@pytest.fixture(scope="session")
def paris_imagery() -> Path:
    """Two real, unlabelled SpaceNet 2 Paris PS-RGB tiles (img197, img1180) in ``../shared`` (skips without it)."""
    return shared_path("spacenet2_paris_imagery")


@pytest.fixture(scope="session")
def vegas_small() -> Path:
    """Two real Vegas tiles in tests/data, same layout as ``vegas_root``: ``img1265`` (whole, 49 buildings) and a
    128 × 128 px georeferenced crop of ``img246`` (a tile with no buildings)."""
    return TEST_DATA / "spacenet2_vegas"


@pytest.fixture(scope="session")
def scoring_dir() -> Path:
    """The SpaceNet 2 scorer's golden CSVs from solaris, in tests/data."""
    return TEST_DATA / "scoring"


@pytest.fixture(scope="session")
def paris_tile_index() -> Path:
    """Footprints of all 1,148 Paris training tiles in ``../shared`` (skips without it)."""
    return shared_path("tile_index", "AOI_3_Paris_Train_Tindex.geojson")


@pytest.fixture
def pre_ampere_cuda(monkeypatch):
    """A machine that reports one CUDA GPU whose bf16 is only emulated (V100, T4): ``is_bf16_supported()`` is True
    by default and False with ``including_emulation=False``. Nothing real runs on it: device choices only."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
