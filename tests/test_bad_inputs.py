"""Bad inputs, end to end: each through the CLI (``bdcore.cli.main``, a few in a real subprocess) and, where the app
takes such input, through the Predict page's upload path (AppTest). Every case must give one readable line
(CLI: ``error: ...``, exit 2, no traceback; app: ``st.error``, no exception) naming the file/field and the fix, and
must leave the input and a pre-existing run folder byte-for-byte unchanged.

The messages the tests see are collected and checked against the table in ``docs/robustness.md`` (last test);
``BDCORE_UPDATE_ROBUSTNESS_DOC=1 pytest tests/test_bad_inputs.py`` rewrites that table from them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from synth import add_point_feature, make_aoi, write_garbage, write_geotiff, write_png_as_tif, write_truncated_tif

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "robustness.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
APP_TIMEOUT = 180

# (case, where) -> (input description, message as the user sees it, tmp paths replaced by <tmp>)
MESSAGES: dict[tuple[str, str], tuple[str, str]] = {}
_TMP_ROOTS: list[str] = []


# ------------------------------------------------------------------------------------------------ helpers


def _norm(msg: str) -> str:
    for root in sorted(_TMP_ROOTS, key=len, reverse=True):
        msg = msg.replace(root, "<tmp>")
    msg = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s']+", "<tmp>", msg)
    msg = re.sub(r"-[0-9a-f]{16}\.tif", "-<sha>.tif", msg)
    msg = re.sub(r"catalogs/[0-9a-f]{20}\.json", "catalogs/<key>.json", msg)
    msg = re.sub(r"\bpid \d+", "pid <pid>", msg)  # process ids differ from run to run
    return msg.strip()


def record(case: str, where: str, what: str, msg: str) -> None:
    MESSAGES[(case, where)] = (what, _norm(msg))


def tree_hash(*paths: Path) -> dict[str, str]:
    """sha256 of every file under the given files/folders (to prove nothing was touched)."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def cli(capsys, *args: str) -> tuple[int, str, str]:
    from bdcore.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error(capsys, *args: str, contains: tuple[str, ...] = ()) -> str:
    """Run the CLI expecting a user error: exit 2, exactly one ``error:`` line, no traceback. Returns the line."""
    rc, out, err = cli(capsys, *args)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, err
    for needle in contains:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def mod_tmp(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("badin")
    _TMP_ROOTS.append(str(p))
    return p


@pytest.fixture(autouse=True)
def _tmp_root(tmp_path):
    _TMP_ROOTS.append(str(tmp_path))
    yield


@pytest.fixture(scope="module")
def tiny_ckpt(mod_tmp) -> Path:
    """A real (random-init) U-Net/resnet18 bdcore checkpoint, with band stats, as training writes it."""
    from bdcore.engine.config import RunConfig
    from bdcore.engine.models import build_model, save_checkpoint

    cfg = RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64, device="cpu")
    model = build_model("Unet", "resnet18", 3, 1, None)
    path = mod_tmp / "ckpt" / "best.pt"
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "arch": "Unet", "encoder": "resnet18",
                           "in_channels": 3, "classes": 1, "model": model.state_dict(), "epoch": 1,
                           "band_stats": {"lo": [0.0] * 3, "hi": [2000.0] * 3}})
    return path


@pytest.fixture(scope="module")
def runs_root(mod_tmp, tiny_ckpt) -> Path:
    """A runs folder holding one finished run ("keep") with a checkpoint, metrics and status."""
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    root = mod_tmp / "runs"
    run = runs.create_run(RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64), name="keep", root=root)
    shutil.copy(tiny_ckpt, run / "best.pt")
    (run / "metrics.jsonl").write_text(
        '{"kind": "step", "epoch": 1, "step": 1, "loss": 0.9, "img_per_s": 3.0, "time": 1, "lr": 0.001}\n'
        '{"kind": "epoch", "epoch": 1, "step": 1, "loss": 0.8, "val_iou": 0.25, "time": 2, "lr": 0.001}\n')
    (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 1, "step": 1, "total_epochs": 1}))
    return root


@pytest.fixture
def keep(runs_root, monkeypatch):
    """BDCORE_RUNS_DIR → the module runs folder; on exit, the pre-existing run must be unchanged and no run added."""
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(runs_root))
    before = tree_hash(runs_root / "keep")
    entries = sorted(p.name for p in runs_root.iterdir())
    yield runs_root
    assert tree_hash(runs_root / "keep") == before
    assert sorted(p.name for p in runs_root.iterdir()) == entries


@pytest.fixture(scope="module")
def rasters(mod_tmp) -> dict[str, Path]:
    d = mod_tmp / "rasters"
    rng = np.random.default_rng(0)
    img = lambda c: rng.integers(0, 2000, (c, 64, 64)).astype(np.uint16)  # noqa: E731
    out = {
        "good": write_geotiff(d / "good.tif", img(3)),
        "truncated": write_truncated_tif(d / "truncated.tif", size=512),
        "png": write_png_as_tif(d / "png.tif"),
        "garbage": write_garbage(d / "garbage.tif"),
        "1band": write_geotiff(d / "pan.tif", img(1)),
        "4band": write_geotiff(d / "rgbn.tif", img(4)),
    }
    import rasterio

    with rasterio.open(d / "nocrs.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16") as dst:
        dst.write(img(3))
    out["nocrs"] = d / "nocrs.tif"
    return out


# ------------------------------------------------------------------------------------------------ rasters: CLI

RASTER_CASES = [
    ("truncated", "truncated TIFF (header intact, strips missing)", ("truncated.tif", "truncated or corrupt")),
    ("png", "PNG renamed .tif", ("png.tif", "PNG file, not a GeoTIFF")),
    ("garbage", "text file renamed .tif", ("garbage.tif", "not a readable raster")),
    ("1band", "1-band raster, model expects 3", ("pan.tif", "model expects 3 bands (PS-RGB), file has 1")),
    ("4band", "4-band raster, model expects 3", ("rgbn.tif", "model expects 3 bands (PS-RGB), file has 4")),
]


@pytest.mark.parametrize("case,what,needles", RASTER_CASES, ids=[c[0] for c in RASTER_CASES])
def test_predict_cli_bad_raster(case, what, needles, rasters, tiny_ckpt, keep, tmp_path, capsys):
    src = rasters[case]
    before = tree_hash(src, tiny_ckpt)
    line = cli_error(capsys, "predict", "--checkpoint", tiny_ckpt, "--input", src, "--out", tmp_path / "out",
                     contains=needles)
    record(f"{what}", "CLI predict", what, line)
    assert tree_hash(src, tiny_ckpt) == before
    assert not any((tmp_path / "out").glob("*.tif")) if (tmp_path / "out").exists() else True


def test_predict_cli_missing_input(tiny_ckpt, keep, tmp_path, capsys):
    line = cli_error(capsys, "predict", "--checkpoint", tiny_ckpt, "--input", tmp_path / "nope.tif",
                     contains=("nope.tif", "not found"))
    record("input file that does not exist", "CLI predict", "", line)


def test_geotiff_without_crs(rasters, tiny_ckpt, keep, tmp_path, capsys, caplog):
    """Predict still works (pixel outputs are valid) and says the GeoJSON is not in lon/lat; the catalog skips such
    a tile, and a folder of only such tiles is an error naming the file."""
    import logging

    caplog.set_level(logging.WARNING)
    rc, out, err = cli(capsys, "predict", "--checkpoint", tiny_ckpt, "--input", rasters["nocrs"], "--out", tmp_path)
    assert rc == 0 and "Traceback" not in err
    warn = next(r.getMessage() for r in caplog.records if "no CRS" in r.getMessage())
    record("GeoTIFF without CRS", "CLI predict", "", f"(works, warning) {warn}")
    assert (tmp_path / "nocrs_mask.tif").exists() and (tmp_path / "nocrs_spacenet.csv").exists()

    aoi = tmp_path / "aoi" / "RGB-PanSharpen"
    aoi.mkdir(parents=True)
    shutil.copy(rasters["nocrs"], aoi / "RGB-PanSharpen_AOI_3_Paris_img1.tif")
    line = cli_error(capsys, "catalog", tmp_path / "aoi", contains=("img1.tif", "no CRS", "re-download"))
    record("GeoTIFF without CRS", "CLI catalog", "", line)


# ------------------------------------------------------------------------------------------------ checkpoints


