"""labels: polygons → masks on the tile grid, real Vegas labels and synthetic edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box
import shapely

from bdcore.data.labels import (
    LabelError,
    boundary_band,
    pixel_polygons,
    rasterize,
    read_buildings,
    tile_mask,
)
from synth import PIXEL_DEG, make_aoi, write_empty_geojson, write_geojson, write_geotiff

# ------------------------------------------------------------------------------------------------ real Vegas sample


def _vegas_pairs(vegas_root):
    tifs = sorted((vegas_root / "PS-RGB").glob("*.tif"))
    assert len(tifs) == 10
    for tif in tifs:
        n = tif.stem.split("_img")[-1]
        yield tif, vegas_root / "geojson_buildings" / f"buildings_AOI_2_Vegas_img{n}.geojson"


def test_vegas_masks_match_polygon_area(vegas_root):
    """Per tile, mask pixels ≈ polygon area in pixel units (clipped to the tile), within 0.5 % + a perimeter term."""
    total_feats, empty_tiles = 0, 0
    for tif, gj in _vegas_pairs(vegas_root):
        with rasterio.open(tif) as src:
            transform, shape = src.transform, (src.height, src.width)
            tile_box = box(*src.bounds)
        gdf = read_buildings(gj)
        total_feats += len(gdf)
        assert all(not g.has_z for g in gdf.geometry)
        mask = tile_mask(tif, gj)
        assert mask.shape == (1, *shape) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        if len(gdf) == 0:
            empty_tiles += 1
            assert mask.sum() == 0
            continue
        clipped = [g.intersection(tile_box) for g in gdf.geometry]
        px = pixel_polygons(clipped, transform)
        area_px, perim_px = sum(p.area for p in px), sum(p.length for p in px)
        got = int(mask.sum())
        # measured differences are below 0.2 %; a wrong CRS or scale would blow far past this
        assert abs(got - area_px) <= 0.005 * area_px + 0.02 * perim_px, (tif.name, got, area_px, perim_px)
    assert total_feats == 213
    assert empty_tiles == 3


def test_vegas_mask_pixel_centres_agree_with_polygons(vegas_root):
    """Grid alignment, checked independently of rasterio: a pixel is 1 iff its centre lies in a building (pixels
    whose centre is within a hair of an edge are not judged). A half-pixel shift fails this."""
    rng = np.random.default_rng(0)
    checked = 0
    for tif, gj in _vegas_pairs(vegas_root):
        gdf = read_buildings(gj)
        if len(gdf) == 0:
            continue
        with rasterio.open(tif) as src:
            transform = src.transform
        mask = tile_mask(tif, gj)[0]
        union = shapely.union_all(pixel_polygons(gdf, transform))
        rows, cols = np.nonzero(mask)  # half the samples from building pixels, half anywhere
        pick = rng.integers(0, len(rows), 1500)
        r = np.concatenate([rows[pick], rng.integers(0, mask.shape[0], 1500)])
        c = np.concatenate([cols[pick], rng.integers(0, mask.shape[1], 1500)])
        x, y = c + 0.5, r + 0.5
        inside = shapely.contains_xy(union, x, y)
        near_edge = shapely.distance(union.boundary, shapely.points(x, y)) < 1e-3
        judged = ~near_edge
        assert (mask[r, c].astype(bool)[judged] == inside[judged]).all(), tif.name
        checked += int(judged.sum())
    assert checked > 15000


def test_vegas_pixel_polygons_are_inside_the_tile(vegas_small):
    tif = vegas_small / "PS-RGB" / "RGB-PanSharpen_AOI_2_Vegas_img1265.tif"
    gj = vegas_small / "geojson_buildings" / "buildings_AOI_2_Vegas_img1265.geojson"
    with rasterio.open(tif) as src:
        transform, w, h = src.transform, src.width, src.height
    polys = pixel_polygons(read_buildings(gj), transform)
    assert len(polys) >= 40
    xs = np.concatenate([np.asarray(p.exterior.coords)[:, 0] for p in polys])
    ys = np.concatenate([np.asarray(p.exterior.coords)[:, 1] for p in polys])
    # SpaceNet labels are clipped to the tile: pixel coords lie in [0, 650] (tiny float slack)
    assert xs.min() > -0.5 and ys.min() > -0.5 and xs.max() < w + 0.5 and ys.max() < h + 0.5


# ------------------------------------------------------------------------------------------------ synthetic, exact


def test_mask_equals_known_rectangles_pixel_by_pixel(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=2, size=48, buildings_per_tile=4, seed=3)
    for t in aoi.tiles:
        m = tile_mask(t.images["PS-RGB"], t.labels)
        exp = t.expected_mask()
        assert exp.sum() > 0
        np.testing.assert_array_equal(m[0], exp)


def test_rasterize_single_rectangle_exact():
    transform = Affine(0.5, 0, 100.0, 0, -0.5, 50.0)  # 0.5 units per pixel
    # pixel cols 2..5 (x 101..103), rows 4..9 (y 48..45)
    rect = box(101.0, 45.0, 103.0, 48.0)
    m = rasterize([rect], transform, (12, 10))
    exp = np.zeros((12, 10), np.uint8)
    exp[4:10, 2:6] = 1
    np.testing.assert_array_equal(m, exp)
    assert rasterize([], transform, (3, 4)).shape == (3, 4)


def test_labels_in_3857_give_the_same_mask(tmp_path):
    a = make_aoi(tmp_path / "wgs", n_tiles=2, size=64, seed=5, touching_pair=True)
    b = make_aoi(tmp_path / "merc", n_tiles=2, size=64, seed=5, touching_pair=True, labels_crs="EPSG:3857")
    assert "3857" in b.tiles[0].labels.read_text()[:200]
    for ta, tb in zip(a.tiles, b.tiles):
        ma = tile_mask(ta.images["PS-RGB"], ta.labels, boundary=True)
        mb = tile_mask(tb.images["PS-RGB"], tb.labels, boundary=True)
        # pixel-edge aligned rectangles survive the round trip exactly, or within a couple of edge pixels
        assert (ma[0] != mb[0]).sum() <= 2
        np.testing.assert_array_equal(ma[0], ta.expected_mask())
        assert (ma[1] != mb[1]).sum() <= 4


def test_image_in_utm_labels_in_4326(tmp_path):
    """Image grid in a projected CRS: labels (lon/lat) are reprojected onto it."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True)
    x0, y0 = to_utm.transform(2.35, 48.86)
    x0, y0 = round(x0), round(y0)
    transform = Affine(0.5, 0, x0, 0, -0.5, y0)
    tif = write_geotiff(tmp_path / "utm.tif", np.ones((3, 40, 40), np.uint16), crs="EPSG:32631", transform=transform)
    rect_utm = box(x0 + 5, y0 - 15, x0 + 12, y0 - 4)  # cols 10..24, rows 8..30
    to_wgs = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    gj = write_geojson(tmp_path / "b.geojson", [shapely.transform(rect_utm, to_wgs.transform, interleaved=False)])
    m = tile_mask(tif, gj)[0]
    exp = np.zeros((40, 40), np.uint8)
    exp[8:30, 10:24] = 1
    assert (m != exp).sum() <= 2


