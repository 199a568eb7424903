"""Masks ↔ polygons: lossless round trips, splitting touching buildings, specks, holes, georeferencing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import Polygon, box

from bdcore.metrics.polygons import (
    mask_to_polygons,
    orthogonalise,
    polygons_to_geo,
    polygons_to_mask,
    regularise,
    vertex_count,
)
from bdcore.metrics.scoring import match_buildings


def known_buildings(seed: int = 0, n: int = 30, size: int = 400) -> list[Polygon]:
    """~30 non-touching rectangles and L-shapes with integer (pixel-edge) corners on a grid of 60-px cells."""
    rng = np.random.default_rng(seed)
    cells = [(r, c) for r in range(size // 60) for c in range(size // 60)]
    out = []
    for k, idx in enumerate(rng.choice(len(cells), size=n, replace=False)):
        r, c = cells[idx]
        x0, y0 = c * 60 + int(rng.integers(2, 10)), r * 60 + int(rng.integers(2, 10))
        w, h = int(rng.integers(12, 45)), int(rng.integers(12, 45))
        if k % 2:
            out.append(box(x0, y0, x0 + w, y0 + h))
        else:  # an L: the box minus its top-right quarter
            cw, ch = w // 2, h // 2
            out.append(Polygon([(x0, y0), (x0 + cw, y0), (x0 + cw, y0 + ch), (x0 + w, y0 + ch), (x0 + w, y0 + h),
                                (x0, y0 + h)]))
    return out


def test_rasterize_polygonize_roundtrip_30_buildings():
    truth = known_buildings()
    assert len(truth) == 30 and not shapely.union_all(truth).geom_type == "Polygon"
    mask = polygons_to_mask(truth, (400, 400))
    assert mask.dtype == np.uint8 and mask.sum() == pytest.approx(sum(p.area for p in truth))
    found = mask_to_polygons(mask.astype(np.float32))
    r = match_buildings(truth, found)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (30, 0, 0, 1.0)
    assert min(iou for _, _, iou in r["matches"]) > 0.95
    # with no simplification the polygons are exactly the pixel edges
    exact = mask_to_polygons(mask.astype(np.float32), simplify=0)
    r0 = match_buildings(truth, exact)
    assert r0["tp"] == 30 and all(iou == 1.0 for _, _, iou in r0["matches"])
    assert np.array_equal(polygons_to_mask(exact, mask.shape), mask)


def test_pixel_coordinates_are_corners_and_confidence_is_mean_prob():
    prob = np.zeros((20, 30), np.float32)
    prob[3:8, 4:10] = 0.7  # rows 3..7, cols 4..9
    prob[3:5, 4:10] = 0.9
    [(poly, conf)] = mask_to_polygons(prob, simplify=0)
    assert poly.equals(box(4, 3, 10, 8))
    assert conf == pytest.approx((12 * 0.9 + 18 * 0.7) / 30)


def test_touching_buildings_split_by_boundary_channel():
    prob = np.zeros((60, 80), np.float32)
    prob[10:30, 10:30] = 0.9
    prob[10:30, 30:50] = 0.8
    assert len(mask_to_polygons(prob)) == 1  # without help they merge
    boundary = np.zeros_like(prob)
    boundary[10:30, 29:31] = 0.95  # the contact band predicted by the boundary head
    polys = mask_to_polygons(prob, boundary=boundary)
    assert len(polys) == 2
    r = match_buildings([box(10, 10, 30, 30), box(30, 10, 50, 30)], polys)
    assert r["tp"] == 2 and min(iou for _, _, iou in r["matches"]) > 0.95
    # every footprint pixel is given back to one of the two buildings
    assert polygons_to_mask(polys, prob.shape).sum() == (prob > 0.5).sum()
    assert sorted(round(c, 3) for _, c in polys) == [0.8, 0.9]


def test_blurry_prediction_with_inner_boundary_band():
    """A soft footprint spills a pixel past the building while the boundary band sits on the building's
    inner edge (as labels.boundary_band draws it): the rim outside the band must not become buildings."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    truth = []
    for r in range(0, 200, 40):
        for c in range(0, 200, 40):
            w, h = (int(v) for v in rng.integers(15, 41, size=2))  # w or h == 40: touches the neighbour
            truth.append(box(c, r, c + w, r + h))
    mask = polygons_to_mask(truth, (200, 200)).astype(np.float32)
    prob = ndimage.gaussian_filter(mask, 1.5) * 0.9 + rng.random(mask.shape).astype(np.float32) * 0.1
    boundary = np.zeros_like(prob)
    for p in truth:
        x0, y0, x1, y1 = (int(v) for v in p.bounds)
        boundary[y0:y1, [x0, x1 - 1]] = 1
        boundary[[y0, y1 - 1], x0:x1] = 1
    r = match_buildings(truth, mask_to_polygons(prob, boundary=boundary))
    assert (r["tp"], r["fp"], r["fn"]) == (len(truth), 0, 0)
    assert match_buildings(truth, mask_to_polygons(prob))["tp"] < len(truth)  # the band is what splits them


