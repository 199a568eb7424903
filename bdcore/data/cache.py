"""Decoded tile arrays cached as ``.npy`` files, so GeoTIFF/GeoJSON decoding is paid once per file version.

``ArrayCache`` keys entries by (absolute path, size, mtime_ns) of every source file plus the decode options;
``CachedArray`` reads an entry's rows with ``pread``. Per-sample reads go through :class:`CachedArray`, not a fresh
memmap per sample: a new mapping pays a page fault per touched page and ``np.load`` parses the header every time;
together that was ~25 % of a whole-tile sample and ~60 % of a 256² crop.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numpy.lib import format as npy_format

from bdcore.atomic import atomic_write
from bdcore.data import imagery, labels
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

# (entry path, decode the source, recompute the entry path after decoding, dtype of the stored array or None)
_Source = tuple[Path, Callable[[], np.ndarray], Callable[[], Path], Any]


class CacheError(ValueError):
    """A cache entry that cannot be read back as its header says (it was cut short while open)."""


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
        self.root = Path(root) if root is not None else cache_dir() / "arrays"
        self.hits = 0
        self.misses = 0
        self._slots: dict[tuple, str] = {}  # memo of entry-name prefixes (plain strings: pickles fine)
        self._layouts: dict[str, tuple] = {}  # entry -> (shape, dtype, data offset); an entry name never changes content
        self._warned = False

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.root)!r})"

    # -- entry names
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

    def _image_source(self, path, product: str | None, bands: Sequence[int] | None) -> _Source:
        return (self.image_entry(path, product, bands), lambda: imagery.read_image(path, bands=bands),
                lambda: self.image_entry(path, product, bands), None)

    def _mask_source(self, image_path, labels_path, boundary: bool, boundary_width: int) -> _Source:
        # tile_mask: all background for a tile without a labels file
        return (self.mask_entry(image_path, labels_path, boundary, boundary_width),
                lambda: labels.tile_mask(image_path, labels_path, boundary=boundary, boundary_width=boundary_width),
                lambda: self.mask_entry(image_path, labels_path, boundary, boundary_width), np.uint8)

    # -- whole arrays (memmaps)
    def image(self, path, product: str | None = None, bands: Sequence[int] | None = None) -> np.ndarray:
        """Raw image (C,H,W) in its native dtype, read-only memmap."""
        return self._get(*self._image_source(path, product, bands))

    def mask(self, image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> np.ndarray:
        """uint8 mask (K,H,W) on the image grid, K=1 (footprint) or 2 (+ boundary band), read-only memmap."""
        return self._get(*self._mask_source(image_path, labels_path, boundary, boundary_width))

    # -- row readers
    def open_image(self, path, product: str | None = None, bands: Sequence[int] | None = None) -> CachedArray:
        """Like :meth:`image`, as a :class:`CachedArray` (read by rows into memory; use as a context manager)."""
        return self._open(*self._image_source(path, product, bands))

    def open_mask(self, image_path, labels_path, boundary: bool = False, boundary_width: int = 3) -> CachedArray:
        """Like :meth:`mask`, as a :class:`CachedArray`."""
        return self._open(*self._mask_source(image_path, labels_path, boundary, boundary_width))

    # -- filling and reading entries
    def _get(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype) -> np.ndarray:
        try:
            arr = np.load(entry, mmap_mode="r")
            self.hits += 1
            return arr
        except FileNotFoundError:
            pass
        except (ValueError, OSError, EOFError):  # foreign/corrupt entry (never ours half-written): redo it
            log.warning("cache entry %s unreadable; decoding again", entry)
        return self._fill(entry, decode, recheck, dtype)

    def _fill(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype) -> np.ndarray:
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

    def _open(self, entry: Path, decode: Callable[[], np.ndarray], recheck: Callable[[], Path], dtype) -> CachedArray:
        if not hasattr(os, "preadv"):  # no positional reads on this OS (Windows): serve the memmap's rows
            arr = self._get(entry, decode, recheck, dtype)
            return CachedArray(arr.shape, arr.dtype, array=arr)
        opened = self._open_entry(entry)
        if opened is not None:
            return opened
        arr = self._fill(entry, decode, recheck, dtype)
        return CachedArray(arr.shape, arr.dtype, array=arr)

    def _open_entry(self, entry: Path) -> CachedArray | None:
        """The entry as a CachedArray over its open file; None when it is missing or unreadable (decode again)."""
        key = str(entry)
        try:
            fd = os.open(key, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:
            log.warning("cache entry %s unreadable; decoding again", entry)
            return None
        try:
            layout = self._layouts.get(key) or _npy_layout(fd)
            shape, dt, offset = layout
            if os.fstat(fd).st_size != offset + int(np.prod(shape)) * dt.itemsize:
                raise ValueError("file size does not match its .npy header")
        except (ValueError, OSError, EOFError):  # foreign/corrupt entry: redo it
            os.close(fd)
            self._layouts.pop(key, None)
            log.warning("cache entry %s unreadable; decoding again", entry)
            return None
        self._layouts[key] = layout
        self.hits += 1
        return CachedArray(shape, dt, fd=fd, offset=offset, name=key)


def _npy_layout(fd: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-order, non-object .npy file open as ``fd``; ValueError otherwise."""
    f = io.BytesIO(os.pread(fd, 4096, 0))
    version = npy_format.read_magic(f)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dt = read_header(f)
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
                raise CacheError(f"cache entry {self._name} is shorter than its header says; delete it and retry")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CachedArray:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