class _Evil:
    """Unpickling this runs ``open(marker, "w")``: a load that executes code would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_checkpoint(kind: str, good: Path, dest: Path) -> tuple[Path, Path | None]:
    import torch

    from bdcore.engine.models import build_model, save_checkpoint

    dest.parent.mkdir(parents=True, exist_ok=True)
    marker = None
    if kind == "truncated":
        data = good.read_bytes()
        dest.write_bytes(data[: len(data) // 3])
    elif kind == "pickle":
        marker = dest.parent / "PWNED"
        with open(dest, "wb") as f:
            pickle.dump({"format": "bdcore-checkpoint", "model": _Evil(marker)}, f)
    elif kind == "torch-pickle":
        marker = dest.parent / "PWNED"
        torch.save({"format": "bdcore-checkpoint", "model": _Evil(marker)}, dest)
    elif kind == "other-arch":
        ck = torch.load(good, weights_only=True)
        ck["model"] = build_model("FPN", "resnet18", 3, 1, None).state_dict()  # FPN weights, Unet config
        save_checkpoint(dest, ck)
    return dest, marker


CKPT_CASES = [
    ("truncated", "truncated checkpoint", ("truncated or corrupt checkpoint", "retrain")),
    ("pickle", "pickle that runs code on load", ("refused; nothing was executed",)),
    ("torch-pickle", "torch.save'd object that runs code on load", ("refused; nothing was executed", "GLOBAL")),
    ("other-arch", "checkpoint of another architecture (FPN weights, U-Net config)",
     ("weights do not fit Unet/resnet18", "another architecture")),
]


@pytest.mark.parametrize("kind,what,needles", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_predict_cli_bad_checkpoint(kind, what, needles, rasters, tiny_ckpt, keep, tmp_path, capsys):
    ck, marker = _bad_checkpoint(kind, tiny_ckpt, tmp_path / "ck" / "best.pt")
    before = tree_hash(ck, rasters["good"])
    line = cli_error(capsys, "predict", "--checkpoint", ck, "--input", rasters["good"], "--out", tmp_path / "out",
                     contains=("best.pt", *needles))
    record(what, "CLI predict", what, line)
    assert marker is None or not marker.exists(), "loading the checkpoint ran code"
    assert tree_hash(ck, rasters["good"]) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def tiny_onnx(mod_tmp, tiny_ckpt) -> Path:
    """``tiny_ckpt`` exported: ``model.onnx`` + ``model.json``."""
    from bdcore.inference.modelfile import export_onnx

    return export_onnx(tiny_ckpt, mod_tmp / "onnx").onnx


def _bad_model_file(kind: str, good: Path, dest: Path) -> Path:
    """A copy of the exported pair in ``dest`` with one thing wrong; returns the model.onnx path."""
    shutil.copytree(good.parent, dest)
    onnx_path, side = dest / "model.onnx", dest / "model.json"
    meta = json.loads(side.read_text())
    if kind == "tampered":
        data = bytearray(onnx_path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one weight byte flipped: still a loadable model, silently different output
        onnx_path.write_bytes(bytes(data))
    elif kind == "no-sidecar":
        side.unlink()
    elif kind == "bands":  # edited consistently (bands and stats), but the model takes 3
        side.write_text(json.dumps({**meta, "bands": 4, "band_stats": {**meta["band_stats"], "lo": [0.0] * 4,
                                                                       "hi": [2000.0] * 4}}))
    elif kind == "newer":
        side.write_text(json.dumps({**meta, "format_version": 2, "bdcore_version": "9.0.0"}))
    elif kind == "foreign":
        side.write_text(json.dumps({"framework": "pytorch", "labels": ["building"]}))
    elif kind == "truncated-sidecar":
        side.write_text(side.read_text()[:100])
    elif kind == "not-onnx":  # a consistent pair whose model file is not ONNX at all
        onnx_path.write_bytes(b"PK\x03\x04 not an onnx model" * 10)
        side.write_text(json.dumps({**meta, "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}))
    return onnx_path


MODEL_FILE_CASES = [
    ("tampered", "exported model.onnx changed after export (one byte)",
     ("model.onnx: sha256", "does not match model.json", "re-export with python -m bdcore export RUN")),
    ("no-sidecar", "exported model.onnx without its model.json", ("no sidecar model.json beside it", "re-export")),
    ("bands", "model.json edited to 4 bands, model.onnx takes 3",
     ("model.json says 4 bands (PS-RGB) but", "model.onnx takes 3", "re-export")),
    ("newer", "model.json from a newer bdcore (sidecar format 2)",
     ("sidecar format version 2 (bdcore 9.0.0)", "upgrade bdcore")),
    ("foreign", "model.json of another tool", ("model.json: not a bdcore model sidecar", "re-export")),
    ("truncated-sidecar", "truncated model.json", ("model.json: not valid JSON", "re-export")),
    ("not-onnx", "model.onnx that is not an ONNX file (checksum matching)",
     ("model.onnx: not a readable ONNX model", "re-export")),
]


@pytest.mark.parametrize("kind,what,needles", MODEL_FILE_CASES, ids=[c[0] for c in MODEL_FILE_CASES])
def test_predict_cli_bad_model_file(kind, what, needles, rasters, tiny_onnx, keep, tmp_path, capsys):
    model = _bad_model_file(kind, tiny_onnx, tmp_path / "exp")
    before = tree_hash(model.parent, rasters["good"])
    line = cli_error(capsys, "predict", "--model", model, "--input", rasters["good"], "--out", tmp_path / "out",
                     contains=needles)
    record(what, "CLI predict --model", what, re.sub(r"\b[0-9a-f]{16}\b", "<sha>", line))  # random-init weights
    assert tree_hash(model.parent, rasters["good"]) == before
    assert not (tmp_path / "out").exists()


def test_export_cli_missing_checkpoint(keep, capsys):
    line = cli_error(capsys, "export", "keep", "--which", "last", "--format", "onnx",
                     contains=("last.pt not found", "best.pt exists"))
    record("export of a checkpoint the run does not have", "CLI export", "", line)
    assert not (keep / "keep" / "export").exists()


# ------------------------------------------------------------------------------------------------ app upload path


def _predict_page(runs_dir: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BDCORE_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "pages" / "predict.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = "demo"
    return at.run()


def _upload_and_predict(at, name: str, data: bytes):
    at.file_uploader(key="predict_upload").set_value((name, data, "image/tiff"))
    at.run()
    assert not at.exception, at.exception
    if at.error:  # refused before the button (e.g. the upload could not be stored)
        return at
    at.button(key="predict_go").click().run()
    assert not at.exception, at.exception
    return at


APP_RASTER_CASES = [
    ("truncated", "truncated TIFF (header intact, strips missing)", "truncated or corrupt"),
    ("png", "PNG renamed .tif", "is a PNG file, not a GeoTIFF"),
    ("garbage", "text file renamed .tif", "not a readable raster"),
    ("1band", "1-band raster, model expects 3", "model expects 3 bands (PS-RGB), file has 1"),
    ("4band", "4-band raster, model expects 3", "model expects 3 bands (PS-RGB), file has 4"),
]


@pytest.mark.parametrize("case,what,needle", APP_RASTER_CASES, ids=[c[0] for c in APP_RASTER_CASES])
def test_predict_page_upload_bad_raster(case, what, needle, rasters, keep, monkeypatch):
    at = _predict_page(keep, monkeypatch)
    src = rasters[case]
    before = tree_hash(src)
    at = _upload_and_predict(at, src.name, src.read_bytes())
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and needle in errors[0] and src.name in errors[0], errors
    assert "predict_result" not in at.session_state
    record(what, "app Predict upload", what, errors[0])
    assert tree_hash(src) == before


@pytest.mark.parametrize("kind,what,needles", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_predict_page_bad_checkpoint(kind, what, needles, rasters, tiny_ckpt, tmp_path, monkeypatch):
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    root = tmp_path / "runs"
    run = runs.create_run(RunConfig(encoder="resnet18", encoder_weights=None, crop_size=64), name="bad", root=root)
    ck, marker = _bad_checkpoint(kind, tiny_ckpt, run / "best.pt")
    before = tree_hash(run)
    at = _predict_page(root, monkeypatch)
    at = _upload_and_predict(at, "good.tif", rasters["good"].read_bytes())
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), errors
    record(what, "app Predict", what, errors[0])
    assert marker is None or not marker.exists(), "loading the checkpoint ran code"
    assert tree_hash(run) == before


def test_predict_page_upload_name_with_dotdot(rasters, keep, monkeypatch):
    """An upload called ``../../escape.tif`` is stored under the cache's uploads folder and nowhere else."""
    from bdcore.paths import cache_dir

    up = cache_dir() / "uploads"
    outside = cache_dir().parent / "escape.tif"
    at = _predict_page(keep, monkeypatch)
    at = _upload_and_predict(at, "../../escape.tif", rasters["good"].read_bytes())
    assert not at.error, [e.value for e in at.error]
    assert any("buildings found" in str(s.value) for s in at.success)
    assert not outside.exists() and not (up.parent.parent / "escape.tif").exists()
    stored = sorted(up.glob("escape-*.tif"))
    assert stored and all(p.parent == up for p in stored)
    record("upload named ../../escape.tif", "app Predict upload", "",
           f"(works) stored as {stored[0].name} inside the cache's uploads/ folder")