def test_watershed_split_without_boundary():
    prob = np.zeros((60, 80), np.float32)
    prob[10:30, 10:30] = 1
    prob[10:30, 40:60] = 1
    prob[18:22, 30:40] = 1  # a 4-px neck joins two 20x20 houses
    assert len(mask_to_polygons(prob)) == 1
    ws = mask_to_polygons(prob, split="watershed", simplify=0)
    assert len(ws) == 2
    assert sum(p.area for p, _ in ws) == (prob > 0.5).sum()
    one = np.zeros((60, 80), np.float32)
    one[10:30, 10:50] = 1  # a plain long building is not cut
    assert len(mask_to_polygons(one, split="watershed")) == 1


def test_noise_specks_yield_no_polygons():
    prob = np.zeros((100, 100), np.float32)
    shapes = [(h, w) for h in range(1, 6) for w in range(1, 6) if h * w < 20]  # 1..16 px specks
    for k, (h, w) in enumerate(shapes):
        r, c = 10 * (k // 8) + 1, 10 * (k % 8) + 1  # one per 10-px cell: never touching
        prob[r:r + h, c:c + w] = 0.9
    assert (prob > 0.5).sum() > 100
    assert mask_to_polygons(prob) == []
    assert mask_to_polygons(prob, split="watershed") == []
    prob[80:85, 80:85] = 0.9  # a 25 px blob is kept
    [(poly, conf)] = mask_to_polygons(prob, simplify=0)
    assert poly.equals(box(80, 80, 85, 85)) and conf == pytest.approx(0.9)
    assert len(mask_to_polygons(prob, min_area=0)) == len(shapes) + 1


def test_small_holes_filled_large_holes_kept():
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 5:35] = 1
    prob[10:13, 10:13] = 0  # 9 px hole: filled
    prob[20:30, 20:30] = 0  # 100 px courtyard: kept
    [(poly, _)] = mask_to_polygons(prob, simplify=0)
    assert len(poly.interiors) == 1
    assert poly.equals(box(5, 5, 35, 35).difference(box(20, 20, 30, 30)))
    [(nohole, _)] = mask_to_polygons(prob, simplify=0, hole_area=1000)
    assert len(nohole.interiors) == 0


def test_threshold_and_bad_shapes():
    prob = np.zeros((30, 30), np.float32)
    prob[5:15, 5:15] = 0.4
    assert mask_to_polygons(prob) == []
    assert len(mask_to_polygons(prob, threshold=0.3)) == 1
    assert len(mask_to_polygons(prob[None])) == 0  # (1,H,W) accepted
    with pytest.raises(ValueError, match="shape"):
        mask_to_polygons(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="boundary shape"):
        mask_to_polygons(prob, boundary=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="split"):
        mask_to_polygons(prob, split="magic")


def test_polygons_to_mask_edge_cases():
    assert polygons_to_mask([], (4, 5)).shape == (4, 5)
    assert polygons_to_mask([(box(0, 0, 2, 2), 0.9), Polygon()], (1, 4, 5)).sum() == 4  # (poly, conf) pairs too


def test_polygons_to_geo_uses_affine_transform():
    t = Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4000000.0)  # UTM-like, 30 cm pixels, north-up
    [geo] = polygons_to_geo([(box(10, 20, 12, 25), 0.5)], t)
    xs, ys = geo.exterior.xy
    assert min(xs) == pytest.approx(500003.0) and max(xs) == pytest.approx(500003.6)
    assert max(ys) == pytest.approx(3999994.0) and min(ys) == pytest.approx(3999992.5)
    assert geo.area == pytest.approx(10 * 0.09)
    # same as rasterio's pixel-corner convention
    assert (min(xs), max(ys)) == pytest.approx(tuple(rasterio.transform.xy(t, 20, 10, offset="ul")))


@pytest.mark.parametrize("n, buildings", [(1265, 49), (2144, 39), (2636, 27)])
def test_real_vegas_tiles_roundtrip(n, buildings, request):
    """Real SpaceNet 2 labels: geo → pixels → mask → polygons matches every building > 20 px² (F1 1.0).
    img1265 is in tests/data; the other two tiles are in the ten-tile sample in ../shared."""
    geopandas = pytest.importorskip("geopandas")
    root = request.getfixturevalue("vegas_small" if n == 1265 else "vegas_root")
    tif = root / "PS-RGB" / f"RGB-PanSharpen_AOI_2_Vegas_img{n}.tif"
    with rasterio.open(tif) as src:
        transform, shape = src.transform, (src.height, src.width)
    gdf = geopandas.read_file(root / "geojson_buildings" / f"buildings_AOI_2_Vegas_img{n}.geojson")
    truth = polygons_to_geo(shapely.force_2d(gdf.geometry.to_numpy()), ~transform)
    found = mask_to_polygons(polygons_to_mask(truth, shape).astype(np.float32))
    r = match_buildings(truth, found)
    assert r["f1"] == 1.0, (n, r["tp"], r["fp"], r["fn"])
    # and back to lon/lat: each matched polygon lands on its label
    back = polygons_to_geo([found[p] for p, _, _ in r["matches"]], transform)
    for (p, t, _), g in zip(r["matches"], back):
        orig = gdf.geometry.iloc[t]
        assert g.intersection(orig).area / g.union(orig).area > 0.8
    assert r["tp"] == buildings


