"""The synthetic demo AOI: SpaceNet 2 original layout, valid georeferenced tiles, labels that match the pixels."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from scipy import ndimage as ndi
from shapely import wkt
from shapely.geometry import box
from shapely.ops import unary_union

from bdcore.data import demo
from bdcore.cli import main as cli_main
from bdcore.data.catalog import load_catalog

N = 6
SEED = 3
PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def aoi(tmp_path_factory) -> Path:
    return demo.write_demo_aoi(tmp_path_factory.mktemp("demo") / "AOI_3_Paris_Train_synthetic", n_tiles=N, seed=SEED)


def _tifs(root: Path) -> list[Path]:
    return sorted((root / "RGB-PanSharpen").glob("RGB-PanSharpen_AOI_3_Paris_img*.tif"))


def _labels(root: Path, tif: Path) -> Path:
    n = tif.stem.rsplit("_img", 1)[1]
    return root / "geojson" / "buildings" / f"buildings_AOI_3_Paris_img{n}.geojson"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_original_layout_and_synthetic_marking(aoi):
    tifs = _tifs(aoi)
    assert [t.name for t in tifs] == sorted(f"RGB-PanSharpen_AOI_3_Paris_img{k}.tif" for k in range(1, N + 1))
    assert all(_labels(aoi, t).is_file() for t in tifs)
    assert (aoi / "summaryData" / "AOI_3_Paris_Train_Building_Solutions.csv").is_file()
    readme = (aoi / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT REAL" in readme
    assert "synthetic" in demo.default_demo_path().name
    assert not list(aoi.parent.glob(".*tmp*")), "temp folder left behind"


def test_geotiffs_match_real_spacenet_tiles(aoi, vegas_small):
    with rasterio.open(vegas_small / "PS-RGB" / "RGB-PanSharpen_AOI_2_Vegas_img1265.tif") as real:
        real_res = real.res
    for tif in _tifs(aoi):
        with rasterio.open(tif) as src:
            assert (src.count, src.width, src.height) == (3, 650, 650)
            assert src.dtypes == ("uint16",) * 3
            assert src.crs.to_epsg() == 4326
            assert src.res == pytest.approx(real_res, rel=1e-9)
            assert src.tags()["SYNTHETIC"] == "true"
            arr = src.read()
        assert arr.max() <= 2047 and arr.min() >= 1
        assert 250 < arr.mean() < 900  # the range of real PS-RGB tiles (band means ~400-600)
        assert arr.std(axis=(1, 2)).min() > 50  # texture, not flat fills


def test_footprints_form_a_contiguous_grid_inside_paris(aoi, paris_tile_index):
    boxes = []
    for tif in _tifs(aoi):
        with rasterio.open(tif) as src:
            boxes.append(box(*src.bounds))
    union = unary_union(boxes)
    cols, rows = demo.grid_shape(N)
    side = 650 * demo.PIXEL_DEG
    # Edge to edge, no overlap, no gap: the union is one cols x rows rectangle.
    assert union.area == pytest.approx(cols * rows * side * side, rel=1e-6)  # N=6 fills the grid exactly
    assert union.symmetric_difference(box(*union.bounds)).area < 1e-15
    for i, b in enumerate(boxes):
        shared = [b.intersection(o).length for j, o in enumerate(boxes) if j != i]
        assert max(shared) == pytest.approx(side, rel=1e-6), "each tile shares a full edge with a neighbour"
    index = gpd.read_file(paris_tile_index)
    assert index.union_all().envelope.contains(union)
    # The grid is anchored on a real Paris tile (same corner, same size).
    assert min(boxes[0].hausdorff_distance(g) for g in index.geometry) < 1e-7  # ~1 cm


def test_labels_parse_lie_inside_tiles_and_match_csv(aoi):
    rows = list(csv.DictReader((aoi / "summaryData" / "AOI_3_Paris_Train_Building_Solutions.csv").open()))
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["ImageId"], []).append(r)
    empty = []
    for tif in _tifs(aoi):
        path = _labels(aoi, tif)
        raw = json.loads(path.read_text())
        assert raw["type"] == "FeatureCollection"
        gdf = gpd.read_file(path)
        with rasterio.open(tif) as src:
            bounds, transform = box(*src.bounds), src.transform
        image_id = "AOI_3_Paris_" + tif.stem.rsplit("_", 1)[1]
        if len(gdf) == 0:
            empty.append(image_id)
            assert by_image[image_id] == [{"ImageId": image_id, "BuildingId": "-1",
                                           "PolygonWKT_Pix": "POLYGON EMPTY", "PolygonWKT_Geo": "POLYGON EMPTY"}]
            continue
        assert gdf.crs.to_epsg() == 4326
        assert all(f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"][0][0]) == 3
                   for f in raw["features"]), "3-D polygons like SpaceNet's labels"
        assert gdf.geometry.is_valid.all()
        assert all(bounds.buffer(1e-10).contains(g) for g in gdf.geometry)
        assert min(g.area for g in gdf.geometry) > 0
        # Buildings may touch (shared walls) but never overlap.
        geoms = list(gdf.geometry)
        assert unary_union(geoms).area == pytest.approx(sum(g.area for g in geoms), rel=1e-6)
        recs = by_image[image_id]
        assert [int(r["BuildingId"]) for r in recs] == list(range(1, len(gdf) + 1))
        for r, g in zip(recs, geoms):
            geo = wkt.loads(r["PolygonWKT_Geo"])
            assert geo.symmetric_difference(g).area < 1e-14
            pix = wkt.loads(r["PolygonWKT_Pix"])
            lon, lat = transform @ (pix.exterior.coords[0][0], pix.exterior.coords[0][1])
            assert (lon, lat) == pytest.approx(geo.exterior.coords[0][:2], abs=0.011 * demo.PIXEL_DEG)
    assert empty, "at least one tile without buildings"
    assert set(by_image) == {"AOI_3_Paris_" + t.stem.rsplit("_", 1)[1] for t in _tifs(aoi)}


def _single_band_separability(band: np.ndarray, mask: np.ndarray) -> float:
    """Best balanced accuracy of one threshold on one band (either direction)."""
    pos, neg = np.sort(band[mask]), np.sort(band[~mask])
    th = np.linspace(band.min(), band.max(), 256)
    tpr = 1 - np.searchsorted(pos, th) / len(pos)
    tnr = np.searchsorted(neg, th) / len(neg)
    return float(np.maximum((tpr + tnr) / 2, 1 - (tpr + tnr) / 2).max())


def test_labels_rasterize_onto_the_drawn_buildings(aoi):
    """Building outlines in the pixels sit exactly where the labels say, and no one band gives them away."""
    checked = 0
    for tif in _tifs(aoi):
        gdf = gpd.read_file(_labels(aoi, tif))
        if len(gdf) == 0:
            continue
        with rasterio.open(tif) as src:
            arr, transform = src.read().astype(np.float32), src.transform
        mask = rasterize(gdf.geometry, out_shape=(650, 650), transform=transform, dtype="uint8").astype(bool)
        assert 0.05 < mask.mean() < 0.5
        gray = arr.mean(0)
        grad = np.hypot(ndi.sobel(gray, 0), ndi.sobel(gray, 1))
        edge = mask & ~ndi.binary_erosion(mask)
        score = {(dy, dx): grad[np.roll(edge, (dy, dx), (0, 1))].mean() for dy in range(-3, 4) for dx in range(-3, 4)}
        assert max(score, key=score.get) == (0, 0), "label outlines are offset from the drawn buildings"
        assert score[(0, 0)] > 1.5 * np.mean(list(score.values()))
        for b in range(3):
            assert _single_band_separability(arr[b], mask) < 0.85
        checked += 1
    assert checked >= N - 1


def test_deterministic_for_a_seed(tmp_path):
    a = demo.write_demo_aoi(tmp_path / "a_synthetic", n_tiles=2, seed=11)
    b = demo.write_demo_aoi(tmp_path / "b_synthetic", n_tiles=2, seed=11)
    c = demo.write_demo_aoi(tmp_path / "c_synthetic", n_tiles=2, seed=12)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 7  # 2 tifs, 2 geojson, csv, readme, manifest
    for rel in files:
        assert _sha(a / rel) == _sha(b / rel), rel
    assert _sha(a / "RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif") != _sha(c / "RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif")


def test_refuses_a_non_empty_destination_and_bad_arguments(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    with pytest.raises(demo.DemoError, match="not an empty folder"):
        demo.write_demo_aoi(dest, n_tiles=1)
    assert (dest / "keep.txt").read_text() == "precious" and len(list(dest.iterdir())) == 1
    assert not list(tmp_path.glob(".*tmp*"))
    for bad in (0, -3, demo.MAX_TILES + 1):
        with pytest.raises(demo.DemoError, match="n_tiles"):
            demo.write_demo_aoi(tmp_path / "x", n_tiles=bad)
    with pytest.raises(demo.DemoError, match="seed"):
        demo.write_demo_aoi(tmp_path / "x", n_tiles=1, seed=-1)
    assert not (tmp_path / "x").exists()


def test_cli_writes_and_reports_errors(tmp_path, capsys):
    dest = tmp_path / "cli_synthetic"
    assert cli_main(["demo", "--dest", str(dest), "--tiles", "1", "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert len(_tifs(dest)) == 1
    assert cli_main(["demo", "--dest", str(dest), "--tiles", "1"]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_demo_root_is_written_once_even_by_concurrent_processes(tmp_path):
    env = dict(os.environ, BDCORE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(PROJECT_ROOT))
    code = "from bdcore.data.demo import demo_root; print(demo_root(n_tiles=2, seed=5))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1
    root = Path(paths.pop())
    assert "synthetic" in root.name and root.parent == tmp_path / "cache" / "demo"
    assert demo.is_complete(root) and len(_tifs(root)) == 2
    assert [p.name for p in root.parent.iterdir()] == [root.name], "temp folders left behind"
    before = _sha(_tifs(root)[0])
    # A second call reuses it (no rewrite).
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(root) and _sha(_tifs(root)[0]) == before


def test_catalog_finds_every_demo_tile(aoi):
    cat = load_catalog(aoi)
    assert sorted(cat.index) == sorted(f"img{k}" for k in range(1, N + 1))
    assert (cat["bands"] == 3).all() and (cat["width"] == 650).all()
    for tid, row in cat.iterrows():
        assert row["PS-RGB"] is not None and Path(row["PS-RGB"]).is_file()
        assert int(row["n_buildings"]) == len(gpd.read_file(row["labels"]))


def test_progress_reports_every_tile_and_cli_demo_is_a_no_op_once_written(tmp_path, monkeypatch, capsys):
    seen: list[tuple[int, int]] = []
    demo.write_demo_aoi(tmp_path / "p", n_tiles=3, seed=1, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the scene, then each tile

    monkeypatch.setenv("BDCORE_CACHE_DIR", str(tmp_path / "cache"))
    assert cli_main(["demo", "--tiles", "1", "--seed", "3"]) == 0
    root = Path(capsys.readouterr().out.strip())
    assert demo.is_complete(root) and len(_tifs(root)) == 1
    before = (root / demo.write.MANIFEST).stat().st_mtime_ns
    assert cli_main(["demo", "--tiles", "1", "--seed", "3"]) == 0  # the README's set-up command, run again
    assert Path(capsys.readouterr().out.strip()) == root
    assert (root / demo.write.MANIFEST).stat().st_mtime_ns == before
