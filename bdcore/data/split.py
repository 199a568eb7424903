"""The one train/val split of a catalog: the trainer, evaluation and the Explore page all call ``run_split``.

``split_tiles`` splits any set of tiles (random, or spatially blocked so that no val tile touches a train tile);
``run_split`` applies it the way a run does: to the *labelled* tiles that have the run's product, with the run's
val fraction, seed and method. So the split the app colours for given settings is the split a run with those
settings trains and is evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shapely import STRtree

from bdcore.data.catalog import LABELS, describe_label_problems, label_problems, labelled_tiles

SPLIT_METHODS = ("random", "blocked")
AUTO_BLOCK_TILES = (8, 6, 4, 3, 2, 1)
COMPACT_IF_BUFFER_OVER = 0.10  # scattered blocks losing more than this share of tiles: try one compact val region


class SplitError(ValueError):
    """A train/val split that cannot be made (too few tiles, bad fraction, no geometry)."""


class BadLabelsError(SplitError):
    """Train/val tiles of a run have labels files training cannot use; the message lists them all and the fix."""


# How to leave bad-label tiles out, wherever a run is configured (callers name the one that fits where they are).
EXCLUDE_FIX = ("leave those tiles out: `--exclude-bad-labels` (python -m bdcore train), `exclude_bad_labels: true` "
               "(config file) or 'Leave out tiles with bad labels' (Train page); the run records which")


def _tile_ids(catalog) -> list[str]:
    if "tile_id" in catalog.columns:
        return [str(t) for t in catalog["tile_id"]]
    return [str(t) for t in catalog.index]


def _median_side(geoms: np.ndarray) -> float:
    """The median tile side (the larger of width and height), in the footprints' units."""
    b = np.array([g.bounds for g in geoms], dtype=float)
    return float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))


