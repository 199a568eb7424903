"""Validation during training: where the ground-truth building polygons come from."""

from __future__ import annotations

import numpy as np
import pytest

import synth
from bdcore.data.catalog import load_catalog
from bdcore.data.dataset import SampleSpec, SpaceNetSegmentation
from bdcore.engine.validate import truth_polygons


@pytest.fixture(scope="module")
def aoi(tmp_path_factory):
    root = tmp_path_factory.mktemp("aoi")
    # tile 1 has no buildings (empty labels file), tile 2 no labels file; touching pairs so the mask merges them
    return synth.make_aoi(root, n_tiles=3, size=64, buildings_per_tile=3, seed=5, empty_tiles=[1],
                          missing_labels=[2], touching_pair=True)


def test_whole_tiles_use_the_label_file(aoi):
    cat = load_catalog(aoi.root)
    ds = SpaceNetSegmentation(cat, aoi.tile_ids, SampleSpec(crop_size=None, samples_per_tile=2), cache=False)
    truth = np.zeros((1, 64, 64), np.float32)  # ignored: the label file is exact
    tile = aoi.tiles[0]
    for index in (0, 1):  # both samples of tile 0
        polys = truth_polygons(ds, index, truth)
        assert len(polys) == len(tile.boxes_px)
        got = sorted(tuple(round(v, 6) for v in p.bounds) for p in polys)
        assert got == sorted(tuple(map(float, b)) for b in tile.boxes_px)
    assert truth_polygons(ds, 2, truth) == []  # the tile without buildings
    assert truth_polygons(ds, 4, truth) == []  # the tile without a labels file


def test_crops_and_other_datasets_trace_the_mask(aoi):
    cat = load_catalog(aoi.root)
    ds = SpaceNetSegmentation(cat, aoi.tile_ids[:1], SampleSpec(crop_size=32), cache=False)
    mask = np.zeros((1, 32, 32), np.float32)
    mask[0, 2:10, 2:12] = 1
    mask[0, 20:30, 20:28] = 1
    polys = truth_polygons(ds, 0, mask)
    assert sorted(p.area for p in polys) == pytest.approx([80.0, 80.0], rel=0.05)
    assert len(truth_polygons([{"mask": mask}], 0, mask)) == 2
