"""Raw items + on-device normalisation/jitter (``SampleSpec(raw=True)`` + ``BatchPrep``) make the samples the CPU
path makes; the torch normalisation is ``imagery.normalize_bands`` bit for bit; persistent workers get the epoch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import synth
import torch
from torch.utils.data import DataLoader, default_collate

from bdcore.data import imagery
from bdcore.data.augment import Augment
from bdcore.data.dataset import (
    SampleSpec,
    SpaceNetSegmentation,
    loader_workers,
    worker_init,
)
from bdcore.data.device_batch import BatchPrep, band_tensors, normalize_bands_torch
from bdcore.data.imagery import BandStats
from bdcore.engine.trainer import EpochBatchSampler

STATS = BandStats(product="PS-RGB", lo=[5.5, 0.0, 100.25], hi=[900.0, 1700.5, 1200.0])


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> pd.DataFrame:
    aoi = synth.make_aoi(tmp_path_factory.mktemp("aoi"), n_tiles=3, size=80, buildings_per_tile=4, seed=3)
    rows = [{"tile_id": f"t{i}", "PS-RGB": str(t.images["PS-RGB"]), "labels": str(t.labels)}
            for i, t in enumerate(aoi.tiles)]
    return pd.DataFrame(rows).set_index("tile_id", drop=False)


def test_torch_normalisation_is_bit_identical_to_numpy():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (3, 40, 50)).astype(np.uint16)
    arr[:, 0, :6] = np.array([0, 5, 6, 100, 1700, 65535], np.uint16)
    lo, hi = [5.5, 0.0, 101.5], [900.25, 1700.5, 101.5]  # band 3: zero span (the 1e-6 floor)
    expect = imagery.normalize_bands(arr, lo, hi)
    got = normalize_bands_torch(torch.from_numpy(arr)[None], *band_tensors(lo, hi))[0].numpy()
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("crop", [48, 96, None])  # a crop inside the tile, larger than the tile, the whole tile
def test_raw_items_prepared_on_the_device_equal_the_cpu_samples(cat, crop):
    """Same crop, flips, jitter; padding (crop 96 > 80 px tiles, whole tiles padded to /32) stays zero."""
    spec = SampleSpec(crop_size=crop, augment=Augment(), samples_per_tile=4, seed=11, boundary=True, pad_multiple=32)
    cpu = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS, cache=False)
    raw = SpaceNetSegmentation(cat, list(cat.index), replace(spec, raw=True), stats=STATS, cache=False)
    prep = BatchPrep(STATS.lo, STATS.hi, torch.device("cpu"))
    batch = default_collate([raw[(3, i)] for i in range(len(raw))])
    assert batch["image"].dtype == torch.uint16 and batch["mask"].dtype == torch.uint8
    x, y = prep(batch)
    expect = torch.stack([cpu[(3, i)]["image"] for i in range(len(cpu))])
    assert torch.equal(y, torch.stack([cpu[(3, i)]["mask"] for i in range(len(cpu))]))
    assert x.dtype == torch.float32 and x.shape == expect.shape
    torch.testing.assert_close(x, expect, rtol=0, atol=2e-6)
    assert not torch.equal(x, prep({**batch, "photo": torch.tensor([[0.0, 1.0, 1.0]] * len(raw))})[0])  # jittered
    if crop != 48:
        assert (expect == 0).all(dim=1).any() and ((x == 0) == (expect == 0)).all()  # padding


def test_epoch_index_pairs_reach_persistent_workers(cat):
    """ds[(epoch, i)] is the epoch's sample; one persistent worker serves two epochs with the right ones."""
    spec = SampleSpec(crop_size=48, augment=Augment(), seed=5, raw=True)
    ds = SpaceNetSegmentation(cat, list(cat.index), spec, stats=STATS, cache=False)
    ds.set_epoch(1)
    assert torch.equal(ds[(1, 2)]["image"], ds[2]["image"])
    assert not torch.equal(ds[(0, 2)]["image"], ds[(1, 2)]["image"])
    sampler = EpochBatchSampler(pairs=True)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=1, persistent_workers=True, worker_init_fn=worker_init)
    for epoch in (0, 1):
        sampler.set(epoch, [[0, 1], [2]])
        got = torch.cat([b["image"] for b in loader])
        assert torch.equal(got, torch.stack([ds[(epoch, i)]["image"] for i in range(3)]))


def test_auto_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, "cuda") == 16 and loader_workers(None, "cpu") == 2 and loader_workers(3, "cuda") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on the host share its cores
    assert loader_workers(None, "cuda") == 8
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert loader_workers(None, "cuda") == 1 and loader_workers(0, "cuda") == 0