def test_empty_label_files_give_empty_masks(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=3, empty_tiles=[0], missing_labels=[1])
    tif = aoi.tiles[0].images["PS-RGB"]
    for crs_member in (True, False):
        gj = write_empty_geojson(tmp_path / f"empty_{crs_member}.geojson", crs_member=crs_member)
        gdf = read_buildings(gj)
        assert len(gdf) == 0 and gdf.crs.to_epsg() == 4326
        m = tile_mask(tif, gj, boundary=True)
        assert m.shape == (2, 64, 64) and m.sum() == 0
    assert tile_mask(aoi.tiles[1].images["PS-RGB"], None).sum() == 0
    # a features-less file with no "features" key at all
    bare = tmp_path / "bare.geojson"
    bare.write_text('{"type": "FeatureCollection"}')
    assert len(read_buildings(bare)) == 0


def test_z_coordinates_flattened_and_crs84_read(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=1, z=True)
    raw = json.loads(aoi.tiles[0].labels.read_text())
    assert len(raw["features"][0]["geometry"]["coordinates"][0][0]) == 3
    assert "CRS84" in raw["crs"]["properties"]["name"]
    gdf = read_buildings(aoi.tiles[0].labels)
    assert len(gdf) == len(aoi.tiles[0].boxes_px)
    assert not any(g.has_z for g in gdf.geometry)
    assert gdf["feature_index"].tolist() == list(range(len(gdf)))
    for g, exp in zip(gdf.geometry, aoi.tiles[0].polygons):
        assert g.symmetric_difference(exp).area < 1e-16


def test_bowtie_polygon_repaired_or_rejected(tmp_path):
    x, y, d = 2.35, 48.86, 20 * PIXEL_DEG
    good = box(x, y - d, x + d, y)
    bowtie = Polygon([(x, y), (x + d, y - d), (x + d, y), (x, y - d), (x, y)])
    assert not bowtie.is_valid
    gj = write_geojson(tmp_path / "b.geojson", [good, bowtie])
    gdf = read_buildings(gj)
    assert len(gdf) == 2 and gdf.geometry.is_valid.all()
    repaired = gdf.geometry.iloc[1]
    assert isinstance(repaired, MultiPolygon) and len(repaired.geoms) == 2
    assert repaired.area == pytest.approx(d * d / 2, rel=1e-6)
    with pytest.raises(LabelError) as exc:
        read_buildings(gj, on_invalid="raise")
    assert "b.geojson" in str(exc.value) and "feature 1" in str(exc.value)