def test_predict_page_upload_disk_full(rasters, keep, monkeypatch):
    import bdcore.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    data = rasters["good"].read_bytes() + b"\0"  # new content: not already stored from an earlier test
    at = _predict_page(keep, monkeypatch)
    monkeypatch.setattr(atomic.os, "fsync", full)
    at.file_uploader(key="predict_upload").set_value(("full.tif", data, "image/tiff"))
    at.run()
    monkeypatch.undo()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "full.tif" in errors[0], errors
    record("disk full (ENOSPC) while storing the upload", "app Predict upload", "", errors[0])
    from bdcore.paths import cache_dir

    assert not [p for p in (cache_dir() / "uploads").iterdir() if p.name.startswith((".full", "full"))]


# ------------------------------------------------------------------------------------------------ decompression bomb


@pytest.fixture(scope="module")
def bomb(mod_tmp) -> Path:
    """A deflate GeoTIFF of ~0.5 MB declaring 100,000 × 100,000 × 3 px (10 gigapixels): sparse, no tile written."""
    import rasterio
    from affine import Affine

    path = mod_tmp / "bomb" / "bomb.tif"
    path.parent.mkdir()
    with rasterio.open(path, "w", driver="GTiff", width=100_000, height=100_000, count=3, dtype="uint8",
                       crs="EPSG:32611", transform=Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, BIGTIFF="YES"):
        pass
    assert path.stat().st_size < 1_000_000
    return path


BOMB = "decompression bomb: 0.5 MB deflate GeoTIFF declaring 100,000 × 100,000 × 3 px"
BOMB_NEEDLES = ("bomb", "100,000 × 100,000 px × 3 band(s) (10.0 gigapixels)", "over the budget of 1.0 gigapixels",
                "--max-pixels 10000000000", "(it needs ~12,544 windows)")


def test_predict_cli_decompression_bomb(bomb, tiny_ckpt, keep, tmp_path, capsys):
    """Refused from the header in well under a second of work (no window read, no model loaded), not ~15 h."""
    before = tree_hash(bomb)
    t0 = time.perf_counter()
    line = cli_error(capsys, "predict", "--checkpoint", tiny_ckpt, "--input", bomb, "--out", tmp_path / "out",
                     contains=(*BOMB_NEEDLES, "pass --max-pixels 10000000000 to predict it anyway"))
    assert time.perf_counter() - t0 < 10
    record(BOMB, "CLI predict", "", line)
    assert not (tmp_path / "out").exists() and tree_hash(bomb) == before


def test_predict_cli_max_pixels_moves_the_budget(rasters, tiny_ckpt, keep, tmp_path, capsys):
    args = ("predict", "--checkpoint", tiny_ckpt, "--input", rasters["good"], "--out", tmp_path / "out")
    cli_error(capsys, *args, "--max-pixels", "4000", contains=("good.tif", "64 × 64 px", "--max-pixels 4096"))
    rc, out, err = cli(capsys, *args, "--max-pixels", "4096")
    assert rc == 0 and "good_mask.tif" in out, err
    with pytest.raises(SystemExit) as exc:
        cli(capsys, *args, "--max-pixels", "0")
    assert exc.value.code == 2 and "not a positive number of pixels" in capsys.readouterr().err


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np, torch
    from bdcore.inference import predict as P
    from bdcore.cli import main

    class Slow(torch.nn.Module):  # 0.2 s a window: long enough to be killed mid-way
        def forward(self, x):
            time.sleep(0.2)
            return x[:, :1] * 0.0

    def from_checkpoint(cls, checkpoint, device="auto", batch_size=4, stats=None):
        norm = P.Normalization(np.zeros(3), np.full(3, 2000.0), "test")
        return cls(Slow(), in_channels=3, normalization=norm, device="cpu", batch_size=1)

    P.Predictor.from_checkpoint = classmethod(from_checkpoint)
    sys.exit(main(sys.argv[1:]))
""")


def test_predict_cli_sigterm_leaves_no_tmp(tmp_path):
    """SIGTERM (kill, a job scheduler) in the middle of the windows: exit 130, one line, no traceback, and nothing in
    the output folder (the temporary prob/mask files are removed)."""
    import signal

    img = write_geotiff(tmp_path / "scene.tif", np.full((3, 600, 1500), 900, np.uint16))  # 21 windows of 256 px
    script, out = tmp_path / "slow.py", tmp_path / "out"
    script.write_text(SIGTERM_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(script), "predict", "--checkpoint", "dummy.pt", "--input", str(img),
                          "--out", str(out), "--window", "256", "--overlap", "32"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(".scene_prob.tif.tmp")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, "finished before it could be interrupted"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "Traceback" not in err, err
    assert sorted(out.iterdir()) == []
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "no output written" in line
    record("SIGTERM in the middle of a prediction", "CLI predict", "", f"(works) exit 130: {line}")


def test_predict_page_upload_decompression_bomb(bomb, keep, monkeypatch):
    """The app always keeps the default budget, and its message says how to go further: crop, or the CLI."""
    at = _predict_page(keep, monkeypatch)
    at = _upload_and_predict(at, "bomb.tif", bomb.read_bytes())
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1, errors
    assert all(n in errors[0] for n in (*BOMB_NEEDLES, "bomb.tif", "from the command line with bdcore predict")), errors
    assert "predict_result" not in at.session_state and not at.info
    record(BOMB, "app Predict upload", "", errors[0])


def test_predict_page_cancel_leaves_nothing(rasters, keep, monkeypatch):
    """Cancel (or any other click) makes Streamlit stop the running script at its next st call: the progress bar.
    Simulated by raising Streamlit's StopException from the page's progress callback once the temporary outputs
    exist: they are removed, no result is shown, and the next run says the prediction was cancelled."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    import bdcore.inference.predict as predict_mod

    real = predict_mod.predict_geotiff
    seen: dict[str, object] = {}

    def stopped_mid_way(checkpoint, input_path, out_dir, progress=None, **kw):
        def click(done, total):
            progress(done, total)
            if done > 3:  # 3 × 3 windows of 32 px, a window row per batch: the first row is written
                seen["tmp"], seen["out"] = sorted(p.name for p in out_dir.glob(".*.tmp")), out_dir
                raise StopException()
        return real(checkpoint, input_path, out_dir, progress=click, **{**kw, "window": 32, "overlap": 8})

    at = _predict_page(keep, monkeypatch)
    monkeypatch.setattr(predict_mod, "predict_geotiff", stopped_mid_way)
    at = _upload_and_predict(at, "good.tif", rasters["good"].read_bytes())
    assert [re.sub(r"-[0-9a-f]{16}", "", n) for n in seen.get("tmp", [])] == [".good_mask.tif.tmp",
                                                                              ".good_prob.tif.tmp"], seen
    assert not at.error and not at.success and "predict_result" not in at.session_state
    at.button(key="predict_cancel").click().run()
    assert not at.exception and not at.error and not at.success
    infos = [str(i.value) for i in at.info]
    assert infos == ["Prediction cancelled: nothing was saved."], infos
    assert list(seen["out"].iterdir()) == []
    record("Cancel (or another click) during a prediction", "app Predict", "", f"(works) next run: {infos[0]}")
    at.run()
    assert not at.info  # said once


