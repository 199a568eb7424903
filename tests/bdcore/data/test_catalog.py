"""catalog: both SpaceNet 2 layouts, the real Vegas sample, caching, and bad folders."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import box

from bdcore.data import catalog as catalog_mod
from bdcore.data.catalog import PRODUCTS, CatalogError, load_catalog, match_file, product_path, summary
from bdcore.cli import main
from bdcore.data.labels import read_buildings
from synth import make_aoi, write_garbage, write_geotiff, write_png_as_tif, write_truncated_tif

CONTRACT_COLUMNS = ["tile_id", "image_id", "aoi", "geometry", *PRODUCTS, "labels", "bands", "width", "height", "n_buildings"]


def test_vegas_sample(vegas_root):
    cat = load_catalog(vegas_root, refresh=True)
    assert len(cat) == 10
    assert int(cat["n_buildings"].sum()) == 213
    assert set(CONTRACT_COLUMNS) <= set(cat.columns)
    assert cat.crs.to_epsg() == 4326
    assert (cat["aoi"] == "AOI_2_Vegas").all()
    assert list(cat.index) == list(cat["tile_id"])
    assert "img1265" in cat.index and cat.loc["img1265", "image_id"] == "AOI_2_Vegas_img1265"
    assert (cat["bands"] == 3).all() and (cat["width"] == 650).all() and (cat["height"] == 650).all()
    assert cat["PS-MS"].isna().all() and cat["PAN"].isna().all()
    assert sorted(cat.loc[cat["n_buildings"] == 0].index) == ["img246", "img5874", "img802"]
    # per-tile building counts agree with the files themselves
    for tid, row in cat.iterrows():
        feats = json.loads(open(row["labels"]).read())["features"]
        assert row["n_buildings"] == len(feats), tid
        assert row["labels"].endswith(f"buildings_AOI_2_Vegas_{tid}.geojson")
        assert row["PS-RGB"].endswith(f"RGB-PanSharpen_AOI_2_Vegas_{tid}.tif")
        with rasterio.open(row["PS-RGB"]) as src:
            b = src.bounds
        assert row.geometry.equals_exact(box(b.left, b.bottom, b.right, b.top), tolerance=1e-12), tid
    # natural (numeric) order of tile numbers
    nums = [int(t[3:]) for t in cat.index]
    assert nums == sorted(nums)


def test_vegas_cache_and_rescan_on_touch(vegas_small, tmp_path):
    # a writable copy, so we can touch a file (the data folder may be read-only)
    root = tmp_path / "vegas"
    shutil.copytree(vegas_small, root)
    first = load_catalog(root)
    assert first.attrs["from_cache"] is False
    cache_files = list((catalog_mod.cache_dir() / "catalogs").glob("*.json"))
    assert cache_files
    assert not any(p.name.startswith(".") for p in root.rglob("*")), "nothing may be written into the data folder"

    second = load_catalog(root)
    assert second.attrs["from_cache"] is True
    assert second.attrs["fingerprint"] == first.attrs["fingerprint"]
    assert second.drop(columns="geometry").equals(first.drop(columns="geometry"))
    assert second.geometry.geom_equals_exact(first.geometry, tolerance=1e-12).all()

    # touching a file (mtime only) triggers a rescan
    lab = root / "geojson_buildings" / "buildings_AOI_2_Vegas_img246.geojson"
    st = lab.stat()
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = load_catalog(root)
    assert third.attrs["from_cache"] is False and third.attrs["fingerprint"] != first.attrs["fingerprint"]
    assert load_catalog(root).attrs["from_cache"] is True
    # an unrelated file does not
    (root / "notes.txt").write_text("hello")
    assert load_catalog(root).attrs["from_cache"] is True
    # refresh forces a rescan
    assert load_catalog(root, refresh=True).attrs["from_cache"] is False


def test_read_only_data_folder_is_fine(vegas_small):
    """Data folders may be read-only (../shared is): the catalog writes nothing into them (the cache lives elsewhere)."""
    before = sorted(p.name for p in vegas_small.rglob("*"))
    load_catalog(vegas_small)
    assert sorted(p.name for p in vegas_small.rglob("*")) == before


@pytest.mark.parametrize("layout", ["original", "bucket", "vegas_sample"])
def test_synthetic_layouts_all_products(tmp_path, layout):
    aoi = make_aoi(tmp_path / layout, layout=layout, n_tiles=5, bands=8, size=32,
                   products=PRODUCTS, empty_tiles=[1], missing_labels=[2])
    cat = load_catalog(aoi.root)
    assert list(cat.index) == aoi.tile_ids
    assert int(cat["n_buildings"].sum()) == aoi.n_buildings
    assert (cat["bands"] == 3).all()  # band count of PS-RGB
    for t in aoi.tiles:
        row = cat.loc[t.tile_id]
        assert row["image_id"] == t.image_id and row["aoi"] == "AOI_3_Paris"
        for p in PRODUCTS:
            assert row[p] == str(t.images[p].resolve())
            assert product_path(row, p) == t.images[p].resolve()
        assert row["labels"] == (str(t.labels.resolve()) if t.labels else None)
        if t.labels:
            assert row["n_buildings"] == len(t.boxes_px)
        else:  # unlabelled: count unknown (NA), not 0
            assert row["n_buildings"] is pd.NA
        assert row.geometry.equals_exact(box(*t.bounds), tolerance=1e-12)
    assert cat.loc["img3", "labels"] is None and cat.loc["img3", "n_buildings"] is pd.NA
    assert cat.loc["img2", "labels"] is not None and cat.loc["img2", "n_buildings"] == 0
    s = summary(cat)
    assert (s["tiles"], s["labelled"], s["unlabelled"], s["tiles_without_buildings"]) == (5, 4, 1, 1)
    assert s["headline"] == f"5 tiles, 4 labelled (1 unlabelled: no labels file), {aoi.n_buildings} buildings"
    assert list(catalog_mod.labelled_tiles(cat).index) == [t for t in aoi.tile_ids if t != "img3"]


def test_eight_band_only_catalog(tmp_path):
    aoi = make_aoi(tmp_path / "ms", layout="bucket", n_tiles=2, bands=8, size=16, products=("PS-MS",))
    cat = load_catalog(aoi.root)
    assert (cat["bands"] == 8).all() and cat["PS-RGB"].isna().all()
    with pytest.raises(CatalogError, match="no PS-RGB image") as exc:
        product_path(cat.iloc[0], "PS-RGB")
    assert "PS-MS" in str(exc.value)
    with pytest.raises(ValueError, match="unknown product"):
        product_path(cat.iloc[0], "RGB")


def test_projected_tiles_get_4326_footprints(tmp_path):
    root = tmp_path / "utm"
    from affine import Affine

    x0, y0 = 448_000.0, 5_411_000.0  # EPSG:32631, near Paris
    for n in (1, 2):
        t = Affine(0.5, 0, x0 + (n - 1) * 20, 0, -0.5, y0)
        write_geotiff(root / "PS-RGB" / f"RGB-PanSharpen_AOI_3_Paris_img{n}.tif", np.ones((3, 40, 40), np.uint16),
                      crs="EPSG:32631", transform=t)
    cat = load_catalog(root)
    assert cat.crs.to_epsg() == 4326 and cat.loc["img1", "crs"] == "EPSG:32631"
    minx, miny, maxx, maxy = cat.loc["img1"].geometry.bounds
    assert 2.2 < minx < maxx < 2.4 and 48.8 < miny < maxy < 48.9
    # the footprint is the lon/lat envelope of the reprojected tile: it holds every reprojected corner, tightly
    from pyproj import Transformer
    from shapely.geometry import Point

    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    corners = [tr.transform(x, y) for x in (x0, x0 + 20) for y in (y0, y0 - 20)]
    fp = cat.loc["img1"].geometry
    assert all(fp.buffer(1e-10).contains(Point(c)) for c in corners)
    xs, ys = zip(*corners)
    assert abs(minx - min(xs)) < 1e-9 and abs(maxx - max(xs)) < 1e-9 and abs(maxy - max(ys)) < 1e-9


def test_multiple_aois_get_unique_tile_ids(tmp_path):
    make_aoi(tmp_path / "root" / "paris", n_tiles=2, size=16, aoi="AOI_3_Paris")
    make_aoi(tmp_path / "root" / "vegas", n_tiles=2, size=16, aoi="AOI_2_Vegas", layout="bucket")
    cat = load_catalog(tmp_path / "root")
    assert len(cat) == 4 and cat.index.is_unique
    assert set(cat.index) == {"AOI_2_Vegas_img1", "AOI_2_Vegas_img2", "AOI_3_Paris_img1", "AOI_3_Paris_img2"}
    s = summary(cat)
    assert [r["aoi"] for r in s["per_aoi"]] == ["AOI_2_Vegas", "AOI_3_Paris"]


def test_corrupt_tiffs_are_skipped_not_fatal(tmp_path, caplog):
    aoi = make_aoi(tmp_path / "a", n_tiles=5, size=32)
    write_truncated_tif(aoi.tiles[1].images["PS-RGB"], size=32)
    write_png_as_tif(aoi.tiles[2].images["PS-RGB"])
    write_garbage(aoi.tiles[3].images["PS-RGB"])
    cat = load_catalog(aoi.root)
    assert list(cat.index) == ["img1", "img5"]
    problems = cat.attrs["problems"]
    assert len(problems) == 3
    for i in (1, 2, 3):
        assert str(aoi.tiles[i].images["PS-RGB"].resolve()) in problems
    assert "PNG" in problems[str(aoi.tiles[2].images["PS-RGB"].resolve())]
    assert "skipping tile img2" in caplog.text
    # problems survive the cache
    again = load_catalog(aoi.root)
    assert again.attrs["from_cache"] and again.attrs["problems"] == problems


def test_unreadable_labels_recorded(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=2, size=16)
    aoi.tiles[0].labels.write_text('{"type": "FeatureCollection", "features": [')
    cat = load_catalog(aoi.root)
    assert cat.loc["img1", "n_buildings"] == 0 and cat.loc["img1", "labels"] is not None
    assert "unreadable labels" in cat.attrs["problems"][str(aoi.tiles[0].labels.resolve())]
    assert cat.loc["img2", "n_buildings"] == len(aoi.tiles[1].boxes_px)


def test_building_count_parses_the_json(tmp_path):
    """A property ``"type": "Feature"`` is not a second feature and a null geometry is no building (the count used to
    be a text pattern that counted the first); the count agrees with the labels reader."""
    aoi = make_aoi(tmp_path / "a", n_tiles=1, size=16)
    labels = aoi.tiles[0].labels
    fc = json.loads(labels.read_text())
    feats = fc["features"]
    assert len(feats) >= 2
    feats[0]["properties"] = {"type": "Feature", "note": {"type": "Feature", "geometry": None}}
    feats.append({"type": "Feature", "properties": {"type": "Feature"}, "geometry": None})
    labels.write_text(json.dumps(fc, indent=1))
    cat = load_catalog(aoi.root)
    assert cat.loc["img1", "n_buildings"] == len(feats) - 1 == len(read_buildings(labels))


def test_all_tiles_corrupt(tmp_path):
    write_garbage(tmp_path / "PS-RGB" / "RGB-PanSharpen_AOI_3_Paris_img1.tif")
    with pytest.raises(CatalogError, match="no readable tile image"):
        load_catalog(tmp_path)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg and "RGB-PanSharpen_AOI_" in msg and "SN2_buildings_train_" in msg
    # labels alone are not tiles; neither are similar-looking names
    (tmp_path / "geojson").mkdir()
    (tmp_path / "geojson" / "buildings_AOI_3_Paris_img1.geojson").write_text('{"type":"FeatureCollection","features":[]}')
    write_geotiff(tmp_path / "misc" / "RGB_AOI_3_Paris_img1.tif", np.ones((3, 4, 4), np.uint16))
    with pytest.raises(CatalogError, match="no SpaceNet tiles found"):
        load_catalog(tmp_path)
    with pytest.raises(CatalogError, match="no such folder"):
        load_catalog(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CatalogError, match="is a file"):
        load_catalog(f)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("RGB-PanSharpen_AOI_3_Paris_img12.tif", ("PS-RGB", "AOI_3_Paris", 12)),
        ("MUL-PanSharpen_AOI_3_Paris_img12.tif", ("PS-MS", "AOI_3_Paris", 12)),
        ("MUL_AOI_5_Khartoum_img7.tif", ("MS", "AOI_5_Khartoum", 7)),
        ("PAN_AOI_4_Shanghai_img1.TIF", ("PAN", "AOI_4_Shanghai", 1)),
        ("buildings_AOI_2_Vegas_img1265.geojson", ("labels", "AOI_2_Vegas", 1265)),
        ("SN2_buildings_train_AOI_3_Paris_PS-RGB_img3.tif", ("PS-RGB", "AOI_3_Paris", 3)),
        ("SN2_buildings_train_AOI_3_Paris_PS-MS_img3.tif", ("PS-MS", "AOI_3_Paris", 3)),
        ("SN2_buildings_train_AOI_3_Paris_MS_img3.tif", ("MS", "AOI_3_Paris", 3)),
        ("SN2_buildings_train_AOI_3_Paris_PAN_img3.tif", ("PAN", "AOI_3_Paris", 3)),
        ("SN2_buildings_train_AOI_3_Paris_geojson_buildings_img3.geojson", ("labels", "AOI_3_Paris", 3)),
        ("RGB-PanSharpen_AOI_3_Paris_img12.tif.aux.xml", None),
        ("RGB-PanSharpen_AOI_3_Paris_img12.png", None),
        ("summary_AOI_3_Paris.csv", None),
    ],
)
def test_match_file(name, expected):
    assert match_file(name) == expected


def test_catalog_cli(vegas_root, capsys, tmp_path):
    assert main(["catalog", str(vegas_root)]) == 0
    out = capsys.readouterr().out
    assert "tiles       10" in out and "buildings   213" in out and "AOI_2_Vegas" in out and "PS-RGB: 10" in out
    assert main(["catalog", str(vegas_root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["tiles"] == 10 and s["buildings"] == 213 and s["bands"] == [3] and s["tiles_without_buildings"] == 3
    w, so, e, n = s["bounds"]
    assert -115.4 < w < e < -115.1 and 36.0 < so < n < 36.3
    assert main(["catalog", str(tmp_path)]) == 2
    assert "no SpaceNet tiles found" in capsys.readouterr().err


def test_duplicate_tile_files_log_a_bounded_number_of_lines(tmp_path, caplog):
    """A second copy of every tile file (deeper) is one warning per tile for the first 5, then one summary line; the
    shallowest copy is used."""
    import logging

    aoi = make_aoi(tmp_path / "a", n_tiles=8, size=16)
    shutil.copytree(aoi.root, aoi.root / "backup" / "copy", ignore=shutil.ignore_patterns("backup"))
    caplog.set_level(logging.WARNING, logger="bdcore.data.catalog")
    cat = load_catalog(aoi.root)
    lines = [r.getMessage() for r in caplog.records if r.name == "bdcore.data.catalog"]
    assert sum("files for the same tile" in ln for ln in lines) == 5
    summary_line = ("catalog: 11 more tile file(s) found more than once (16 in all); the shallowest copy of each is "
                    "used: remove the extra copies to silence this")  # 8 tiles x (image, labels)
    assert [ln for ln in lines if "more tile file(s)" in ln] == [summary_line]
    assert len(lines) == 6 and len(cat) == 8
    assert all("backup" not in cat.loc[t.tile_id, "PS-RGB"] for t in aoi.tiles)


def test_describe_label_problems_caps_the_list():
    from bdcore.data.catalog import describe_label_problems

    problems = {f"/d/b{i}.geojson": "bad labels file: feature 0 is a Point; fix or delete those features" for i in range(12)}
    text = describe_label_problems(problems)
    assert text.count("is a Point") == 10 and text.endswith("/d/b9.geojson (feature 0 is a Point) and 2 more")
    assert "fix or delete" not in text  # the reason only: the caller says what to do once
    assert describe_label_problems(dict(list(problems.items())[:2])) == (
        "/d/b0.geojson (feature 0 is a Point); /d/b1.geojson (feature 0 is a Point)")