def test_degenerate_polygon_dropped(tmp_path):
    x, y, d = 2.35, 48.86, 20 * PIXEL_DEG
    flat = Polygon([(x, y), (x + d, y), (x + 2 * d, y), (x, y)])  # zero area
    gj = write_geojson(tmp_path / "f.geojson", [box(x, y - d, x + d, y), flat])
    gdf = read_buildings(gj)
    assert gdf["feature_index"].tolist() == [0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"type": "FeatureCollection", "features": [', "not readable GeoJSON"),
        (b"\xff\xfe\x00garbage", "not readable GeoJSON"),
        ('{"type": "Topology", "objects": {}}', "expected a GeoJSON FeatureCollection"),
        ('[1, 2, 3]', "expected a GeoJSON FeatureCollection"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
         '"geometry": {"type": "Point", "coordinates": [2.35, 48.86]}}]}', "feature 0 is a Point"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
         '"geometry": {"type": "Polygon", "coordinates": [[[2.35]]]}}]}', "feature 0 has malformed geometry"),
        ('{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:nonsense"}}, '
         '"features": []}', "unknown CRS"),
    ],
)
def test_unreadable_geojson_raises_label_error(tmp_path, content, fragment):
    p = tmp_path / "bad.geojson"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LabelError) as exc:
        read_buildings(p)
    assert str(p) in str(exc.value) and fragment in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_missing_labels_file(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        read_buildings(tmp_path / "nope.geojson")


def test_boundary_band_separates_touching_buildings():
    transform = Affine(1, 0, 0, 0, -1, 40)  # 1 unit per pixel, y up
    a = box(5, 40 - 25, 15, 40 - 5)  # cols 5..14, rows 5..24
    b = box(15, 40 - 25, 25, 40 - 5)  # cols 15..24 (shares a's right edge)
    far = box(30, 40 - 10, 36, 40 - 4)  # isolated, cols 30..35, rows 4..9
    fp = rasterize([a, b, far], transform, (40, 40))
    band = boundary_band([a, b, far], transform, (40, 40), width=3)
    # the shared wall: both sides of x=15 are in the band along the whole contact
    assert band[6:24, 14].all() and band[6:24, 15].all()
    # interiors stay free, so footprint minus band has 3 separate components
    assert band[10:20, 7:13].sum() == 0 and band[10:20, 17:23].sum() == 0
    from scipy import ndimage

    _, n = ndimage.label(fp.astype(bool) & ~band.astype(bool))
    _, n_fp = ndimage.label(fp)
    assert n_fp == 2 and n == 3
    # inner edge ring of the isolated building, 1 px deep for width 3, nothing outside it
    ring = np.zeros((40, 40), np.uint8)
    ring[4:10, 30:36] = 1
    ring[5:9, 31:35] = 0
    np.testing.assert_array_equal(band[0:12, 28:40], ring[0:12, 28:40])
    # a wider band is deeper
    assert boundary_band([far], transform, (40, 40), width=5)[4:10, 30:36].sum() == 6 * 6 - 2 * 2


def test_boundary_band_fills_narrow_gap():
    transform = Affine(1, 0, 0, 0, -1, 20)
    a, b = box(2, 5, 8, 15), box(9, 5, 15, 15)  # 1-pixel gap at column 8
    band = boundary_band([a, b], transform, (20, 20), width=3)
    assert band[6:14, 8].all()  # gap pixels touch both buildings
    assert rasterize([a, b], transform, (20, 20))[6:14, 8].sum() == 0


def test_tile_mask_two_channels_from_make_aoi(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=1, size=64, touching_pair=True)
    t = aoi.tiles[0]
    m = tile_mask(t.images["PS-RGB"], t.labels, boundary=True, boundary_width=3)
    assert m.shape == (2, 64, 64) and m.dtype == np.uint8
    np.testing.assert_array_equal(m[0], t.expected_mask())
    (c0, r0, c1, r1), (d0, *_rest) = t.boxes_px[0], t.boxes_px[1]
    assert c1 == d0  # the pair shares an edge
    assert m[1][r0 + 1 : r1 - 1, c1 - 1 : c1 + 1].all()
    # band only where the footprint is or right between buildings
    assert (m[1].astype(bool) & ~m[0].astype(bool)).sum() <= 4


def test_pixel_polygons_roundtrip(tmp_path):
    aoi = make_aoi(tmp_path / "a", n_tiles=1, size=64)
    t = aoi.tiles[0]
    polys = pixel_polygons(read_buildings(t.labels), t.transform)
    for p, (c0, r0, c1, r1) in zip(polys, t.boxes_px):
        assert p.symmetric_difference(box(c0, r0, c1, r1)).area < 1e-6
    mp = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])
    assert len(pixel_polygons([mp], Affine.identity())) == 2


