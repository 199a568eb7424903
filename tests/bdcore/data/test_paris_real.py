"""Real SpaceNet 2 Paris imagery (../shared/data/spacenet2_paris_imagery: two PS-RGB tiles, no public labels):
catalogued as *unlabelled*, displayed with a sound stretch, and predicted on with georeferenced outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import box, shape

from bdcore.viz import figures, maps
from bdcore.data.catalog import CatalogError, labelled_tiles, load_catalog, summary
from bdcore.cli import main

TILES = ("img197", "img1180")


@pytest.fixture(scope="module")
def paris_catalog(paris_imagery):
    return load_catalog(paris_imagery, refresh=True)


# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_lists_two_unlabelled_tiles_not_empty_ones(paris_catalog, paris_imagery, capsys):
    cat = paris_catalog
    assert sorted(cat.index) == sorted(TILES)
    assert cat["labels"].isna().all()
    assert cat["n_buildings"].isna().all()  # unknown, not 0
    assert str(cat["n_buildings"].dtype) == "Int64"
    assert (cat["bands"] == 3).all() and (cat["width"] == 650).all() and (cat["dtype"] == "uint16").all()
    s = summary(cat)
    assert (s["tiles"], s["labelled"], s["unlabelled"], s["tiles_without_buildings"]) == (2, 0, 2, 0)
    assert s["headline"].startswith("2 tiles, 0 labelled (2 unlabelled")
    # the cached catalog says the same
    again = load_catalog(paris_imagery)
    assert again.attrs["from_cache"] and again["n_buildings"].isna().all()

    assert main(["catalog", str(paris_imagery)]) == 0
    out = capsys.readouterr().out
    assert "tiles       2, 0 labelled  (2 unlabelled: no labels file" in out
    assert "0 with no buildings" in out
    assert main(["catalog", str(paris_imagery), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["labelled"] == 0 and js["unlabelled"] == 2 and js["tiles_without_buildings"] == 0


def test_training_and_evaluation_refuse_a_folder_without_labelled_tiles(paris_catalog, paris_imagery):
    from bdcore.engine.config import RunConfig
    from bdcore.data.dataset import DatasetError, build_datasets
    from bdcore.inference.evaluate import EvaluationError, eval_tiles

    with pytest.raises(CatalogError, match="0 labelled"):
        labelled_tiles(paris_catalog)
    cfg = RunConfig(data_root=str(paris_imagery), encoder="resnet18", encoder_weights=None)
    with pytest.raises(DatasetError) as ei:
        build_datasets(cfg)
    msg = str(ei.value)
    assert str(paris_imagery.resolve()) in msg and "2 tile(s), 0 labelled" in msg and "training needs labelled tiles" in msg
    assert "add the geojson_buildings files" in msg
    with pytest.raises(EvaluationError, match=r"0 labelled.*evaluation needs labelled tiles"):
        eval_tiles(cfg, "all")
    # the CLI refuses before a detached trainer is started (no run folder is left behind)
    from bdcore.engine import runs
    from bdcore.cli import main

    before = {p.name for p in runs.runs_dir().iterdir()}
    assert main(["train", "--data-root", str(paris_imagery), "--encoder-weights", "none", "--detach"]) == 2
    assert {p.name for p in runs.runs_dir().iterdir()} == before


def test_map_and_histogram_say_unlabelled(paris_catalog):
    m = maps.tile_map(paris_catalog)
    layer = next(c for c in m._children.values() if type(c).__name__ == "GeoJson")
    props = [f["properties"] for f in layer.data["features"]]
    assert [p["buildings"] for p in props] == [maps.UNLABELLED] * 2
    assert all(p["n_buildings"] is None and p["fill"] == maps.UNLABELLED_COLOR for p in props)
    tooltip = next(c for c in layer._children.values() if type(c).__name__ == "GeoJsonTooltip")
    assert "buildings" in tooltip.fields and "n_buildings" not in tooltip.fields
    split_map = maps.tile_map(paris_catalog, color_by="split", splits={})
    layer = next(c for c in split_map._children.values() if type(c).__name__ == "GeoJson")
    assert {f["properties"]["value"] for f in layer.data["features"]} == {maps.UNLABELLED}
    fig = figures.buildings_per_tile_fig(paris_catalog)
    assert len(fig.data[0].x) == 0 and "2 unlabelled left out" in fig.layout.title.text


# ------------------------------------------------------------------------------------------------ display


@pytest.mark.parametrize("tid", TILES)
def test_display_stretch_spreads_real_uint16_pixels(paris_catalog, tid):
    from bdcore.data import imagery

    raw = imagery.read_image(paris_catalog.loc[tid, "PS-RGB"])
    assert raw.dtype == np.uint16 and raw.max() < 2048  # 11-bit data: shown raw it would be black
    rgb = imagery.to_display_rgb(raw)
    assert rgb.shape == (650, 650, 3) and rgb.dtype == np.uint8
    for b in range(3):
        v = rgb[..., b]
        p2, p25, p50, p75, p98 = np.percentile(v, [2, 25, 50, 75, 98])
        assert p2 <= 5 and p98 >= 250, (b, p2, p98)  # the 2-98 % range maps onto the whole uint8 range
        assert (v == 0).mean() < 0.05 and (v == 255).mean() < 0.05  # ... and only ~2 % clips at each end
        assert 20 <= p50 <= 200 and p75 - p25 >= 25, (b, p25, p50, p75)  # not saturated, not black, not flat
        assert len(np.unique(v)) >= 100


# ------------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from synth import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("paris-ckpt") / "best.pt")


@pytest.mark.parametrize("tid", TILES)
def test_predict_cli_on_real_tiles_writes_georeferenced_outputs(paris_catalog, tiny_checkpoint, tmp_path, tid,
                                                                capsys, caplog):
    from bdcore.inference.predict import predict_geotiff

    tif = paris_catalog.loc[tid, "PS-RGB"]
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), "--input", tif, "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "buildings" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # real uint16 tile: like the training data
    stem = f"RGB-PanSharpen_AOI_3_Paris_{tid}"
    paths = {k: out / f"{stem}_{k}" for k in ("prob.tif", "mask.tif", "buildings.geojson", "spacenet.csv")}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    with rasterio.open(tif) as src, rasterio.open(paths["mask.tif"]) as m, rasterio.open(paths["prob.tif"]) as p:
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
        assert (p.crs, p.transform) == (src.crs, src.transform)
        assert src.crs.to_epsg() == 4326
        frame = box(*src.bounds)
        assert set(np.unique(m.read(1))) <= {0, 1}
    gj = json.loads(paths["buildings.geojson"].read_text())
    assert gj["type"] == "FeatureCollection"
    assert gj.get("crs") is None or "4326" in json.dumps(gj["crs"]) or "CRS84" in json.dumps(gj["crs"])
    feats = gj["features"]
    assert feats, "the random-init checkpoint (seed 0) finds some blobs on both tiles"
    for f in feats:
        g = shape(f["geometry"])
        assert g.is_valid and g.area > 0
        assert frame.buffer(1e-9).contains(g), f"polygon {g.bounds} outside tile {frame.bounds}"
        assert 2.2 < g.centroid.x < 2.3 and 48.98 < g.centroid.y < 49.02  # lon/lat, Paris suburbs
    import geopandas as gpd

    assert gpd.read_file(paths["buildings.geojson"]).crs.to_epsg() == 4326
    csv = pd.read_csv(paths["spacenet.csv"])
    assert set(csv["ImageId"]) == {f"AOI_3_Paris_{tid}"} and len(csv) == len(feats)
    # the library call: same outputs, and a clean input check against the checkpoint's band statistics
    res = predict_geotiff(tiny_checkpoint, tif, tmp_path / "lib", device="cpu")
    assert res["n_buildings"] == len(feats) and res["normalization"] == "checkpoint"
    assert res["input_check"].ok and res["warning"] is None