@pytest.mark.slow
def test_wide_image_memory_bounded_in_width(tmp_path):
    """A 200,000 × 512 px strip (sparse, deflate; one float32 band of it is 390 MB) through `predict --window 512`:
    the blender holds one column band (predictor.STRIP_WIDTH px) at a time, so peak RSS growth stays far below a
    full-width float strip, and buildings at both ends are found."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    w, h = 200_000, 512
    wide = tmp_path / "wide.tif"
    with rasterio.Env(GDAL_CACHEMAX=32), rasterio.open(
            wide, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint16", crs="EPSG:32611",
            transform=Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0), tiled=True, blockxsize=512, blockysize=512,
            compress="deflate", sparse_ok=True, BIGTIFF="YES") as dst:
        boxes = [(100, 100), (200, 16_350), (300, 199_800)]  # (row, col): one straddles a column band edge
        for r, c in boxes:
            dst.write(np.full((3, 60, 80), 1800, np.uint16), window=Window(c, r, 80, 60))
    script = tmp_path / "huge.py"
    script.write_text(HUGE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(script), "predict", "--checkpoint", "dummy.pt", "--input", str(wide),
                        "--out", str(out), "--window", "512", "--overlap", "64", "--batch-size", "8"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    growth_mb = (res["peak_kb"] - res["base_kb"]) / 1024
    band_mb = w * h * 4 / 2**20
    assert growth_mb < 260, (growth_mb, band_mb)  # ~195 MB; full-width strips (before column bands): ~630 MB
    with rasterio.open(out / "wide_mask.tif") as m:
        assert (m.width, m.height) == (w, h)
    assert len(json.loads((out / "wide_buildings.geojson").read_text())["features"]) == len(boxes)
    print(f"wide image: peak RSS growth {growth_mb:.0f} MB; one float32 band of it is {band_mb:.0f} MB")


# ------------------------------------------------------------------------------------------------ labels


def test_labels_in_another_crs_are_reprojected(tmp_path, capsys):
    """Labels written in web mercator give the same pixel mask as EPSG:4326 labels (they are reprojected)."""
    from bdcore.data.catalog import load_catalog
    from bdcore.data.labels import tile_mask

    aoi = make_aoi(tmp_path / "m", n_tiles=2, labels_crs="EPSG:3857", buildings_per_tile=3)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and f"buildings   {aoi.n_buildings}" in out
    cat = load_catalog(aoi.root)
    for t in aoi.tiles:
        assert json.loads(t.labels.read_text())["crs"]["properties"]["name"].endswith("3857")
        np.testing.assert_array_equal(tile_mask(t.images["PS-RGB"], t.labels)[0], t.expected_mask())
    assert int(cat["n_buildings"].sum()) == aoi.n_buildings
    record("labels in another CRS (EPSG:3857)", "CLI catalog / training masks", "",
           f"(works) reprojected to the image grid: `catalog` reports {aoi.n_buildings} buildings, masks match "
           "pixel for pixel")


def test_empty_and_malformed_geojson(tmp_path, capsys):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.labels import LabelError, read_buildings, tile_mask

    aoi = make_aoi(tmp_path / "a", n_tiles=3, empty_tiles=[0])
    empty, bad = aoi.tiles[0], aoi.tiles[1]
    bad.labels.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Pol')
    before = tree_hash(aoi.root)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and "Traceback" not in err
    assert "problems    1:" in out
    line = next(ln.strip() for ln in out.splitlines() if bad.labels.name in ln)
    assert "unreadable labels file" in line
    record("malformed GeoJSON labels", "CLI catalog", "", f"(tile kept, 0 buildings, listed) {line}")
    cat = load_catalog(aoi.root)
    assert cat.loc[empty.tile_id, "n_buildings"] == 0 and cat.loc[bad.tile_id, "n_buildings"] == 0
    assert cat.loc[aoi.tiles[2].tile_id, "n_buildings"] == len(aoi.tiles[2].boxes_px)
    # empty labels: an empty frame and an all-zero mask; malformed: a LabelError naming the file
    assert len(read_buildings(empty.labels)) == 0
    assert not tile_mask(empty.images["PS-RGB"], empty.labels).any()
    record("empty GeoJSON labels", "CLI catalog / training masks", "",
           "(works) the tile counts 0 buildings and trains on an all-zero mask")
    with pytest.raises(LabelError) as ei:
        tile_mask(bad.images["PS-RGB"], bad.labels)
    assert bad.labels.name in str(ei.value) and "re-download" in str(ei.value)
    record("malformed GeoJSON labels", "training / evaluation (tile_mask)", "", str(ei.value))
    assert tree_hash(aoi.root) == before


# ------------------------------------------------------------------------------------------------ hostile folders


def test_catalog_scan_is_bounded_and_says_what_it_skipped(tmp_path, capsys):
    """A symlinked folder leading out of the root is not followed, folders past the depth limit are not entered,
    and the entry limit stops the walk; the catalog says so in one line (CLI summary, attrs["scan"])."""
    from bdcore.data.catalog import CatalogError, ScanLimits, load_catalog

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    outside = make_aoi(tmp_path / "outside", n_tiles=3, first_number=10)
    os.symlink(outside.root, aoi.root / "more")
    deep = aoi.root.joinpath(*[f"d{i}" for i in range(10)])
    make_aoi(deep, n_tiles=1, first_number=20)
    before = tree_hash(aoi.root)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and "tiles       2," in out  # neither the linked nor the too-deep tiles
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("skipped"))
    assert "1 symlinked folder(s) leading out of the folder not followed (e.g. more -> " in line
    assert "folder(s) deeper than 8 levels not entered" in line and "point at the AOI folder itself" in line
    record("folder with a symlink leading out of it and very deep folders", "CLI catalog", "", line)
    with pytest.raises(CatalogError, match=r"no SpaceNet tiles found \(in the part scanned: .*scan stopped at the "
                                           r"3-entry limit with \d+ folder\(s\) not listed"):
        load_catalog(aoi.root, limits=ScanLimits(max_entries=3))
    with pytest.raises(CatalogError, match="scan stopped at the 0-second limit with 1 folder"):
        load_catalog(aoi.root, limits=ScanLimits(max_seconds=0))
    inside = tmp_path / "a" / "RGB-PanSharpen" / "again"
    os.symlink(aoi.root, inside)  # a loop inside the root: followed once, no error, nothing skipped for it
    assert len(load_catalog(aoi.root, refresh=True)) == 2
    os.unlink(inside)
    assert tree_hash(aoi.root) == before


def test_catalog_of_proc_is_quick_and_not_followed_into_other_processes(capsys):
    """/proc: each process's cwd/root links lead out of the folder and are not followed; the walk is bounded."""
    if not Path("/proc/self/cwd").exists():
        pytest.skip("no /proc")
    t0 = time.monotonic()
    line = cli_error(capsys, "catalog", "/proc", contains=("/proc: no SpaceNet tiles found (in the part scanned: ",
                                                         "symlinked folder(s) leading out of the folder not followed"))
    assert time.monotonic() - t0 < 20
    line = line[:line.index("not followed") + len("not followed")]  # the rest varies with the machine
    record("`/proc` as the data folder", "CLI catalog", "",
           re.sub(r"\d[\d,]* (symlinked|folder)", r"<n> \1", re.sub(r"\(e\.g\. [^)]*\)", "(e.g. …)", line)) + " …")