# ------------------------------------------------------------------------------------ every building of an AOI


def _aoi_features(result) -> list:
    return json.loads(result.geojson)["features"]


def test_aoi_buildings_are_the_catalogs_buildings_rounded(vegas_small):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.labels import COORD_DECIMALS, aoi_buildings

    cat = load_catalog(vegas_small)
    out = aoi_buildings(cat, refresh=True)
    feats = _aoi_features(out)
    assert out.count == len(feats) == int(cat["n_buildings"].sum()) == 49 and not out.skipped
    truth = read_buildings(cat.loc["img1265", "labels"]).geometry.tolist()
    for i in (0, 17, 48):  # the one labelled file's buildings, in file order
        got = shapely.geometry.shape(feats[i]["geometry"])
        assert shapely.get_coordinates(got) == pytest.approx(shapely.get_coordinates(truth[i]), abs=6e-7)
        assert got.centroid.coords[0] == pytest.approx(tuple(out.centroids[i]), abs=1e-6)
        coords = shapely.get_coordinates(got).ravel()
        assert np.array_equal(coords, np.round(coords, COORD_DECIMALS))


def test_aoi_buildings_cache_reused_and_invalidated(tmp_path):
    import geopandas as gpd
    from bdcore.data.labels import aoi_buildings

    paths = []
    for k, n in enumerate((2, 3)):
        p = tmp_path / f"buildings_{k}.geojson"
        write_geojson(p, [box(2.3 + 0.001 * i, 48.85 + k * 0.01, 2.3005 + 0.001 * i, 48.8505 + k * 0.01)
                          for i in range(n)])
        paths.append(str(p))
    cat = gpd.GeoDataFrame({"labels": paths + [None]}, geometry=[box(0, 0, 1, 1)] * 3, crs=4326)
    first = aoi_buildings(cat)
    again = aoi_buildings(cat)
    assert (first.from_cache, again.from_cache, again.count, again.geojson) == (False, True, 5, first.geojson)
    write_geojson(tmp_path / "buildings_1.geojson", [box(2.3, 48.86, 2.3005, 48.8605)])  # one file changes
    changed = aoi_buildings(cat)
    assert (changed.from_cache, changed.count) == (False, 3)
    (tmp_path / "buildings_0.geojson").write_text("{not json")  # a broken file: left out and named, nothing lost
    broken = aoi_buildings(cat)
    assert broken.count == 1 and list(broken.skipped) == [paths[0]]
    assert "not readable GeoJSON" in broken.skipped[paths[0]]
    assert aoi_buildings(cat).skipped == broken.skipped  # the cache keeps what was left out


def test_aoi_buildings_keeps_the_polygons_of_a_file_with_a_point(tmp_path):
    """A Point in a labels file: its buildings are still drawn (as the catalog counts them), only the Point is not."""
    from bdcore.data.catalog import load_catalog
    from bdcore.data.labels import aoi_buildings

    aoi = make_aoi(tmp_path / "a", n_tiles=2)
    t = aoi.tiles[0]
    fc = json.loads(t.labels.read_text())
    point = {"type": "Point", "coordinates": [2.35, 48.86]}
    fc["features"].insert(1, {"type": "Feature", "properties": {}, "geometry": point})
    t.labels.write_text(json.dumps(fc))
    with pytest.raises(LabelError, match="feature 1 is a Point"):
        read_buildings(t.labels)
    cat = load_catalog(aoi.root)
    out = aoi_buildings(cat)
    assert out.count == int(cat["n_buildings"].sum()) == aoi.n_buildings and not out.skipped


def test_aoi_buildings_of_the_real_vegas_sample(vegas_root):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.labels import aoi_buildings

    cat = load_catalog(vegas_root)
    out = aoi_buildings(cat)
    assert out.count == int(cat["n_buildings"].sum()) > 0 and not out.skipped
    lon, lat = out.centroids.T
    minx, miny, maxx, maxy = cat.total_bounds
    assert (minx <= lon).all() and (lon <= maxx).all() and (miny <= lat).all() and (lat <= maxy).all()
