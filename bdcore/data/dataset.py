"""Torch datasets over a tile catalog: train/val split, decoded-array cache, crops and augmentation.

Data path per sample (kept cheap so it is never the training bottleneck):

    GeoTIFF + geojson ──(first epoch only)──► ArrayCache .npy (raw uint16 CHW, uint8 masks)
    .npy ──(pread of the crop's rows only)──► crop window ──► normalize (BandStats) ──► jitter ──► pad ──► flip/rot90

Per-sample reads go through :class:`CachedArray` (``pread`` of the crop's rows; the ``.npy`` header is parsed once
per entry), not a fresh memmap per sample: a new mapping pays a page fault per touched page and ``np.load`` parses
the header every time; together that was ~25 % of a whole-tile sample and ~60 % of a 256² crop. Normalisation stays
``(astype(float32) - lo) / span`` clipped (bit-identical to ``imagery.normalize``; a 65,536-entry per-band lookup
table via ``np.take`` measured ~3x slower here, since numpy widens the uint16 indices to int64 first).

Randomness: every item draws from its own ``numpy.random.Generator`` seeded by
``(dataset seed, epoch, index)``. It therefore does not depend on which DataLoader worker serves the item, so
``num_workers=0`` and ``num_workers=N`` yield identical batches for the same sampler order (a seeded
DataLoader ``generator``). Call :meth:`SpaceNetSegmentation.set_epoch` once per epoch; if a trainer never does,
the epoch is taken from torch's per-iteration worker base seed (inside workers) or from a pass counter
(``num_workers=0``), so augmentations still change from epoch to epoch.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bdcore import paths
from bdcore.data import catalog as catalog_mod
from bdcore.data import imagery
from bdcore.data.split import config_split
from bdcore.atomic import atomic_write

log = logging.getLogger(__name__)

class DatasetError(ValueError):
    """A catalog/tile selection the dataset cannot use."""


# --------------------------------------------------------------------------------------------- cache


def _file_sig(path: str | os.PathLike | None) -> list | None:
    if path is None:
        return None
    p = os.path.abspath(path)  # no symlink resolution: cheap, and a link is its own cache slot
    st = os.stat(p)  # FileNotFoundError names the file
    return [p, st.st_size, st.st_mtime_ns]


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class ArrayCache:
    """Decoded arrays as ``.npy`` files under ``root`` (default ``cache_dir()/arrays``), read back as memmaps.

    Keys are (absolute path, size, mtime_ns) of every source file plus the decode options, so an edited file
    is decoded again and the stale entry is deleted. Writes are atomic (temp file + ``os.replace``): concurrent
    DataLoader workers or processes may decode the same tile at once and never read half a file. The object holds
    no open files (only the root path), so it pickles into workers; memmaps are opened per access.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else paths.cache_dir() / "arrays"
        self.hits = 0
        self.misses = 0
        self._slots: dict[tuple, str] = {}  # memo of entry-name prefixes (plain strings: pickles fine)
        self._layouts: dict[str, tuple] = {}  # entry -> (shape, dtype, data offset); an entry name never changes content
        self._warned = False

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.root)!r})"

    # -- paths
    def _entry(self, kind: str, source: str | os.PathLike, slot: dict, sigs: list) -> Path:
        """``<stem>-<slot hash>-<version hash>.npy``: the slot is the source path + decode options, the version the
        files' (size, mtime_ns). A new version of a slot replaces the old file (see ``_drop_stale``)."""
        src = os.path.abspath(source)
        memo = (kind, src, json.dumps(slot, sort_keys=True))
        prefix = self._slots.get(memo)
        if prefix is None:
            prefix = f"{Path(src).stem}-{_digest({'src': src, **slot})[:12]}"
            self._slots[memo] = prefix
        return self.root / kind / f"{prefix}-{_digest(sigs)[:16]}.npy"

    def image_entry(self, path, product: str | None = None, bands: Sequence[int] | None = None) -> Path:
        slot = {"product": product, "bands": list(bands) if bands is not None else None}
        return self._entry("images", path, slot, [_file_sig(path)])

    def mask_entry(self, image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> Path:
        slot = {
            "labels": os.path.abspath(labels_path) if labels_path is not None else None,
            "boundary": bool(boundary),
            "boundary_width": int(boundary_width) if boundary else None,
        }
        return self._entry("masks", image_path, slot, [_file_sig(image_path), _file_sig(labels_path)])

    # -- access
    def _get(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype=None) -> np.ndarray:
        try:
            arr = np.load(entry, mmap_mode="r")
            self.hits += 1
            return arr
        except FileNotFoundError:
            pass
        except (ValueError, OSError, EOFError):  # foreign/corrupt entry (never ours half-written): redo it
            log.warning("cache entry %s unreadable; decoding again", entry)
        return self._fill(entry, decode, recheck, dtype)

    def _fill(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype=None) -> np.ndarray:
        """Decode, write the entry atomically and return it as a memmap (in memory if it could not be cached)."""
        self.misses += 1
        arr = np.ascontiguousarray(decode())
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        if recheck() != entry:  # a source file changed while we decoded: use the pixels, cache nothing
            return arr
        try:
            atomic_write(entry, lambda f: np.save(f, arr, allow_pickle=False))
        except OSError as exc:  # read-only or full cache disk: train on, uncached
            if not self._warned:
                log.warning("cannot write the array cache under %s (%s); decoding every time", self.root, exc)
                self._warned = True
            return arr
        self._drop_stale(entry)
        return np.load(entry, mmap_mode="r")

    @staticmethod
    def _drop_stale(entry: Path) -> None:
        """Remove older entries of the same slot (same source file and options, other file version)."""
        prefix = entry.name.rsplit("-", 1)[0] + "-"
        for other in entry.parent.glob(glob.escape(prefix) + "*.npy"):
            if other != entry and other.name.rsplit("-", 1)[0] + "-" == prefix:
                try:
                    other.unlink()
                except FileNotFoundError:
                    pass

    def image(self, path, product: str | None = None, bands: Sequence[int] | None = None) -> np.ndarray:
        """Raw image (C,H,W) in its native dtype, read-only memmap."""
        from bdcore.data import imagery

        entry = self.image_entry(path, product, bands)
        return self._get(
            entry, lambda: imagery.read_image(path, bands=bands), lambda: self.image_entry(path, product, bands)
        )

    def mask(self, image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> np.ndarray:
        """uint8 mask (K,H,W) on the image grid, K=1 (footprint) or 2 (+ boundary band), read-only memmap."""
        entry = self.mask_entry(image_path, labels_path, boundary, boundary_width)
        return self._get(
            entry,
            lambda: decode_mask(image_path, labels_path, boundary, boundary_width),
            lambda: self.mask_entry(image_path, labels_path, boundary, boundary_width),
            np.uint8,
        )

    def _open(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype=None) -> "CachedArray":
        key = str(entry)
        if not hasattr(os, "preadv"):  # no positional reads on this OS: serve the memmap's rows
            arr = self._get(entry, decode, recheck, dtype)
            return CachedArray(arr.shape, arr.dtype, array=arr)
        try:
            fd = os.open(key, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        except OSError:
            log.warning("cache entry %s unreadable; decoding again", entry)
            fd = None
        if fd is not None:
            try:
                layout = self._layouts.get(key) or _npy_layout(fd)
                shape, dt, offset = layout
                if os.fstat(fd).st_size != offset + int(np.prod(shape)) * dt.itemsize:
                    raise ValueError("file size does not match its .npy header")
                self._layouts[key] = layout
                self.hits += 1
                return CachedArray(shape, dt, fd=fd, offset=offset, name=key)
            except (ValueError, OSError, EOFError):  # foreign/corrupt entry: redo it
                os.close(fd)
                self._layouts.pop(key, None)
                log.warning("cache entry %s unreadable; decoding again", entry)
        arr = self._fill(entry, decode, recheck, dtype)
        return CachedArray(arr.shape, arr.dtype, array=arr)

    def open_image(self, path, product: str | None = None, bands: Sequence[int] | None = None) -> "CachedArray":
        """Like :meth:`image`, as a :class:`CachedArray` (read by rows into memory; use as a context manager)."""
        from bdcore.data import imagery

        entry = self.image_entry(path, product, bands)
        return self._open(
            entry, lambda: imagery.read_image(path, bands=bands), lambda: self.image_entry(path, product, bands)
        )

    def open_mask(self, image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> "CachedArray":
        """Like :meth:`mask`, as a :class:`CachedArray`."""
        entry = self.mask_entry(image_path, labels_path, boundary, boundary_width)
        return self._open(
            entry,
            lambda: decode_mask(image_path, labels_path, boundary, boundary_width),
            lambda: self.mask_entry(image_path, labels_path, boundary, boundary_width),
            np.uint8,
        )

    def clear(self) -> None:
        for kind in ("images", "masks"):
            for f in (self.root / kind).glob("*.npy"):
                f.unlink(missing_ok=True)


def _npy_layout(fd: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-order, non-object .npy file open as ``fd``; ValueError otherwise."""
    from numpy.lib import format as npy

    f = io.BytesIO(os.pread(fd, 4096, 0))
    version = npy.read_magic(f)
    shape, fortran, dt = npy.read_array_header_1_0(f) if version == (1, 0) else npy.read_array_header_2_0(f)
    if fortran or dt.hasobject or len(shape) != 3:
        raise ValueError("not a C-order (C,H,W) numeric array")
    return tuple(int(n) for n in shape), dt, f.tell()


class CachedArray:
    """A (C,H,W) array in the cache, read by row bands with ``pread`` into fresh in-memory arrays.

    Cheaper per sample than a memmap: no ``.npy`` header parsing after the first open (the layout is memoised) and
    no page faults on a new mapping; only the rows of the crop are read. The file stays open (so a concurrent
    stale-entry cleanup cannot pull it away) until :meth:`close` / the end of a ``with`` block. When the array
    could not be cached (read-only cache dir, source edited while decoding) it wraps the decoded array instead.
    """

    __slots__ = ("shape", "dtype", "_fd", "_offset", "_array", "_name")

    def __init__(self, shape, dtype, fd: int | None = None, offset: int = 0, name: str = "", array=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._fd, self._offset, self._array, self._name = fd, offset, array, name

    def rows(self, y0: int = 0, y1: int | None = None) -> np.ndarray:
        """Every band's rows ``y0:y1`` as a new C-contiguous array (C, y1-y0, W)."""
        c, h, w = self.shape
        y1 = h if y1 is None else y1
        if not 0 <= y0 <= y1 <= h:
            raise IndexError(f"rows {y0}:{y1} outside 0:{h}")
        if self._array is not None:
            return np.array(self._array[:, y0:y1])
        out = np.empty((c, y1 - y0, w), self.dtype)
        row = w * self.dtype.itemsize
        if y0 == 0 and y1 == h:  # whole array: one read
            parts = [(out, self._offset)]
        else:
            parts = [(out[b], self._offset + (b * h + y0) * row) for b in range(c)]
        for buf, off in parts:
            if os.preadv(self._fd, [buf], off) != buf.nbytes:
                raise DatasetError(f"cache entry {self._name} is shorter than its header says; delete it and retry")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CachedArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def decode_mask(image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> np.ndarray:
    """Mask straight from the label file; a tile without a label file is all background."""
    if labels_path is None:
        from bdcore.data import imagery

        prof = imagery.read_profile(image_path)
        return np.zeros((2 if boundary else 1, int(prof["height"]), int(prof["width"])), np.uint8)
    from bdcore.data import labels

    return labels.tile_mask(image_path, labels_path, boundary=boundary, boundary_width=boundary_width).astype(np.uint8)


# --------------------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges. Geometric ops apply to image and mask alike; photometric ones to the image only."""

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1  # additive shift, uniform in [-b, b] (image is in [0,1] after normalize)
    contrast: float = 0.2  # multiplicative about the tile mean, uniform in [1-c, 1+c]
    gamma: float = 0.2  # exponent exp(uniform(-log(1+g), log(1+g)))


def random_crop_box(rng: np.random.Generator, h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw) of a size×size window inside an h×w tile; a side smaller than ``size`` is taken whole."""
    ch, cw = min(h, size), min(w, size)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def center_crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    ch, cw = min(h, size), min(w, size)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Zero-pad (C,h0,w0) at the bottom/right to (C,h,w)."""
    c, h0, w0 = arr.shape
    if h0 == h and w0 == w:
        return arr
    out = np.zeros((c, h, w), arr.dtype)
    out[:, :h0, :w0] = arr
    return out


def photometric(img: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Brightness/contrast/gamma jitter of a float32 image in [0,1], IN PLACE; clipped back to [0,1]."""
    b = rng.uniform(-aug.brightness, aug.brightness) if aug.brightness else 0.0
    c = rng.uniform(1 - aug.contrast, 1 + aug.contrast) if aug.contrast else 1.0
    g = float(np.exp(rng.uniform(-np.log1p(aug.gamma), np.log1p(aug.gamma)))) if aug.gamma else 1.0
    shift = np.float32(float(img.mean()) * (1.0 - c) + b) if c != 1.0 else np.float32(b)
    if c != 1.0:
        img *= np.float32(c)  # (x - mean) * c + mean + b, folded into one multiply-add, in place
    if shift:
        img += shift
    np.clip(img, 0.0, 1.0, out=img)
    if g != 1.0:
        np.power(img, np.float32(g), out=img)
    return img


def geometric(rng: np.random.Generator, aug: Augment, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip / 90° rotation of every (C,H,W) array."""
    fh = aug.flips and rng.random() < 0.5
    fv = aug.flips and rng.random() < 0.5
    k = int(rng.integers(0, 4)) if aug.rot90 else 0
    out = []
    for a in arrays:
        if fh:
            a = a[:, :, ::-1]
        if fv:
            a = a[:, ::-1, :]
        if k:
            a = np.rot90(a, k, axes=(1, 2))
        out.append(np.ascontiguousarray(a))
    return out


# --------------------------------------------------------------------------------------------- dataset


class SpaceNetSegmentation(Dataset):
    """Image/mask samples from catalog tiles.

    Item: ``{"image": float32 (C,h,w) in [0,1], "mask": float32 (K,h,w) in {0,1}, "tile_id": str}``,
    K = 1 (footprint) or 2 (footprint, boundary band). ``len = len(tile_ids) * samples_per_tile``.

    ``crop_size=None``: whole tiles (zero-padded at bottom/right to a multiple of ``pad_multiple``, e.g. 32 for
    U-Net strides; padded pixels are background). With ``crop_size``: random crops when ``augment`` else centre
    crops; tiles smaller than the crop are zero-padded. ``stats``: a ``BandStats``; None computes
    ``imagery.band_stats(catalog, product)`` (cached on disk).
    """

    def __init__(
        self,
        catalog,
        tile_ids: Sequence[str],
        product: str = "PS-RGB",
        crop_size: int | None = 256,
        augment: bool = False,
        boundary: bool = False,
        stats=None,
        cache: bool | ArrayCache = True,
        samples_per_tile: int = 1,
        seed: int | None = None,
        augmentation: Augment | None = None,
        pad_multiple: int = 1,
        boundary_width: int = 3,
        bands: Sequence[int] | None = None,
    ):
        if crop_size is not None and int(crop_size) < 1:
            raise DatasetError(f"crop_size must be a positive int or None, got {crop_size}")
        if samples_per_tile < 1:
            raise DatasetError(f"samples_per_tile must be >= 1, got {samples_per_tile}")
        self.tile_ids = [str(t) for t in tile_ids]
        if not self.tile_ids:
            raise DatasetError("no tiles selected for this dataset; check the split (val_fraction) and the catalog")
        rows = _rows_for(catalog, self.tile_ids)
        self.image_paths: list[str] = []
        self.label_paths: list[str | None] = []
        for tid, row in zip(self.tile_ids, rows):
            img = row.get(product) if hasattr(row, "get") else row[product]
            if img is None or (isinstance(img, float) and np.isnan(img)):
                raise DatasetError(
                    f"tile {tid} has no {product} image in the catalog; pick a product every tile has "
                    "(python -m bdcore catalog DIR lists them)"
                )
            lab = row.get("labels") if hasattr(row, "get") else None
            if isinstance(lab, float) and np.isnan(lab):
                lab = None
            self.image_paths.append(os.path.abspath(str(img)))
            self.label_paths.append(os.path.abspath(str(lab)) if lab is not None else None)
        self.product = product
        self.crop_size = int(crop_size) if crop_size is not None else None
        self.augment = bool(augment)
        self.boundary = bool(boundary)
        self.boundary_width = int(boundary_width)
        self.samples_per_tile = int(samples_per_tile)
        self.augmentation = augmentation or Augment()
        self.pad_multiple = max(1, int(pad_multiple))
        self.bands = list(bands) if bands is not None else None
        if stats is None:
            from bdcore.data import imagery

            stats = imagery.band_stats(catalog, product=product)
        self.stats = stats
        if cache is True:
            self.cache: ArrayCache | None = ArrayCache()
        elif cache is False or cache is None:
            self.cache = None
        else:
            self.cache = cache
        self.seed = int(seed) if seed is not None else int(torch.initial_seed()) & 0xFFFFFFFF
        self.epoch: int | None = None
        self._calls = 0

    # -- bookkeeping
    def __len__(self) -> int:
        return len(self.tile_ids) * self.samples_per_tile

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

    def item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch_key(), int(index)])

    # -- pixels
    def raw_image(self, t: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.image(self.image_paths[t], self.product, self.bands)
        from bdcore.data import imagery

        return imagery.read_image(self.image_paths[t], bands=self.bands)

    def raw_mask(self, t: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.mask(self.image_paths[t], self.label_paths[t], self.boundary, self.boundary_width)
        return decode_mask(self.image_paths[t], self.label_paths[t], self.boundary, self.boundary_width)

    def warm_cache(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Decode every tile into the cache now (e.g. before training); returns the tile count."""
        for t in range(len(self.tile_ids)):
            self.raw_image(t)
            self.raw_mask(t)
            if progress:
                progress(t + 1, len(self.tile_ids))
        return len(self.tile_ids)

    def _normalize(self, arr: np.ndarray) -> np.ndarray:
        """``imagery.normalize`` (bit-identical), done in place for integer images to save temporaries."""
        from bdcore.data import imagery

        if not np.issubdtype(arr.dtype, np.integer) or len(self.stats.lo) != arr.shape[0]:
            return np.asarray(imagery.normalize(arr, self.stats), dtype=np.float32)
        return imagery.normalize_bands(arr, self.stats.lo, self.stats.hi)

    def _box(self, t: int, img_shape, mask_shape, rng) -> tuple[int, int, int, int, int, int]:
        """(y0, x0, ch, cw) of the sample window and the (out_h, out_w) it is padded to."""
        _, h, w = img_shape
        if tuple(mask_shape[1:]) != (h, w):
            raise DatasetError(
                f"mask {tuple(mask_shape[1:])} and image {(h, w)} differ for tile {self.tile_ids[t]} "
                f"({self.image_paths[t]}); clear the cache folder {getattr(self.cache, 'root', '')}"
            )
        if self.crop_size is None:
            m = self.pad_multiple
            return 0, 0, h, w, -(-h // m) * m, -(-w // m) * m
        box = random_crop_box(rng, h, w, self.crop_size) if self.augment else center_crop_box(h, w, self.crop_size)
        return (*box, self.crop_size, self.crop_size)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        t = index // self.samples_per_tile
        rng = self.item_rng(index) if self.augment else None
        self._calls += 1
        if self.cache is not None:  # only the crop's rows are read from the cache files
            with self.cache.open_image(self.image_paths[t], self.product, self.bands) as img_src, \
                    self.cache.open_mask(self.image_paths[t], self.label_paths[t], self.boundary,
                                         self.boundary_width) as mask_src:
                y0, x0, ch, cw, out_h, out_w = self._box(t, img_src.shape, mask_src.shape, rng)
                img_rows, mask_rows = img_src.rows(y0, y0 + ch), mask_src.rows(y0, y0 + ch)
        else:
            img_src, mask_src = self.raw_image(t), self.raw_mask(t)
            y0, x0, ch, cw, out_h, out_w = self._box(t, img_src.shape, mask_src.shape, rng)
            img_rows, mask_rows = img_src[:, y0 : y0 + ch], mask_src[:, y0 : y0 + ch]
        img = self._normalize(img_rows[:, :, x0 : x0 + cw])
        mask = mask_rows[:, :, x0 : x0 + cw]
        if self.augment:
            img = photometric(img, rng, self.augmentation)
        img, mask = pad_to(img, out_h, out_w), pad_to(mask, out_h, out_w)
        if self.augment and out_h == out_w:
            img, mask = geometric(rng, self.augmentation, img, mask)
        elif self.augment:  # non-square output: 90° turns would change the shape
            img, mask = geometric(rng, Augment(flips=self.augmentation.flips, rot90=False), img, mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "tile_id": self.tile_ids[t],
        }


def _rows_for(catalog, tile_ids: Sequence[str]) -> list:
    index = [str(i) for i in catalog.index]
    if "tile_id" in getattr(catalog, "columns", ()) and index != [str(t) for t in catalog["tile_id"]]:
        catalog = catalog.set_index(catalog["tile_id"].astype(str), drop=False)
        index = [str(i) for i in catalog.index]
    pos = {t: i for i, t in enumerate(index)}
    missing = [t for t in tile_ids if t not in pos]
    if missing:
        raise DatasetError(f"tile ids not in the catalog: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [catalog.iloc[pos[t]] for t in tile_ids]


# --------------------------------------------------------------------------------------------- run config


def build_datasets(cfg) -> tuple[SpaceNetSegmentation, SpaceNetSegmentation]:
    """(train, val) datasets for a RunConfig: split by tile, shared band stats.

    Val: whole tiles at their true size, no augmentation (the evaluator pads to the network stride and crops back,
    so metrics never count padding).

    Train: random ``crop_size`` crops with augmentation (``crop_size=None``: whole tiles padded to /32).

    Only tiles with a label file are used (``catalog.labelled_tiles``: an unlabelled tile is not known to be empty);
    a folder with no labelled tile is a DatasetError naming it.
    """
    root = cfg.resolved_data_root()
    product, seed, boundary, crop = cfg.product, int(cfg.seed), bool(cfg.boundary), cfg.crop_size
    cat = catalog_mod.load_catalog(root)
    try:  # unlabelled tiles are left out (not known to be empty); none labelled is an error naming the folder
        split = config_split(cat, cfg)
    except catalog_mod.CatalogError as exc:
        raise DatasetError(str(exc)) from None
    labelled, train_ids, val_ids = split.tiles, split.train, split.val
    if len(labelled) < len(cat):
        log.info("training on the %d labelled tile(s) of %s; %d unlabelled tile(s) left out",
                 len(labelled), root, len(cat) - len(labelled))
    stats = imagery.band_stats(cat, product=product)
    train = SpaceNetSegmentation(
        labelled, train_ids, product=product, crop_size=crop, augment=True, boundary=boundary, stats=stats, seed=seed,
        pad_multiple=32, samples_per_tile=int(cfg.samples_per_tile),
    )
    val_ids = val_ids or train_ids[:0]
    if not val_ids:
        raise DatasetError("the split gave no validation tiles; set val_fraction above 0 in the run config")
    val = SpaceNetSegmentation(
        labelled, val_ids, product=product, crop_size=None, augment=False, boundary=boundary, stats=stats,
        seed=seed,
    )
    return train, val