def test_explore_page_says_what_the_scan_skipped(tmp_path):
    from streamlit.testing.v1 import AppTest

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    os.symlink(tmp_path, aoi.root / "up")
    at = AppTest.from_file(str(ROOT / "pages" / "explore.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = str(aoi.root)
    at.run()
    assert not at.exception and not at.error
    warnings = [str(w.value) for w in at.warning if "only partly scanned" in str(w.value)]
    assert len(warnings) == 1 and "(e.g. up -> " in warnings[0], [str(w.value) for w in at.warning]
    record("folder with a symlink leading out of it and very deep folders", "app (any page)", "", warnings[0])


def test_tile_number_too_long_is_skipped_and_reported(tmp_path, capsys, monkeypatch):
    from bdcore.data import catalog as C

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    src = aoi.tiles[0].images["PS-RGB"]
    odd = src.with_name(src.name.rsplit("img", 1)[0] + "img99999999999999999999999.tif")
    shutil.copy(src, odd)
    cache = C._cache_file(aoi.root.resolve())
    with monkeypatch.context() as m:  # a failure while the table is built leaves no cache file behind
        m.setattr(C, "_frame", lambda rows, attrs: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            C.load_catalog(aoi.root)
        assert not cache.exists()
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and "Traceback" not in err and "tiles       2," in out
    line = next(ln.strip() for ln in out.splitlines() if odd.name in ln)
    assert "is not a usable tile id" in line and "rename it" in line
    record("tile file named …_img99999999999999999999999.tif", "CLI catalog (and every page)", "",
           f"(other tiles kept, listed) {line}")
    assert json.loads(cache.read_text())["rows"]  # written whole, after the table was built
    assert odd.as_posix() in C.load_catalog(aoi.root).attrs["problems"]  # also when served from the cache


def test_empty_tif_files_give_a_bounded_number_of_lines(tmp_path):
    """40 empty .tif files: no GDAL line per file, at most MAX_WARNINGS + 1 warnings, one error line."""
    folder = tmp_path / "a" / "RGB-PanSharpen"
    folder.mkdir(parents=True)
    for i in range(40):
        (folder / f"RGB-PanSharpen_AOI_3_Paris_img{i}.tif").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bdcore", "catalog", str(tmp_path / "a")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert not [ln for ln in lines if "GDAL signalled" in ln], lines[:3]
    assert len(lines) <= 7, lines
    summary = next(ln for ln in lines if "more unreadable tile image(s) skipped" in ln)
    assert summary.startswith("catalog: 35 more") and lines[-1].startswith("error: ")
    record("folder of 40 empty .tif files", "CLI catalog", "",
           f"(5 warnings, then) {summary} (then) {lines[-1][:lines[-1].index('(40 unreadable') + 16]}…")


def test_labels_with_a_point_feature_are_reported_at_catalog_time(tmp_path, capsys):
    """A Point feature is not counted as a building, and the file is listed (with every other bad labels file)
    before any run starts: ``label_problems`` / ``tiles_with_bad_labels``, and the CLI summary."""
    from bdcore.data.catalog import label_problems, load_catalog, tiles_with_bad_labels

    aoi = make_aoi(tmp_path / "a", n_tiles=3)
    bad = []
    for t, geom in ((aoi.tiles[0], {"type": "Point", "coordinates": [2.35, 48.86]}),
                    (aoi.tiles[2], {"type": "LineString", "coordinates": [[2.35, 48.86], [2.36, 48.86]]})):
        fc = json.loads(t.labels.read_text())
        fc["features"].insert(1, {"type": "Feature", "properties": {}, "geometry": geom})
        t.labels.write_text(json.dumps(fc))
        bad.append(t)
    before = tree_hash(aoi.root)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and f"buildings   {aoi.n_buildings}" in out  # the Point and the LineString are not buildings
    line = next(ln.strip() for ln in out.splitlines() if bad[0].labels.name in ln)
    assert "feature 1 is a Point, expected a (Multi)Polygon building footprint" in line and "exclude" in line
    assert "bad labels  2 labels file(s) training cannot use" in out
    record("labels file with a Point feature", "CLI catalog", "", f"(tile kept, Point not counted, listed) {line}")
    cat = load_catalog(aoi.root)
    assert sorted(label_problems(cat)) == sorted(str(t.labels) for t in bad)
    assert tiles_with_bad_labels(cat) == [bad[0].tile_id, bad[1].tile_id]
    assert cat.loc[bad[0].tile_id, "n_buildings"] == len(bad[0].boxes_px)
    assert tree_hash(aoi.root) == before


def test_geojson_features_null(tmp_path, capsys):
    from bdcore.data.labels import LabelError, read_buildings

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    t = aoi.tiles[0]
    t.labels.write_text('{"type": "FeatureCollection", "features": null}')
    with pytest.raises(LabelError) as ei:
        read_buildings(t.labels)
    msg = str(ei.value)
    assert msg.startswith(f'{t.labels}: "features" is null, expected a list of Feature objects') and "got dict" not in msg
    record('GeoJSON labels with "features": null', "training / evaluation (tile_mask)", "", msg)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    line = next(ln.strip() for ln in out.splitlines() if t.labels.name in ln)
    assert rc == 0 and 'unreadable labels file ("features" is null' in line
    record('GeoJSON labels with "features": null', "CLI catalog", "", f"(tile kept, 0 buildings, listed) {line}")


# ------------------------------------------------------------------------------------------------ hostile downloads


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in chunks (a large member without holding it in memory)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _tar_gz(path: Path, members: list[tuple[str, bytes, str, int]]) -> Path:
    """(name, tar type, link name, size of zeros) members -> a .tar.gz at ``path``."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, kind, link, size in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, size
            tar.addfile(info, _Zeros(size) if kind == tarfile.REGTYPE else None)
    return path


def _served(monkeypatch, archive: Path) -> list[str]:
    """``download`` fetches ``archive`` instead of the bucket's tarball; returns the list of URLs it was asked for."""
    from bdcore.data import download as dl

    urls: list[str] = []

    def fetch(url, path, expected_size=None, **kw):
        urls.append(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, path)
        return Path(path)

    monkeypatch.setattr(dl, "fetch", fetch)
    return urls


def test_download_tarball_with_a_symlink_chain_or_a_bomb(tmp_path, monkeypatch, capsys):
    tif = "AOI_3_Paris_Train/RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif"
    chain = _tar_gz(tmp_path / "chain.tar.gz", [
        ("AOI_3_Paris_Train/RGB-PanSharpen/a", tarfile.SYMTYPE, ".", 0),
        ("AOI_3_Paris_Train/RGB-PanSharpen/a/b", tarfile.SYMTYPE, "../..", 0),
        ("AOI_3_Paris_Train/RGB-PanSharpen/a/b/evil.txt", tarfile.REGTYPE, "", 5)])
    bomb = _tar_gz(tmp_path / "bomb.tar.gz", [(tif, tarfile.REGTYPE, "", 200 << 20)])  # 200 MiB of zeros
    assert bomb.stat().st_size < 1 << 20
    for name, archive, needles, what in (
            ("chain", chain, ("refusing member 'AOI_3_Paris_Train/RGB-PanSharpen/a' (symlink to '.'",
                              "only files and folders are extracted", "nothing was extracted"),
             "tarball whose symlinks chain out of the destination"),
            ("bomb", bomb, ("expands to more than 67,108,864 bytes", "nothing was extracted"),
             "tarball of <1 MB expanding to 200 MiB (a bomb)")):
        dest = tmp_path / f"dest-{name}"
        _served(monkeypatch, archive)
        line = cli_error(capsys, "download", "--dest", dest, "--no-progress", contains=needles)
        record(what, "CLI download", "", line)
        assert sorted(p.name for p in dest.iterdir()) == [".downloads"]  # nothing extracted
        assert not (tmp_path / "evil.txt").exists()


def test_download_whose_catalog_fails_is_not_marked_done(tmp_path, monkeypatch, capsys):
    """The tarball extracts but no tile is readable: exit 2, no marker, archive kept; the next run extracts it again
    (and fails again) instead of exiting 0 without downloading."""
    from bdcore.data import download as dl

    archive = _tar_gz(tmp_path / "empty-tifs.tar.gz", [
        ("AOI_3_Paris_Train/RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif", tarfile.REGTYPE, "", 0)])
    urls = _served(monkeypatch, archive)
    dest = tmp_path / "d"
    line = cli_error(capsys, "download", "--dest", dest, "--no-progress",
                     contains=("but it is not usable: ", "no readable tile image", "not marked as done",
                               "the archive is kept at"))
    record("tarball that extracts but has no readable tile", "CLI download", "", line)
    root = dest / "AOI_3_Paris_Train"
    assert not (root / dl.MARKER).exists() and len(urls) == 1
    cli_error(capsys, "download", "--dest", dest, "--no-progress", contains=("not marked as done",))
    assert len(urls) == 2 and not (root / dl.MARKER).exists()


# ------------------------------------------------------------------------------------------------ scoring


def test_score_unparsable_wkt(tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                     'AOI_2_Vegas_img1,0,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n'
                     'AOI_2_Vegas_img1,1,"POLYGON ((0 0, 10 0, 10",1\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("previous results\n")
    before = tree_hash(truth, out)
    line = cli_error(capsys, "score", "--truth", truth, "--proposals", truth, "--out", out,
                     contains=("truth.csv: row 3", "bad PolygonWKT_Pix", "fix or remove that row"))
    record("WKT that does not parse (score CSV)", "CLI score", "", line)
    assert tree_hash(truth, out) == before


_SQUARE = '"POLYGON ((0 0, 40 0, 40 40, 0 40, 0 0))"'
_HUGE = '"POLYGON ((0 0, 1e308 0, 1e308 1e308, 0 1e308, 0 0))"'


def _score_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A SpaceNet CSV of (ImageId, WKT) rows, confidences falling in file order."""
    lines = [f"{image_id},{i},{wkt},{1 - i / 1000}" for i, (image_id, wkt) in enumerate(rows)]
    path.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n" + "\n".join(lines) + "\n")
    return path


def test_score_stacked_polygons_past_max_pairs(tmp_path, capsys):
    """Thousands of stacked polygons in one image: memory stays bounded (chunks), and past --max-pairs candidate
    pairs the image is refused by name instead of running for hours."""
    truth = _score_csv(tmp_path / "truth.csv", [("AOI_2_Vegas_img1", _SQUARE)] * 30)
    props = _score_csv(tmp_path / "proposals.csv", [("AOI_2_Vegas_img1", _SQUARE)] * 30)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("previous results\n")
    before = tree_hash(truth, props, out)
    line = cli_error(capsys, "score", "--truth", truth, "--proposals", props, "--out", out, "--max-pairs", "100",
                     contains=("image 'AOI_2_Vegas_img1'", "900 overlapping proposal/truth pairs",
                               "limit of 100", "--max-pairs"))
    record("Stacked polygons past --max-pairs (30 x 30 copies here; 4,000 x 4,000 in the issue)", "CLI score",
           "", line)
    assert tree_hash(truth, props, out) == before
    rc, stdout, _ = cli(capsys, "score", "--truth", truth, "--proposals", props)  # default limit: scored
    assert rc == 0 and "TP 30  FP 0  FN 0" in stdout


def test_score_coordinates_of_1e308(tmp_path, capsys, caplog):
    """Areas overflow to inf/NaN: a proposal is scored as a false positive (with a warning naming the row), a truth
    row is refused naming file and row (before, both were silently dropped)."""
    import logging

    caplog.set_level(logging.WARNING)
    truth = _score_csv(tmp_path / "truth.csv", [("AOI_2_Vegas_img1", _SQUARE)])
    props = _score_csv(tmp_path / "proposals.csv", [("AOI_2_Vegas_img1", _SQUARE), ("AOI_2_Vegas_img1", _HUGE)])
    rc, stdout, err = cli(capsys, "score", "--truth", truth, "--proposals", props)
    assert rc == 0 and "Traceback" not in err and "TP 1  FP 1  FN 0" in stdout
    warn = next(r.getMessage() for r in caplog.records if "not finite" in r.getMessage())
    assert "proposals.csv: row 3" in warn and "false positive" in warn
    record("Proposal with coordinates of 1e308 (area overflows)", "CLI score", "", f"(scored as a false positive, "
           f"warning) {warn}")
    bad_truth = _score_csv(tmp_path / "bad_truth.csv", [("AOI_2_Vegas_img1", _SQUARE), ("AOI_2_Vegas_img1", _HUGE)])
    line = cli_error(capsys, "score", "--truth", bad_truth, "--proposals", props,
                     contains=("bad_truth.csv: row 3", "not finite", "fix or remove that row"))
    record("Truth with coordinates of 1e308 (area overflows)", "CLI score", "", line)


def test_score_image_ids_with_stray_spaces(tmp_path, capsys, caplog):
    """' AOI_2_Vegas_img1' was scored as another image (1 FN + 1 FP instead of 1 TP): now stripped, one warning."""
    import logging

    caplog.set_level(logging.WARNING)
    truth = _score_csv(tmp_path / "truth.csv", [("AOI_2_Vegas_img1", _SQUARE)])
    props = _score_csv(tmp_path / "proposals.csv", [(" AOI_2_Vegas_img1 ", _SQUARE)])
    rc, stdout, err = cli(capsys, "score", "--truth", truth, "--proposals", props)
    assert rc == 0 and "Traceback" not in err and "TP 1  FP 0  FN 0  (1 images)" in stdout, stdout
    warns = [r.getMessage() for r in caplog.records if "stripped spaces" in r.getMessage()]
    assert len(warns) == 1 and "1 ImageId(s)" in warns[0] and "row 2" in warns[0]
    record("ImageId with stray spaces (score CSV)", "CLI score", "", f"(stripped, warning) {warns[0]}")


def test_score_csv_not_utf8(tmp_path, capsys):
    truth = _score_csv(tmp_path / "truth.csv", [("AOI_2_Vegas_img1", _SQUARE)])
    props = tmp_path / "proposals.csv"
    props.write_bytes(truth.read_bytes() + b"AOI_2_Vegas_img2,1," + _SQUARE.encode() + b",0.5 \xe9t\xe9\n")
    line = cli_error(capsys, "score", "--truth", truth, "--proposals", props,
                     contains=("proposals.csv: not UTF-8 text (byte 0xe9 at row 3); save it as UTF-8",))
    record("Score CSV that is not UTF-8 (Latin-1)", "CLI score", "", line)


# ------------------------------------------------------------------------------------------------ disk and folders


def test_disk_full_during_writes(scoring_dir, keep, tmp_path, monkeypatch, capsys):
    """ENOSPC from fsync inside bdcore.atomic: one line naming the file and the fix; the old file is unchanged,
    no temp file and no half-made run folder is left."""
    import bdcore.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("previous results\n")
    before = tree_hash(out)
    monkeypatch.setattr(atomic.os, "fsync", full)
    line = cli_error(capsys, "score", "--truth", scoring_dir / "SN2_sample_truth.csv", "--proposals",
                     scoring_dir / "SN2_sample_preds.csv", "--out", out,
                     contains=("No space left on device", "results.csv", "free disk space"))
    record("disk full (ENOSPC)", "CLI score --out", "", line)
    assert tree_hash(out) == before and sorted(p.name for p in out.iterdir()) == ["results.csv"]
    line = cli_error(capsys, "train", "--name", "newrun", "--create-only",
                     contains=("No space left on device", "config.json", "free disk space"))
    record("disk full (ENOSPC)", "CLI train", "", line)
    assert not (keep / "newrun").exists()


def test_permission_denied_on_write(keep, tmp_path, monkeypatch, capsys):
    """Root ignores file modes, so the denial is injected where bdcore.atomic renames the finished file."""
    import bdcore.atomic as atomic

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(atomic.os, "replace", denied)
    line = cli_error(capsys, "train", "--name", "newrun", "--create-only",
                     contains=("Permission denied", "newrun/config.json", "permissions"))
    record("permission denied writing a run folder", "CLI train", "", line)
    assert not (keep / "newrun").exists()


def test_runs_folder_is_a_file(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(blocker))
    for args in (("runs",), ("train", "--create-only", "--name", "r")):
        line = cli_error(capsys, *args, contains=("checkpoints: is a file, not a folder", "BDCORE_RUNS_DIR"))
    record("a file where the runs folder should be", "CLI runs / train", "", line)
    assert blocker.read_text() == "not a folder"


def test_train_page_runs_folder_is_a_file(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    blocker = tmp_path / "checkpoints"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(blocker))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = "demo"
    at.run()
    assert not at.exception, at.exception
    errors = [str(e.value) for e in at.error]
    assert errors and all("is a file, not a folder" in e for e in errors), errors
    record("a file where the runs folder should be", "app Train", "", errors[0])


@pytest.mark.parametrize("name,cmd", [("../escape", "train"), ("../escape", "resume"), ("../../etc", "stop"),
                                      ("/etc", "evaluate"), ("../escape", "compare")])
def test_run_name_with_dotdot(name, cmd, keep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative names resolve the same way wherever pytest runs
    args = {"train": ("train", "--name", name, "--create-only"), "compare": ("compare", "keep", name)}.get(
        cmd, (cmd, name))
    line = cli_error(capsys, *args)
    assert ("invalid run name" in line) or ("no run" in line) or ("not a run folder" in line), line
    record(f"run name / folder `{name}`", f"CLI {cmd}", "", line)
    assert not (keep.parent / "escape").exists()


def test_unknown_tile_id_in_evaluation(keep):
    from bdcore.inference.evaluate import EvaluationError, evaluate_checkpoint

    with pytest.raises(EvaluationError) as ei:
        evaluate_checkpoint(keep / "keep", tiles=["../../etc/passwd"])
    assert "../../etc/passwd" in str(ei.value)
    record("tile id `../../etc/passwd`", "evaluate (library)", "", str(ei.value))


# ------------------------------------------------------------------------------------------------ config


CONFIG_CASES = [
    ("unknown field", "lr: 0.001\nlearning_rate: 0.01\n", ("field 'learning_rate': unknown field", "allowed fields")),
    ("unknown encoder", "encoder: resnet999\n", ("field 'encoder': unknown encoder 'resnet999'", "did you mean")),
    ("negative lr", "lr: -0.1\n", ("field 'lr'", "greater than 0")),
    ("not YAML", "lr: [0.1\n", ("not valid YAML",)),
]


@pytest.mark.parametrize("what,text,needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_train_bad_config_file(what, text, needles, keep, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    line = cli_error(capsys, "train", "--config", cfg, "--create-only", contains=("run.yaml", *needles))
    record(f"config: {what}", "CLI train --config", "", line)
    assert cfg.read_text() == text


def test_train_bad_flag_value(keep, capsys):
    line = cli_error(capsys, "train", "--lr", "-1", "--create-only", contains=("field 'lr'", "greater than 0"))
    record("config: negative lr", "CLI train --lr", "", line)


# ------------------------------------------------------------------------------------------------ data roots


def test_empty_and_missing_data_root(keep, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (("catalog", empty), ("stats", empty), ("train", "--data-root", empty, "--create-only")):
        line = cli_error(capsys, *cmd, contains=("empty: no SpaceNet tiles found", "Looked for"))
        record("empty data root", f"CLI {cmd[0]}", "", line)
    missing = tmp_path / "nope"
    line = cli_error(capsys, "catalog", missing, contains=("nope: no such folder", "bdcore demo"))
    record("data root that does not exist", "CLI catalog", "", line)
    line = cli_error(capsys, "train", "--data-root", missing, "--detach",
                     contains=("data_root", "nope", "is not a folder"))
    record("data root that does not exist", "CLI train", "", line)
    assert not any(empty.iterdir())


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_explore_page_bad_data_root(kind, tmp_path):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
    at = AppTest.from_file(str(ROOT / "pages" / "explore.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = str(root)
    at.run()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and str(root) in errors[0], errors
    assert ("no SpaceNet tiles found" if kind == "empty" else "does not exist") in errors[0]
    record("empty data root" if kind == "empty" else "data root that does not exist", "app (any page)", "", errors[0])


# ------------------------------------------------------------------------------------------------ corrupt state files


def test_corrupt_catalog_cache_is_rebuilt(tmp_path, capsys, caplog):
    import logging

    from bdcore.data.catalog import _cache_file

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    assert cli(capsys, "catalog", aoi.root)[0] == 0
    cache = _cache_file(aoi.root.resolve())
    cache.write_text('{"version": 1, "rows": [')  # cut short
    before = tree_hash(aoi.root)
    caplog.set_level(logging.WARNING)
    rc, out, err = cli(capsys, "catalog", aoi.root)
    assert rc == 0 and f"buildings   {aoi.n_buildings}" in out and "(cached)" not in out
    warn = next(r.getMessage() for r in caplog.records if "unreadable cache" in r.getMessage())
    record("corrupt catalog cache file", "CLI catalog (and every page)", "", f"(works, rebuilt) {warn}")
    assert json.loads(cache.read_text())["fingerprint"]  # rewritten whole
    assert tree_hash(aoi.root) == before


def _copy_keep(keep: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(keep / "keep", root / name)
    return root


def test_corrupt_metrics_line(keep, tmp_path, monkeypatch, capsys):
    from bdcore.engine import runs

    root = _copy_keep(keep, tmp_path, "m")
    metrics = root / "m" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"loss": 0.9', '"loss": 0.9\x00garbage', 1) + "{not json\n")
    before = tree_hash(root)
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(root))
    rc, out, err = cli(capsys, "runs")
    assert rc == 0 and "Traceback" not in err
    row = next(ln for ln in out.splitlines() if ln.startswith("m "))
    assert "finished" in row and "0.250" in row  # the good epoch record is still read
    assert [r["kind"] for r in runs.read_metrics(root / "m")] == ["epoch"]
    record("corrupt metrics.jsonl line", "CLI runs / app Train", "",
           "(works) bad lines are skipped; the run is listed with its last good epoch (val_iou 0.250)")
    _train_page_lists(root, monkeypatch, "m")
    assert tree_hash(root) == before


def test_corrupt_status_json(keep, tmp_path, monkeypatch, capsys):
    root = _copy_keep(keep, tmp_path, "s")
    (root / "s" / "status.json").write_text('{"state": "runn')
    before = tree_hash(root)
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(root))
    rc, out, err = cli(capsys, "runs")
    assert rc == 0 and "Traceback" not in err
    note = next(ln.strip() for ln in out.splitlines() if "status.json" in ln)
    assert "unreadable" in note and "resume" in note
    record("corrupt status.json", "CLI runs", "", note)
    _train_page_lists(root, monkeypatch, "s")
    assert tree_hash(root) == before


def _tiny_cfg(data_root: Path, **kw):
    from bdcore.engine.config import RunConfig

    fields = {"encoder": "resnet18", "encoder_weights": None, "epochs": 1, "steps_per_epoch": 1, "crop_size": 64,
              "batch_size": 2, "workers": 0, "device": "cpu", "val_fraction": 0.25, "building_f1_tiles": 0,
              "log_every": 1}
    return RunConfig(data_root=str(data_root), **{**fields, **kw})


def test_train_refuses_bad_labels_before_the_run_starts(tmp_path, monkeypatch, capsys):
    """A Point feature in a train/val tile's labels: `train` refuses at once, every bad file listed with the fix,
    no run folder left; with --exclude-bad-labels the tile is left out, the run records it and trains."""
    from bdcore.data.catalog import load_catalog
    from bdcore.data.split import config_split
    from bdcore.engine.rundir import read_status

    aoi = make_aoi(tmp_path / "a", n_tiles=4)
    bad = aoi.tiles[1]
    add_point_feature(bad.labels)
    before = tree_hash(aoi.root)
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(runs_dir))
    flags = ("--data-root", aoi.root, "--encoder", "resnet18", "--encoder-weights", "none", "--val-fraction", "0.25",
             "--epochs", "1", "--steps-per-epoch", "1", "--crop-size", "64", "--batch-size", "2", "--workers", "0",
             "--device", "cpu", "--building-f1-tiles", "0")
    line = cli_error(capsys, "train", "--detach", *flags,
                     contains=(f"{bad.labels.name} (feature 1 is a Point", "1 labels file(s) of this run's train/val",
                               "rerun with --exclude-bad-labels"))
    record("labels file with a Point feature (a train/val tile)", "CLI train", "", line)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())

    rc, out, err = cli(capsys, "train", "--create-only", "--name", "ex", "--exclude-bad-labels", *flags)
    assert rc == 0, err
    note = err.strip().splitlines()[-1]
    assert note.startswith(f"note: 1 tile(s) with bad labels left out (recorded in {runs_dir / 'ex'}") and note.endswith(
        bad.tile_id)
    record("labels file with a Point feature (a train/val tile)", "CLI train --exclude-bad-labels", "",
           f"(run created without the tile) {note}")
    run_dir = runs_dir / "ex"
    assert json.loads((run_dir / "config.json").read_text())["exclude_bad_labels"] is True
    assert read_status(run_dir)["excluded_tiles"] == [bad.tile_id]
    split = config_split(load_catalog(aoi.root), _tiny_cfg(aoi.root, exclude_bad_labels=True))
    assert bad.tile_id not in split.train + split.val and split.excluded == [bad.tile_id]
    rc, out, err = cli(capsys, "runs")
    assert f"excluded (bad labels): {bad.tile_id}" in out
    assert tree_hash(aoi.root) == before


def test_trainer_refuses_a_labels_file_gone_bad_before_resume(tmp_path, monkeypatch):
    """The trainer checks at setup (the last guard, on every resume too): labels files that went bad after the run
    started stop the resume before any step, all named with the config field that leaves their tiles out; with that
    field set, the resume trains without them and records which."""
    from bdcore.data.catalog import load_catalog
    from bdcore.data.split import BadLabelsError, config_split
    from bdcore.engine.rundir import read_status
    from bdcore.engine.runs import process_start_time
    from bdcore.engine.train import train

    aoi = make_aoi(tmp_path / "a", n_tiles=5)
    run_dir = tmp_path / "run"
    cfg = _tiny_cfg(aoi.root, epochs=2)
    cfg.save(run_dir / "config.json")
    assert train(cfg, run_dir, stop_at_step=1)["state"] == "stopped"
    assert read_status(run_dir)["pid_start"] == process_start_time(os.getpid())  # names this process
    last = (run_dir / "last.pt").read_bytes()
    bad = [aoi.tile(t) for t in config_split(load_catalog(aoi.root), cfg).train[:2]]
    for t in bad:
        add_point_feature(t.labels)
    with pytest.raises(BadLabelsError) as ei:
        train(cfg, run_dir, resume=True)
    msg = str(ei.value)
    assert msg.startswith("2 labels file(s) of this run's train/val tiles cannot be used for training: ")
    assert all(f"{t.labels.name} (feature 1 is a Point" in msg for t in bad)
    assert msg.endswith(f'set "exclude_bad_labels": true in {run_dir / "config.json"} to leave those tiles out')
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error"] == f"BadLabelsError: {msg}"
    assert (run_dir / "last.pt").read_bytes() == last  # nothing trained, nothing lost
    record("labels file gone bad before a resume", "trainer (status.json error)", "", msg)
    cfg.exclude_bad_labels = True
    assert train(cfg, run_dir, resume=True)["state"] == "finished"
    assert read_status(run_dir)["excluded_tiles"] == sorted((t.tile_id for t in bad), key=lambda t: int(t[3:]))


def test_train_page_shows_bad_labels_and_offers_to_leave_them_out(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from bdcore.engine import runs
    from bdcore.engine.rundir import read_status

    aoi = make_aoi(tmp_path / "a", n_tiles=4)
    bad = aoi.tiles[1]
    add_point_feature(bad.labels)
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(runs_dir))
    launched: list[Path] = []
    monkeypatch.setattr(runs, "launch", lambda run_dir, **kw: launched.append(Path(run_dir)) or 4242)
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = str(aoi.root)
    at.run()
    assert not at.exception, at.exception
    warning = next(str(w.value) for w in at.warning if "cannot be used for training" in str(w.value))
    assert f"{bad.labels.resolve()} (feature 1 is a Point" in warning and "Leave out tiles with bad labels" in warning
    record("labels file with a Point feature (a train/val tile)", "app Train (page)", "", warning)
    at.selectbox(key="f_weights").set_value("none").run()
    at.button[0].click().run()  # Start, box not ticked: refused, nothing created
    error = next(str(e.value) for e in at.error if "Could not start" in str(e.value))
    assert bad.labels.name in error and "tick **Leave out tiles with bad labels**" in error
    record("labels file with a Point feature (a train/val tile)", "app Train (Start)", "", error)
    assert not launched and (not runs_dir.exists() or not any(p for p in runs_dir.iterdir() if p.name[0] != "."))
    at.checkbox(key="f_exclude_bad").check()
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert len(launched) == 1 and read_status(launched[0])["excluded_tiles"] == [bad.tile_id]
    assert json.loads((launched[0] / "config.json").read_text())["exclude_bad_labels"] is True
    assert any(f"left out: {bad.tile_id}" in str(s.value) for s in at.success)
    assert any(f"Left out for bad labels: {bad.tile_id}" in str(c.value) for c in at.caption)


def test_stop_does_not_signal_a_pid_that_is_not_the_runs_trainer(tmp_path, monkeypatch, capsys):
    """status.json (no launch.json) names a live process that is not the run's trainer (a reused pid): `stop` leaves
    it alone, says what it is, and marks the run interrupted (nothing holds its lock: the trainer is gone)."""
    from bdcore.engine import runs
    from bdcore.engine.rundir import read_status

    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path / "runs"))
    run_dir = runs.create_run(_tiny_cfg(tmp_path), name="reused")
    foreign = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        while not runs._cmdline(foreign.pid):  # empty while its exec is still under way
            time.sleep(0.01)
        (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": foreign.pid, "step": 3}))
        assert runs.run_info(run_dir).state == "running"  # nothing recorded to tell the pid apart yet
        line = cli_error(capsys, "stop", "reused", "--timeout", "5",
                         contains=(f"pid {foreign.pid} is not this run's trainer (it is \"sleep 60\"); not signalled",
                                   "run reused: ", "marked interrupted", "bdcore resume reused"))
        record("status.json naming another process's pid (reused pid)", "CLI stop", "", line)
        time.sleep(0.2)
        assert foreign.poll() is None  # still alive: neither it nor its group was signalled
        assert read_status(run_dir)["state"] == "interrupted" and runs.run_info(run_dir).state == "interrupted"
    finally:
        foreign.kill()
        foreign.wait()


def _train_page_lists(root: Path, monkeypatch, run: str) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BDCORE_RUNS_DIR", str(root))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=APP_TIMEOUT)
    at.session_state["data_root"] = "demo"
    at.run()
    assert not at.exception, at.exception
    assert run in at.dataframe[0].value["run"].tolist()


# ------------------------------------------------------------------------------------------------ subprocess + huge


def test_real_subprocess_exit_code_and_stderr(tmp_path):
    """The same contract in a real ``python -m bdcore`` process: exit 2, one line, no traceback."""
    garbage = write_garbage(tmp_path / "t.csv", "ImageId,PolygonWKT_Pix\nAOI_1_X_img1,POLYGON ((1 2\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bdcore", "score", "--truth", str(garbage), "--proposals", str(garbage)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "row 2" in p.stderr


HUGE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from bdcore.inference import predict as P
    from bdcore.cli import main

    class Bright(torch.nn.Module):  # probability from the first band: a stand-in for a real network
        def forward(self, x):
            return (x[:, :1] - 0.5) * 20.0

    def from_checkpoint(cls, checkpoint, device="auto", batch_size=4, stats=None):
        norm = P.Normalization(np.zeros(3), np.full(3, 2000.0), "test")
        return cls(Bright(), in_channels=3, normalization=norm, device="cpu", batch_size=batch_size)

    def status_kb(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":"))

    P.Predictor.from_checkpoint = classmethod(from_checkpoint)
    torch.zeros(1)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    base = status_kb("VmRSS")
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "base_kb": base, "peak_kb": status_kb("VmHWM")}))
""")


@pytest.mark.slow
def test_huge_image_bounded_memory(tmp_path):
    """A 12,000 × 12,000 3-band GeoTIFF (sparse, deflate; 1.7 GB as float32) through `predict --window 512`:
    peak RSS grows by a small fraction of the image's float size, and the outputs are right."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    n = 12000
    big = tmp_path / "huge.tif"
    t = Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0)
    with rasterio.Env(GDAL_CACHEMAX=32), rasterio.open(
            big, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint16", crs="EPSG:32611", transform=t,
            tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, BIGTIFF="YES") as dst:
        boxes = [(100, 100), (5000, 7000), (11800, 11800)]  # (row, col) of 60×80 px bright buildings
        for r, c in boxes:
            dst.write(np.full((3, 60, 80), 1800, np.uint16), window=Window(c, r, 80, 60))
    assert big.stat().st_size < 5e6
    script = tmp_path / "huge.py"
    script.write_text(HUGE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(script), "predict", "--checkpoint", "dummy.pt", "--input", str(big),
                        "--out", str(out), "--window", "512", "--overlap", "64", "--batch-size", "8"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    growth_mb = (res["peak_kb"] - res["base_kb"]) / 1024
    float_mb = n * n * 3 * 4 / 2**20
    assert growth_mb < 400 and growth_mb < float_mb / 4, (growth_mb, float_mb)
    with rasterio.open(out / "huge_mask.tif") as m:
        assert (m.width, m.height, m.crs.to_epsg()) == (n, n, 32611)
    gj = json.loads((out / "huge_buildings.geojson").read_text())
    assert len(gj["features"]) == len(boxes)
    record("huge image (12,000 × 12,000 px, 1.7 GB as float32)", "CLI predict --window 512", "",
           "(works) 3 buildings found; peak RSS growth stays under 400 MB (a quarter of the float image)")
    print(f"huge image: peak RSS growth {growth_mb:.0f} MB for a {float_mb:.0f} MB float image")


# ------------------------------------------------------------------------------------------------ docs table


def _cell(msg: str) -> str:
    """A message as a table cell: a code span (double backticks when it contains one); notes starting with '('
    are prose."""
    msg = msg.replace("|", "\\|").replace("\n", " ")
    if msg.startswith("("):
        return msg
    return f"`` {msg} ``" if "`" in msg else f"`{msg}`"


def _table() -> str:
    rows = ["| input | where | what the user gets |", "|---|---|---|"]
    for (case, where), (_, msg) in sorted(MESSAGES.items(), key=lambda kv: (kv[0][0].lower(), kv[0][1])):
        rows.append(f"| {case} | {where} | {_cell(msg)} |")
    return "\n".join(rows)


def test_zz_docs_table_matches_messages():
    """docs/robustness.md's bad-input table shows the messages these tests saw (regenerate with
    BDCORE_UPDATE_ROBUSTNESS_DOC=1)."""
    if not MESSAGES:
        pytest.skip("no bad-input case ran in this session")
    if os.environ.get("BDCORE_UPDATE_ROBUSTNESS_DOC"):
        text = DOC.read_text() if DOC.exists() else "# Robustness\n\n<!-- faults:begin -->\n<!-- faults:end -->\n"
        if BEGIN not in text:
            text += f"\n{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        section = (f"{BEGIN}\n## Bad inputs\n\n{_SECTION_INTRO}\n\n{_table()}\n{END}")
        DOC.write_text(head + section + tail)
    text = DOC.read_text()
    assert BEGIN in text and END in text
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    missing = []
    for (case, where), (_, msg) in MESSAGES.items():
        cell = _cell(msg)
        if f"| {case} | {where} | {cell} |" not in section:
            missing.append((case, where, cell))
    assert not missing, f"docs/robustness.md is stale (BDCORE_UPDATE_ROBUSTNESS_DOC=1 to regenerate): {missing[:3]}"


_SECTION_INTRO = """\
Every row is a case in `tests/test_bad_inputs.py`; the message column is what that test saw (temp paths shown as
`<tmp>`), and the test suite fails if this table and the messages drift apart (regenerate with
`BDCORE_UPDATE_ROBUSTNESS_DOC=1 .venv/bin/python -m pytest tests/test_bad_inputs.py`). CLI errors are one
`error: ...` line on stderr with exit status 2 and no traceback; app errors are one `st.error` box and no exception.
In every case the input file and a pre-existing run folder are byte-for-byte unchanged (sha256 before/after), and
no half-written file or run folder is left behind. Rows marked *(works)* are inputs that look bad but are valid
and are handled."""