# ------------------------------------------------------------------------------------------- outlines


def _noisy_prob(shape: Polygon, size: int = 100, seed: int = 0) -> np.ndarray:
    """A model-like probability map of one building: the mask blurred (1.5 px) plus smooth noise (std 0.15)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = polygons_to_mask([shape], (size, size)).astype(np.float32)
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 2)
    return np.clip(ndimage.gaussian_filter(mask, 1.5) + 0.15 * field / field.std(), 0, 1).astype(np.float32)


def _corner_cosines(poly: Polygon) -> np.ndarray:
    """|cos| of the angle between consecutive edges at every vertex (0 at a right angle, interior 90° or 270°)."""
    xy = np.asarray(poly.exterior.coords)[:-1]
    a, b = np.roll(xy, -1, axis=0) - xy, xy - np.roll(xy, 1, axis=0)
    return np.abs((a * b).sum(1)) / (np.hypot(*a.T) * np.hypot(*b.T))


L_SHAPE = Polygon([(0, 0), (40, 0), (40, 20), (20, 20), (20, 36), (0, 36)])


@pytest.mark.parametrize("angle", [0, 17, 33, 45, 62])
@pytest.mark.parametrize("shape, corners", [(box(0, 0, 42, 26), 4), (L_SHAPE, 6)], ids=["rectangle", "L"])
def test_orthogonal_outline_of_a_rotated_noisy_building_has_right_angles(shape, corners, angle):
    true = shapely.affinity.translate(shapely.affinity.rotate(shape, angle, origin=(20, 18)), 30, 32)
    prob = _noisy_prob(true, seed=angle)
    [(poly, _)] = mask_to_polygons(prob, outline="orthogonal")
    assert poly.is_valid and vertex_count(poly) == corners
    assert _corner_cosines(poly).max() < np.sin(np.radians(3))  # every corner within 3° of 90° / 270°
    assert poly.intersection(true).area / poly.union(true).area > 0.9
    [(pixels, _)] = mask_to_polygons(prob, outline="none")
    [(simple, _)] = mask_to_polygons(prob, outline="simplify")
    assert vertex_count(pixels) >= vertex_count(simple) > 3 * corners  # the staircase the other choices keep
    assert simple.equals(pixels.simplify(0.5))


def test_orthogonal_falls_back_to_the_simplified_polygon():
    triangle = Polygon([(0, 0), (30, 0), (0, 30)])  # no two perpendicular sides to snap to
    assert orthogonalise(triangle) is None
    assert regularise(triangle, "orthogonal").equals(triangle.simplify(0.5))
    flat = Polygon([(0, 0), (10, 0), (20, 0), (0, 0)])  # degenerate: no area
    assert orthogonalise(flat) is None and regularise(flat, "orthogonal").equals(flat.simplify(0.5))
    [(noisy, _)] = mask_to_polygons(_noisy_prob(box(20, 20, 60, 50)), outline="none")
    assert orthogonalise(noisy, min_iou=0.999) is None  # too unlike the pixel polygon: not taken
    assert regularise(noisy, "orthogonal").equals(orthogonalise(noisy))
    disc = shapely.Point(50, 50).buffer(25)  # a round building stays round-ish and valid
    polys = mask_to_polygons(polygons_to_mask([disc], (100, 100)).astype(np.float32), outline="orthogonal")
    assert len(polys) == 1 and polys[0][0].is_valid and polys[0][0].intersection(disc).area / disc.area > 0.9
    with pytest.raises(ValueError, match="outline must be one of none, simplify, orthogonal, got 'square'"):
        mask_to_polygons(np.zeros((8, 8), np.float32), outline="square")


def test_outline_none_keeps_exact_pixel_edges():
    truth = known_buildings(seed=3)
    mask = polygons_to_mask(truth, (400, 400))
    exact = mask_to_polygons(mask.astype(np.float32), outline="none")
    assert np.array_equal(polygons_to_mask(exact, mask.shape), mask)
    # pixel-aligned rectangles and L-shapes are already orthogonal: the outline keeps them exactly
    ortho = mask_to_polygons(mask.astype(np.float32), outline="orthogonal")
    assert [vertex_count(p) for p, _ in ortho] == [vertex_count(p) for p, _ in exact]
    assert all(p.equals(q) for (p, _), (q, _) in zip(ortho, exact))
