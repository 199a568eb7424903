"""Torch dataset over catalog tiles: ``SampleSpec`` (what one sample is), ``SpaceNetSegmentation`` and
``build_datasets`` (a run config's train/val pair).

Data path per sample (kept cheap so it is never the training bottleneck):

    GeoTIFF + geojson ──(first epoch only)──► ArrayCache .npy (raw uint16 CHW, uint8 masks)
    .npy ──(pread of the crop's rows only)──► crop window ──► normalize (BandStats) ──► jitter ──► pad ──► flip/rot90

``SampleSpec(raw=True)`` (training, ``build_datasets``) stops after the geometric step on the stored dtype:
crop window ──► pad ──► flip/rot90, and the item carries the photometric parameters; normalisation and jitter run
batched on the device (``bdcore.data.device_batch.BatchPrep``; the same random draws, so the same samples).

Normalisation stays ``(astype(float32) - lo) / span`` clipped (bit-identical to ``imagery.normalize``; a
65,536-entry per-band lookup table via ``np.take`` measured ~3x slower here, since numpy widens the uint16 indices to
int64 first).

Persistent DataLoader workers keep their own copy of the dataset, so ``set_epoch`` in the main process does not reach
them: index the dataset with ``(epoch, index)`` pairs (``ds[(epoch, i)]``; what the trainer's batch sampler yields).

Randomness: every item draws from its own ``numpy.random.Generator`` seeded by
``(dataset seed, epoch, index)``. It therefore does not depend on which DataLoader worker serves the item, so
``num_workers=0`` and ``num_workers=N`` yield identical batches for the same sampler order (a seeded
DataLoader ``generator``). Call :meth:`SpaceNetSegmentation.set_epoch` once per epoch; if a trainer never does,
the epoch is taken from torch's per-iteration worker base seed (inside workers) or from a pass counter
(``num_workers=0``), so augmentations still change from epoch to epoch.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bdcore.data import imagery, labels
from bdcore.data.augment import (Augment, apply_geometric, center_crop_box, geometric, geometric_params, pad_to,
                                 photometric, photometric_params, random_crop_box)
from bdcore.data.cache import ArrayCache
from bdcore.data.catalog import CatalogError, load_catalog
from bdcore.data.imagery import BandStats
from bdcore.data.products import DEFAULT_PRODUCT
from bdcore.data.split import config_split
from bdcore.progress import Progress

log = logging.getLogger(__name__)


AUTO_WORKERS_CAP = 16  # more loader workers per GPU than this buys nothing measurable and costs memory
CPU_WORKERS = 2  # on CPU the model, not the loader, is the bottleneck


def loader_workers(workers: int | None, device_type: str) -> int:
    """DataLoader workers per process: ``workers`` when set; None (auto) = on CUDA the machine's cores shared by this
    host's torchrun processes (``LOCAL_WORLD_SIZE``), at most 16; elsewhere 2."""
    if workers is not None:
        return int(workers)
    if device_type != "cuda":
        return CPU_WORKERS
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(AUTO_WORKERS_CAP, (os.cpu_count() or 1) // local))


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM and SIGINT.

    They share the trainer's process group, and torchrun (``killpg``), SLURM preemption and Ctrl-C signal the whole
    group: a worker that died of it made the trainer fail before it could save. The trainer alone handles the
    signal (finish the step, save ``last.pt``, state ``stopped``); its workers exit when it does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DatasetError(ValueError):
    """A catalog/tile selection or sample spec the dataset cannot use."""


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a tile is.

    ``crop_size=None``: the whole tile, zero-padded at bottom/right to a multiple of ``pad_multiple`` (e.g. 32 for
    U-Net strides; padded pixels are background). With ``crop_size``: a random crop when ``augment`` is given, else
    the centre crop; a tile smaller than the crop is zero-padded. ``augment``: the augmentation ranges (None: no
    augmentation). ``boundary``: a second mask channel, the boundary/contact band ``boundary_width`` pixels wide.
    ``samples_per_tile`` samples are drawn from each tile per epoch. ``seed``: None takes torch's initial seed.
    ``bands``: 0-based band indices to read (None: all). ``raw``: the item holds the crop in its stored dtype and a
    uint8 mask (crop, padding and geometric augmentation applied) plus ``valid`` and, with ``augment``, ``photo``
    (see ``bdcore.data.device_batch``): normalisation and photometric jitter are left to the device."""

    product: str = DEFAULT_PRODUCT
    crop_size: int | None = 256
    augment: Augment | None = None
    boundary: bool = False
    boundary_width: int = 3
    pad_multiple: int = 1
    samples_per_tile: int = 1
    seed: int | None = None
    bands: tuple[int, ...] | None = None
    raw: bool = False

    def __post_init__(self) -> None:
        if self.crop_size is not None and self.crop_size < 1:
            raise DatasetError(f"crop_size must be a positive int or None, got {self.crop_size}")
        if self.samples_per_tile < 1:
            raise DatasetError(f"samples_per_tile must be >= 1, got {self.samples_per_tile}")
        if self.pad_multiple < 1:
            raise DatasetError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))  # hashable, like the rest


class SpaceNetSegmentation(Dataset):
    """Image/mask samples from catalog tiles, as ``spec`` says.

    Item: ``{"image": float32 (C,h,w) in [0,1], "mask": float32 (K,h,w) in {0,1}, "tile_id": str}``,
    K = 1 (footprint) or 2 (footprint, boundary band); with ``spec.raw``: ``{"image": stored dtype (C,h,w), "mask":
    uint8 (K,h,w), "valid": int64 (y0, y1, x0, x1), "photo": float64 (b, c, g) (with augment), "tile_id"}``.
    ``ds[i]`` or ``ds[(epoch, i)]`` (the epoch given with the index, for persistent workers). ``len = len(tile_ids) * samples_per_tile``.
    ``stats``: a ``BandStats``; None computes ``imagery.band_stats(catalog, product)`` (cached on disk).
    ``cache``: True = the default ``ArrayCache()``, False = decode the GeoTIFF/GeoJSON for every sample.
    """

    def __init__(self, catalog, tile_ids: Sequence[str], spec: SampleSpec = SampleSpec(),
                 stats: BandStats | None = None, cache: ArrayCache | bool = True):
        self.tile_ids = [str(t) for t in tile_ids]
        if not self.tile_ids:
            raise DatasetError("no tiles selected for this dataset; check the split (val_fraction) and the catalog")
        self.image_paths, self.label_paths = _tile_paths(catalog, self.tile_ids, spec.product)
        self.spec = spec
        self.stats = stats if stats is not None else imagery.band_stats(catalog, product=spec.product)
        self.cache: ArrayCache | None = ArrayCache() if cache is True else (cache or None)
        self.seed = int(spec.seed) if spec.seed is not None else int(torch.initial_seed()) & 0xFFFFFFFF
        self.epoch: int | None = None
        self._calls = 0

    # -- what the trainer reads (and sets)
    @property
    def crop_size(self) -> int | None:
        return self.spec.crop_size

    @property
    def samples_per_tile(self) -> int:
        return self.spec.samples_per_tile

    @samples_per_tile.setter
    def samples_per_tile(self, n: int) -> None:
        self.spec = replace(self.spec, samples_per_tile=int(n))

    # -- bookkeeping
    def __len__(self) -> int:
        return len(self.tile_ids) * self.spec.samples_per_tile

    def set_epoch(self, epoch: int) -> None:
        """Make augmentation a pure function of (seed, epoch, index); call at the start of every epoch."""
        self.epoch = int(epoch)

    def _epoch_key(self) -> int:
        if self.epoch is not None:
            return self.epoch
        info = torch.utils.data.get_worker_info()
        if info is not None:  # per-iteration base seed shared by all workers of this DataLoader pass
            return (int(info.seed) - int(info.id)) & 0xFFFFFFFFFFFF | (1 << 50)
        return self._calls // len(self) | (1 << 51)

    def item_rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch_key() if epoch is None else int(epoch), int(index)])

    # -- pixels
    def raw_image(self, t: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.image(self.image_paths[t], self.spec.product, self.spec.bands)
        return imagery.read_image(self.image_paths[t], bands=self.spec.bands)

    def raw_mask(self, t: int) -> np.ndarray:
        spec = self.spec
        if self.cache is not None:
            return self.cache.mask(self.image_paths[t], self.label_paths[t], spec.boundary, spec.boundary_width)
        return labels.tile_mask(self.image_paths[t], self.label_paths[t], spec.boundary, spec.boundary_width)

    def warm_cache(self, progress: Progress | None = None) -> int:
        """Decode every tile into the cache now (e.g. before training); returns the tile count."""
        for t in range(len(self.tile_ids)):
            self.raw_image(t)
            self.raw_mask(t)
            if progress:
                progress(t + 1, len(self.tile_ids))
        return len(self.tile_ids)

    def _normalize(self, arr: np.ndarray) -> np.ndarray:
        """``imagery.normalize`` (bit-identical), done in place for integer images to save temporaries."""
        if not np.issubdtype(arr.dtype, np.integer) or len(self.stats.lo) != arr.shape[0]:
            return np.asarray(imagery.normalize(arr, self.stats), dtype=np.float32)
        return imagery.normalize_bands(arr, self.stats.lo, self.stats.hi)

    def _box(self, t: int, img_shape, mask_shape, rng) -> tuple[int, int, int, int, int, int]:
        """(y0, x0, ch, cw) of the sample window and the (out_h, out_w) it is padded to."""
        _, h, w = img_shape
        if tuple(mask_shape[1:]) != (h, w):
            where = f"clear the cache folder {self.cache.root}" if self.cache is not None else "check the labels file"
            raise DatasetError(f"mask {tuple(mask_shape[1:])} and image {(h, w)} differ for tile {self.tile_ids[t]} "
                               f"({self.image_paths[t]}); {where}")
        size = self.spec.crop_size
        if size is None:
            m = self.spec.pad_multiple
            return 0, 0, h, w, -(-h // m) * m, -(-w // m) * m
        box = random_crop_box(rng, h, w, size) if self.spec.augment else center_crop_box(h, w, size)
        return (*box, size, size)

    def _window(self, t: int, rng) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Raw image and mask of the sample window of tile ``t``, and the (out_h, out_w) to pad them to."""
        spec = self.spec
        if self.cache is not None:  # only the window's rows are read from the cache files
            with self.cache.open_image(self.image_paths[t], spec.product, spec.bands) as img_src, \
                    self.cache.open_mask(self.image_paths[t], self.label_paths[t], spec.boundary,
                                         spec.boundary_width) as mask_src:
                y0, x0, ch, cw, out_h, out_w = self._box(t, img_src.shape, mask_src.shape, rng)
                img_rows, mask_rows = img_src.rows(y0, y0 + ch), mask_src.rows(y0, y0 + ch)
        else:
            img_src, mask_src = self.raw_image(t), self.raw_mask(t)
            y0, x0, ch, cw, out_h, out_w = self._box(t, img_src.shape, mask_src.shape, rng)
            img_rows, mask_rows = img_src[:, y0 : y0 + ch], mask_src[:, y0 : y0 + ch]
        return img_rows[:, :, x0 : x0 + cw], mask_rows[:, :, x0 : x0 + cw], out_h, out_w

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (None, int(key))
        if not 0 <= index < len(self):
            raise IndexError(index)
        t = index // self.spec.samples_per_tile
        aug = self.spec.augment
        rng = self.item_rng(index, epoch) if aug else None
        self._calls += 1
        raw, mask, out_h, out_w = self._window(t, rng)
        if self.spec.raw:
            return {**self._raw_item(raw, mask, out_h, out_w, rng), "tile_id": self.tile_ids[t]}
        img = self._normalize(raw)
        if aug:
            img = photometric(img, rng, aug)
        img, mask = pad_to(img, out_h, out_w), pad_to(mask, out_h, out_w)
        if aug:  # a non-square output cannot turn by 90°: that would change its shape
            img, mask = geometric(rng, aug if out_h == out_w else replace(aug, rot90=False), img, mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "tile_id": self.tile_ids[t],
        }

    def _raw_item(self, raw: np.ndarray, mask: np.ndarray, out_h: int, out_w: int,
                  rng: np.random.Generator | None) -> dict:
        """The ``spec.raw`` item: stored-dtype crop, uint8 mask, valid box and photometric parameters, drawn from
        ``rng`` in the CPU path's order (photometric, then geometric), so both paths make the same sample."""
        aug = self.spec.augment
        photo = photometric_params(rng, aug) if aug else None
        ch, cw = raw.shape[1:]
        img, mask = pad_to(raw, out_h, out_w), pad_to(mask, out_h, out_w)
        valid = (0, ch, 0, cw)
        if aug:
            flips = geometric_params(rng, aug if out_h == out_w else replace(aug, rot90=False))
            img, mask = apply_geometric(flips, img, mask)
            if (ch, cw) != (out_h, out_w):  # where the crop's pixels went (padding is zeroed after the jitter)
                valid = _box_of(apply_geometric(flips, pad_to(np.ones((1, ch, cw), bool), out_h, out_w))[0][0])
        out = {"image": torch.from_numpy(np.ascontiguousarray(img)),
               "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)),
               "valid": torch.tensor(valid, dtype=torch.int64)}
        if photo is not None:
            out["photo"] = torch.tensor(photo, dtype=torch.float64)
        return out


def _box_of(inside: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True rectangle of a (H,W) bool array."""
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _path_or_none(value: Any) -> str | None:
    """A catalog cell holding a path, or None for None/NaN (pandas' missing value in an object column)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _tile_paths(catalog, tile_ids: list[str], product: str) -> tuple[list[str], list[str | None]]:
    """Absolute (image paths, labels paths or None) of ``tile_ids`` (the catalog's index)."""
    pos = {str(t): i for i, t in enumerate(catalog.index)}
    missing = [t for t in tile_ids if t not in pos]
    if missing:
        raise DatasetError(f"tile ids not in the catalog: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    images: list[str] = []
    label_paths: list[str | None] = []
    for tid in tile_ids:
        row = catalog.iloc[pos[tid]]
        img, lab = _path_or_none(row.get(product)), _path_or_none(row.get("labels"))
        if img is None:
            raise DatasetError(
                f"tile {tid} has no {product} image in the catalog; pick a product every tile has "
                "(python -m bdcore catalog DIR lists them)"
            )
        images.append(os.path.abspath(img))
        label_paths.append(os.path.abspath(lab) if lab is not None else None)
    return images, label_paths


def build_datasets(cfg) -> tuple[SpaceNetSegmentation, SpaceNetSegmentation]:
    """(train, val) datasets for a RunConfig: split by tile, shared band stats.

    Val: whole tiles at their true size, no augmentation (the evaluator pads to the network stride and crops back,
    so metrics never count padding).

    Train: random ``crop_size`` crops with augmentation (``crop_size=None``: whole tiles padded to /32), ``raw``
    items (normalised and jittered on the device by the trainer's ``device_batch.BatchPrep``).

    Only tiles with a label file are used (``catalog.labelled_tiles``: an unlabelled tile is not known to be empty);
    a folder with no labelled tile is a DatasetError naming it.
    """
    root = cfg.resolved_data_root()
    cat = load_catalog(root)
    try:  # unlabelled tiles are left out (not known to be empty); none labelled is an error naming the folder
        split = config_split(cat, cfg)
    except CatalogError as exc:
        raise DatasetError(str(exc)) from None
    labelled = split.tiles
    if len(labelled) < len(cat):
        log.info("training on the %d labelled tile(s) of %s; %d unlabelled tile(s) left out",
                 len(labelled), root, len(cat) - len(labelled))
    stats = imagery.band_stats(cat, product=cfg.product)
    common = dict(product=cfg.product, boundary=bool(cfg.boundary), seed=int(cfg.seed))
    train_spec = SampleSpec(crop_size=cfg.crop_size, augment=Augment(), pad_multiple=32,
                            samples_per_tile=int(cfg.samples_per_tile), raw=True, **common)
    train = SpaceNetSegmentation(labelled, split.train, train_spec, stats=stats)
    if not split.val:
        raise DatasetError("the split gave no validation tiles; set val_fraction above 0 in the run config")
    val = SpaceNetSegmentation(labelled, split.val, SampleSpec(crop_size=None, **common), stats=stats)
    return train, val
