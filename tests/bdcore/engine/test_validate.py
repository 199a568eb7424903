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


def _val_items(shapes, seed=0) -> list[dict]:
    """Val items of the given (H, W) shapes: noise images with a few bright square 'buildings' in the mask."""
    import torch

    rng = np.random.default_rng(seed)
    items = []
    for h, w in shapes:
        mask = np.zeros((1, h, w), np.float32)
        for _ in range(3):
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask[0, y : y + 10, x : x + 10] = 1
        img = (rng.random((3, h, w)) * 0.3 + mask * 0.6).astype(np.float32)
        items.append({"image": torch.from_numpy(img), "mask": torch.from_numpy(mask)})
    return items


def test_batched_evaluation_equals_batch_one():
    """Same-shape tiles go through the model together; a tile of another shape on its own; the figures (loss, pixel
    and building counts, which tile is scored as polygons) are those of one tile at a time."""
    import contextlib

    import torch

    from bdcore.engine.config import RunConfig
    from bdcore.engine.device import DistInfo
    from bdcore.engine.models import build_model
    from bdcore.engine.validate import eval_chunk, evaluate

    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 3, 1, encoder_weights=None).eval()
    items = _val_items([(64, 64), (64, 64), (48, 80), (64, 64), (64, 64)])
    out = {}
    for batch in (1, 4):
        cfg = RunConfig(encoder="resnet18", encoder_weights=None, batch_size=batch, crop_size=64, workers=0,
                        threshold=0.5, building_f1_tiles=3, device="cpu")
        out[batch] = evaluate(model, items, cfg, torch.device("cpu"), DistInfo(), contextlib.nullcontext)
    assert eval_chunk(cfg, 64, 64) == 8 and eval_chunk(cfg.model_copy(update={"batch_size": 1}), 64, 64) == 2
    assert out[1]["val_tiles"] == out[4]["val_tiles"] == 5
    assert out[4] == pytest.approx(out[1], rel=1e-5, abs=1e-7)
    assert out[1]["val_iou"] > 0  # the counts are real (an all-empty prediction would make this check vacuous)