def split_tiles(
    catalog,
    val_fraction: float = 0.2,
    seed: int = 0,
    method: str = "random",
    block_tiles: int | None = None,
    touch_tolerance: float = 0.01,
    return_buffer: bool = False,
):
    """Split tiles into ``(train_ids, val_ids)`` (sorted lists of str), deterministic in ``seed``.

    ``random``: a seeded permutation of the sorted tile ids; ``round(val_fraction * n)`` tiles (at least 1) go to val.

    ``blocked`` (spatially blocked; no val tile touches a train tile):
      1. tiles are grouped into square blocks of ``block_tiles`` x ``block_tiles`` tile sizes (a grid anchored at the
         catalog's lower-left corner; a tile belongs to the cell holding its centroid). ``block_tiles=None`` picks
         the largest of 8, 6, 4, 3, 2, 1 that gives at least ``max(10, 3 / val_fraction)`` non-empty blocks and a
         train set at least as large as val (big blocks = fewer buffer tiles lost, more honest validation);
      2. blocks are taken in a seeded random order into val until val holds ``round(val_fraction * n)`` tiles;
      3. every other tile that touches a val tile (shares an edge or a corner, or overlaps; distances up to
         ``touch_tolerance`` x the median tile side count as touching, which absorbs float noise in the
         footprints) is DROPPED as a buffer: it is in neither list;
      4. the rest is train.
    With ``block_tiles=None``, when scattered blocks would drop more than 10 % of the tiles (small, dense AOIs such as
    the 24-tile demo), one compact val region is grown instead (seeded start tile; each step adds the touching tile
    that enlarges the buffer least) and kept if it drops fewer tiles.
    With ``return_buffer=True`` the result is ``(train_ids, val_ids, buffer_ids)``.
    The catalog needs a ``geometry`` column for ``blocked`` (any CRS; distances are in its units).
    """
    if method not in SPLIT_METHODS:
        raise SplitError(f"unknown split method {method!r}; use one of {SPLIT_METHODS}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise SplitError(f"val_fraction must be in [0, 1), got {val_fraction}; set e.g. val_fraction: 0.2 in the run config")
    ids = _tile_ids(catalog)
    if len(set(ids)) != len(ids):
        raise SplitError("catalog has duplicate tile_id values; rebuild the catalog (python -m bdcore catalog DIR)")
    n = len(ids)
    if val_fraction == 0:
        train, val, buffer = sorted(ids), [], []
    elif n < 2:
        raise SplitError(f"need at least 2 tiles to split into train and val, the catalog has {n}; add tiles or set val_fraction: 0")
    elif method == "random":
        train, val, buffer = _random_split(ids, min(n - 1, max(1, int(round(val_fraction * n)))), seed)
    else:
        geoms = _footprints(catalog)
        n_val = min(n - 1, max(1, int(round(val_fraction * n))))
        if block_tiles is not None:
            train, val, buffer = _blocked_split(geoms, ids, n_val, seed, block_tiles, touch_tolerance)
        else:
            train, val, buffer = _auto_blocked_split(geoms, ids, n_val, seed, val_fraction, touch_tolerance)
    return (train, val, buffer) if return_buffer else (train, val)


def _random_split(ids: list[str], n_val: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(order[i] for i in perm[:n_val])
    vs = set(val)
    return [t for t in order if t not in vs], val, []


def _footprints(catalog) -> np.ndarray:
    """The tiles' footprint geometries (object array); SplitError when a blocked split cannot have them."""
    if "geometry" not in catalog.columns:
        raise SplitError("a blocked split needs tile footprints (a geometry column); use split: random or rebuild the catalog")
    geoms = np.asarray(catalog.geometry.values, dtype=object)
    if any(g is None or g.is_empty for g in geoms):
        raise SplitError("some tiles have no footprint geometry; a blocked split needs all of them (use split: random)")
    return geoms


def _auto_blocked_split(geoms, ids, n_val, seed, val_fraction, touch_tolerance):
    """The largest block size that gives enough blocks and train >= val; a compact val region if that drops fewer."""
    best = None
    min_blocks = max(10, int(np.ceil(3 / val_fraction)))
    for k in AUTO_BLOCK_TILES:
        try:
            best = _blocked_split(geoms, ids, n_val, seed, k, touch_tolerance,
                                  1 if k == AUTO_BLOCK_TILES[-1] else min_blocks)
        except SplitError:
            continue
        if len(best[0]) >= len(best[1]):
            break
    if best is None or len(best[2]) > COMPACT_IF_BUFFER_OVER * len(ids):
        try:
            compact = _compact_split(geoms, ids, n_val, seed, touch_tolerance)
        except SplitError:
            if best is None:
                raise
        else:
            if best is None or len(compact[2]) < len(best[2]):
                best = compact
    return best


def _blocked_split(geoms, ids, n_val, seed, block_tiles, touch_tolerance, min_blocks=1):
    if block_tiles < 1:
        raise SplitError(f"block_tiles must be >= 1, got {block_tiles}")
    side = _median_side(geoms)
    if not side > 0:
        raise SplitError("tile footprints have zero size; cannot build spatial blocks (use split: random)")
    b = np.array([g.bounds for g in geoms], dtype=float)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    cell = side * block_tiles
    gx = np.floor((cx - b[:, 0].min()) / cell).astype(np.int64)
    gy = np.floor((cy - b[:, 1].min()) / cell).astype(np.int64)
    blocks: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(gx.tolist(), gy.tolist())):
        blocks.setdefault(key, []).append(i)
    keys = sorted(blocks)
    if len(keys) < min_blocks:
        raise SplitError(f"only {len(keys)} spatial blocks of {block_tiles}x{block_tiles} tiles (want {min_blocks})")
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for k in rng.permutation(len(keys)):
        if len(val_idx) >= n_val:
            break
        val_idx.update(blocks[keys[k]])
    vi = np.array(sorted(val_idx))
    _, hits = STRtree(geoms).query(geoms[vi], predicate="dwithin", distance=touch_tolerance * side)
    buffer_idx = set(hits.tolist()) - val_idx
    train = sorted(ids[i] for i in range(len(ids)) if i not in val_idx and i not in buffer_idx)
    val = sorted(ids[i] for i in val_idx)
    buffer = sorted(ids[i] for i in buffer_idx)
    if not train:
        raise SplitError(
            f"blocked split left no train tiles ({len(val)} val, {len(buffer)} buffer of {len(ids)}); "
            "lower val_fraction or block size, or use split: random"
        )
    return train, val, buffer


def _neighbours(geoms: np.ndarray, tol: float) -> list[set[int]]:
    a, b = STRtree(geoms).query(geoms, predicate="dwithin", distance=tol)
    nb: list[set[int]] = [set() for _ in range(len(geoms))]
    for i, j in zip(a.tolist(), b.tolist()):
        if i != j:
            nb[i].add(j)
    return nb


def _compact_split(geoms, ids, n_val, seed, touch_tolerance):
    """One val region grown from a seeded random tile, always adding the touching tile that enlarges the buffer
    least (ties broken by the seed); jumps to a new random start when a connected group is used up."""
    nb = _neighbours(geoms, touch_tolerance * _median_side(geoms))
    rng = np.random.default_rng(seed)
    tie = rng.random(len(ids))  # fixed random tie-break order
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    val: set[int] = set()
    buffer: set[int] = set()
    frontier: set[int] = set()
    while len(val) < n_val:
        cand = frontier - val
        if not cand:
            rest = [i for i in order if i not in val and i not in buffer]
            if not rest:
                break
            cand = {rest[int(rng.integers(len(rest)))]}
        pick = min(cand, key=lambda i: (len(nb[i] - val - buffer - {i}), tie[i]))
        val.add(pick)
        buffer.discard(pick)
        buffer |= nb[pick] - val
        frontier = (frontier | nb[pick]) - val
    train = sorted(ids[i] for i in range(len(ids)) if i not in val and i not in buffer)
    if not train:
        raise SplitError(
            f"blocked split left no train tiles ({len(val)} val, {len(buffer)} buffer of {len(ids)}); "
            "lower val_fraction or use split: random"
        )
    return train, sorted(ids[i] for i in val), sorted(ids[i] for i in buffer)


@dataclass(frozen=True)
class Split:
    """A run's split: tile ids (sorted str) of train, val and the blocked split's buffer; ``tiles`` is the labelled
    catalog subset they come from."""

    train: list[str]
    val: list[str]
    buffer: list[str]
    tiles: Any
    excluded: list[str] = field(default_factory=list)  # train/val tiles left out for a bad labels file
    bad_labels: dict[str, str] = field(default_factory=dict)  # labels path -> problem, of the train/val tiles kept

    def check_labels(self, fix: str = EXCLUDE_FIX) -> None:
        """``BadLabelsError`` listing every unusable labels file of the train/val tiles (the buffer is not trained
        on), so a run refuses before it starts instead of failing when such a tile is first sampled."""
        if self.bad_labels:
            raise BadLabelsError(
                f"{len(self.bad_labels)} labels file(s) of this run's train/val tiles cannot be used for training: "
                f"{describe_label_problems(self.bad_labels)}. Fix or delete those features, or {fix}")

    def role(self, tile_id: str) -> str | None:
        """ "train", "val", "buffer" or None (not in the split: unlabelled, or without the product)."""
        t = str(tile_id)
        return "train" if t in self._train else "val" if t in self._val else "buffer" if t in self._buffer else None

    @property
    def _train(self) -> set[str]:
        return set(self.train)

    @property
    def _val(self) -> set[str]:
        return set(self.val)

    @property
    def _buffer(self) -> set[str]:
        return set(self.buffer)


def run_split(catalog, product: str, val_fraction: float, seed: int, method: str,
              purpose: str = "training", exclude_bad_labels: bool = False) -> Split:
    """The split a run with these settings uses (``CatalogError`` naming the folder when no tile is labelled).

    Train/val tiles whose labels file is in ``catalog.label_problems`` are listed in ``bad_labels`` (see
    ``Split.check_labels``), or with ``exclude_bad_labels`` taken out of train/val into ``excluded``. They are taken
    out after splitting, so every other tile keeps its role (and a blocked split its buffer)."""
    tiles = labelled_tiles(catalog, product, purpose=purpose)
    train, val, buffer = split_tiles(tiles, val_fraction=float(val_fraction), seed=int(seed), method=method,
                                     return_buffer=True)
    problems = label_problems(catalog) if LABELS in tiles.columns else {}
    bad = {t: str(tiles.at[t, LABELS]) for t in [*train, *val] if problems and str(tiles.at[t, LABELS]) in problems}
    if exclude_bad_labels and bad:
        emptied = [role for role, ids in (("train", train), ("validation", val)) if ids and set(ids) <= set(bad)]
        if emptied:
            raise BadLabelsError(
                f"every {' and '.join(emptied)} tile has an unusable labels file, so leaving them out leaves none: "
                f"{describe_label_problems({p: problems[p] for p in bad.values()})}. Fix those files")
        train, val = [t for t in train if t not in bad], [t for t in val if t not in bad]
        excluded = [t for t in map(str, tiles.index) if t in bad]
        return Split(list(train), list(val), list(buffer), tiles, excluded=excluded)
    return Split(list(train), list(val), list(buffer), tiles, bad_labels={p: problems[p] for p in bad.values()})


def config_split(catalog, cfg, purpose: str = "training") -> Split:
    """``run_split`` with a RunConfig's settings (``exclude_bad_labels`` included)."""
    return run_split(catalog, cfg.product, cfg.val_fraction, cfg.seed, cfg.split, purpose=purpose,
                     exclude_bad_labels=bool(getattr(cfg, "exclude_bad_labels", False)))
