"""Metrics: pixel IoU/F1 and the SpaceNet building F1 (reproduces solaris ``spacenet_buildings_2``), and a tile's
score (:class:`TileScore`: its pixel counts and building match, what both the per-tile row and the Review picture
are read from).

The precision/recall/F1 of any confusion counts (pixels or buildings) are computed in ONE place,
:func:`precision_recall_f1`; pixel counts and IoU in :class:`PixelCounts`.

SpaceNet rules, as the reference scorer applies them (checked against its golden CSVs):

* proposals are taken in order of decreasing ``Confidence`` (ties keep file order; solaris uses an
  unstable sort there, so its tie order is unspecified);
* each proposal is compared with the still-unmatched truth polygons of its image that it intersects;
  the one with the highest IoU (first in file order on ties) is matched when IoU > 0.5 (strictly);
* truth polygons with area < ``min_area`` and proposals with area <= ``min_area`` are ignored;
  invalid proposals are repaired with ``buffer(0)``, invalid truth polygons never match;
* per image: TP = matched proposals, FP = other proposals, FN = unmatched truth with area > 0;
  P, R, F1 are 0 (not NaN) when undefined; per AOI the counts are summed before P/R/F1.

Beyond the reference (which would crash, or silently drop the row): a proposal whose area is not finite
(coordinates like 1e308 overflow it) is a false positive, a truth polygon like that is refused; ImageIds are
stripped of stray spaces; an image with more than ``max_pairs`` overlapping proposal/truth pairs is refused.
Memory is bounded (candidate pairs are processed ``chunk_pairs`` at a time), never O(pairs).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from bdcore.atomic import atomic_write

log = logging.getLogger(__name__)

SPACENET_HEADER = ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]
PER_IMAGE_COLUMNS = ["F1Score", "FalseNeg", "FalsePos", "Precision", "Recall", "TruePos", "imageID", "iou_field", "AOI"]
PER_AOI_COLUMNS = ["F1Score", "FalseNeg", "FalsePos", "Precision", "Recall", "TruePos"]


class ScoringError(ValueError):
    """A SpaceNet CSV that cannot be scored (missing column, unparsable WKT)."""


# --------------------------------------------------------------------------- pixel metrics


def _ratio(num: float, den: float) -> float:
    return num / float(den) if den > 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    # Same expression and guard as the reference scorer, so floats agree to the last bit.
    return 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0


def precision_recall_f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of confusion counts (pixels or buildings); undefined ratios are 0.0."""
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return precision, recall, _f1(precision, recall)


@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of a binary mask; add them over tiles (or count them anywhere, e.g. on a GPU), then read the
    metrics: ``PixelCounts(tp, fp, fn).iou`` / ``.precision`` / ``.recall`` / ``.f1`` or ``.as_dict()``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        if not isinstance(other, PixelCounts):
            return NotImplemented
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __radd__(self, other: object) -> PixelCounts:
        if other == 0:  # lets sum(counts) start from 0
            return self
        return NotImplemented

    @classmethod
    def from_masks(cls, pred: np.ndarray, truth: np.ndarray) -> PixelCounts:
        pred = np.asarray(pred).astype(bool, copy=False)
        truth = np.asarray(truth).astype(bool, copy=False)
        if pred.shape != truth.shape:
            raise ValueError(f"pixel_metrics: prediction shape {pred.shape} != truth shape {truth.shape}")
        tp = int(np.count_nonzero(pred & truth))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(truth)) - tp
        return cls(tp, fp, fn, int(pred.size) - tp - fp - fn)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[2]

    def as_dict(self) -> dict[str, float | int]:
        precision, recall, f1 = precision_recall_f1(self.tp, self.fp, self.fn)
        return {"iou": self.iou, "precision": precision, "recall": recall, "f1": f1,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def pixel_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """IoU/precision/recall/F1 of two boolean (or 0/1) masks; undefined ratios are 0.0."""
    return PixelCounts.from_masks(pred, truth).as_dict()


# --------------------------------------------------------------------------- object matching


def _as_geoms(polys: Iterable[Any]) -> np.ndarray:
    out = []
    for p in polys:
        if isinstance(p, tuple):  # (polygon, confidence) as returned by polygons.mask_to_polygons
            p = p[0]
        if p is None:
            p = shapely.Polygon()
        elif isinstance(p, str):
            p = shapely.from_wkt(p)
        out.append(p)
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return shapely.force_2d(arr) if len(arr) else arr


class _Match(NamedTuple):
    matches: list[tuple[int, int, float]]  # (proposal index, truth index, IoU), in matching order
    false_positives: list[int]  # scored proposals left unmatched (ascending index)
    false_negatives: list[int]  # scored truth polygons of positive area left unmatched (ascending index)


DEFAULT_MAX_PAIRS = 50_000_000
"""Candidate pairs (proposal and truth bounding boxes overlap) one image may have before scoring refuses it: past
this, the file is almost surely broken (thousands of stacked duplicates), and scoring it could take tens of minutes
(a polygon overlay costs ~20-40 µs a pair unless both are axis-aligned rectangles or identical)."""
DEFAULT_CHUNK_PAIRS = 500_000
"""Candidate pairs whose IoU is computed at once: bounds the scorer's working memory whatever the overlap (a few
hundred MB at this default: peak RSS 256 MB for 4,000 x 4,000 stacked boxes, 450 MB for 1,000 x 1,000 stacked turned
squares; ``bench/scoring.py --overlap``)."""
_BOUND_SLACK = 1e-9  # rounding margin of the bounding-box IoU bound, so no pair that could match is skipped


def _rectangles(geoms: np.ndarray, area: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Which geometries are axis-aligned rectangles (so equal to their bounding box): one ring of 4 corners, every
    edge horizontal or vertical. The area test first: it rules out most other shapes without a GEOS call."""
    out = np.zeros(len(geoms), dtype=bool)
    box_area = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    cand = np.flatnonzero(np.abs(area - box_area) <= 1e-6 * box_area)
    cand = cand[(shapely.get_type_id(geoms[cand]) == 3) & (shapely.get_num_coordinates(geoms[cand]) == 5)
                & (shapely.get_num_interior_rings(geoms[cand]) == 0)]
    if len(cand):
        d = np.diff(shapely.get_coordinates(geoms[cand]).reshape(-1, 5, 2), axis=1)
        out[cand] = ((d[..., 0] == 0) != (d[..., 1] == 0)).all(axis=1)
    return out


def _pair_ious(pg: np.ndarray, tg: np.ndarray, p_area: np.ndarray, t_area: np.ndarray, p_box: np.ndarray,
               t_box: np.ndarray, p_rect: np.ndarray, t_rect: np.ndarray, pi: np.ndarray, ti: np.ndarray,
               iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of the given (proposal, truth) pairs, keeping only those above ``iou_threshold`` (the only ones that can
    match), sorted by proposal then truth index.

    A pair whose bounding-box bound (|A ∩ B| <= min(|box(A) ∩ box(B)|, |A|, |B|), and IoU grows with |A ∩ B|) cannot
    exceed the threshold gets no polygon overlay at all, which is most of the pairs of a dense image. Two
    axis-aligned rectangles (``p_rect``/``t_rect``) overlap by their boxes' overlap, and two identical polygons by
    themselves: no overlay either (stacked copies of one box, the worst case, cost numpy time, not GEOS time).
    """
    pb, tb = p_box[pi], t_box[ti]
    w = np.minimum(pb[:, 2], tb[:, 2]) - np.maximum(pb[:, 0], tb[:, 0])
    h = np.minimum(pb[:, 3], tb[:, 3]) - np.maximum(pb[:, 1], tb[:, 1])
    box_inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    bound_inter = np.minimum(box_inter, np.minimum(p_area[pi], t_area[ti]))
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = bound_inter / (p_area[pi] + t_area[ti] - bound_inter)
    keep = bound > iou_threshold - _BOUND_SLACK
    pi, ti, inter = pi[keep], ti[keep], box_inter[keep]
    a, b = pg[pi], tg[ti]
    # An overlay of coincident edges (stacked duplicates) is GEOS's slowest case (~30 µs a pair against ~0.2 µs
    # for the equality test).
    same = shapely.equals_exact(a, b, tolerance=0.0)
    inter[same] = p_area[pi][same]
    overlay = ~same & ~(p_rect[pi] & t_rect[ti])
    inter[overlay] = shapely.area(shapely.intersection(a[overlay], b[overlay]))
    # |A ∪ B| = |A| + |B| - |A ∩ B| saves an overlay per pair; where that puts IoU within 1e-9 of the
    # threshold, intersection and union are computed as the reference does, so the strict '>' decides identically.
    union = p_area[pi] + t_area[ti] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
        close = np.flatnonzero(np.abs(iou - iou_threshold) < 1e-9)
        if len(close):
            exact_inter = shapely.area(shapely.intersection(a[close], b[close]))
            exact_union = shapely.area(shapely.union(a[close], b[close]))
            iou[close] = np.where(exact_union > 0, exact_inter / exact_union, 0.0)
    # A pair at or under the threshold can never be the match (the best free candidate must exceed it), so
    # dropping it changes nothing; within a proposal, candidates in truth order so argmax picks the first of ties.
    above = iou > iou_threshold
    pi, ti, iou = pi[above], ti[above], iou[above]
    order = np.lexsort((ti, pi))
    return pi[order], ti[order], iou[order]


def _greedy(pi: np.ndarray, ti: np.ndarray, iou: np.ndarray, taken: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy matching of candidate pairs above the threshold, sorted by proposal (= matching order) then truth:
    each proposal takes its best free truth (the first on ties). Marks ``taken``; returns (proposal, truth, IoU),
    in matching order."""
    if not len(pi):
        return []
    # A proposal none of whose candidates is wanted by another (the usual case) takes its best one whatever the
    # order: those are decided at once; the others one at a time, in order.
    shared = np.bincount(ti)[ti] > 1
    contested = np.zeros(int(pi.max()) + 1, dtype=bool)
    contested[pi[shared]] = True
    alone = ~contested[pi]
    out = []
    if alone.any():
        a_pi, a_ti, a_iou = pi[alone], ti[alone], iou[alone]
        order = np.lexsort((a_ti, -a_iou, a_pi))
        first = order[np.unique(a_pi[order], return_index=True)[1]]
        taken[a_ti[first]] = True
        out = list(zip(a_pi[first].tolist(), a_ti[first].tolist(), a_iou[first].tolist()))
    if not alone.all():
        c_pi, c_ti, c_iou = pi[~alone], ti[~alone], iou[~alone]
        starts = np.flatnonzero(np.r_[True, c_pi[1:] != c_pi[:-1], True])
        for a, b in pairwise(starts.tolist()):
            vals = np.where(taken[c_ti[a:b]], -1.0, c_iou[a:b])
            j = int(np.argmax(vals))
            if vals[j] >= 0:  # every pair here is above the threshold; -1 marks a taken truth
                taken[c_ti[a + j]] = True
                out.append((int(c_pi[a]), int(c_ti[a + j]), float(vals[j])))
        out.sort()  # matching order (proposal order) across both groups
    return out


def _refuse_pairs(n_pairs: int, max_pairs: int, image_id: str | None) -> ScoringError:
    where = f"image {image_id!r}" if image_id is not None else "these polygons"
    return ScoringError(f"{where}: {n_pairs:,} overlapping proposal/truth pairs, more than the limit of "
                        f"{max_pairs:,} (thousands of stacked polygons in one image: duplicated rows?); check the "
                        f"CSVs, or raise the limit with --max-pairs (score_spacenet(max_pairs=...))")


def _image_boxes(bounds: np.ndarray, image: np.ndarray, span: float) -> np.ndarray:
    """Bounding boxes shifted along x by ``image * span``: one STRtree of them pairs polygons of one image only."""
    shift = image * span
    return shapely.box(bounds[:, 0] + shift, bounds[:, 1], bounds[:, 2] + shift, bounds[:, 3])


def _check_pairs(tree: shapely.STRtree, p_boxes: np.ndarray, p_img: np.ndarray, t_img: np.ndarray,
                 max_pairs: int, chunk_pairs: int, names: Sequence[str] | None) -> None:
    """Refuse (:class:`ScoringError`) an image with more than ``max_pairs`` candidate pairs. Only images where
    #proposals x #truth exceeds the limit are counted, a chunk of proposals at a time (O(chunk) memory)."""
    n = int(max(p_img.max(initial=-1), t_img.max(initial=-1))) + 1
    n_p, n_t = np.bincount(p_img, minlength=n), np.bincount(t_img, minlength=n)
    for image in np.flatnonzero(n_p * n_t > max_pairs):
        rows = np.flatnonzero(p_img == image)
        step = max(1, chunk_pairs // int(n_t[image]))
        n_pairs = sum(int(tree.query(p_boxes[rows[s : s + step]]).shape[1]) for s in range(0, len(rows), step))
        if n_pairs > max_pairs:
            raise _refuse_pairs(n_pairs, max_pairs, None if names is None else str(names[image]))


def _match_arrays(truth: np.ndarray, props: np.ndarray, conf: np.ndarray | None, iou_threshold: float,
                  min_area: float, max_pairs: int = DEFAULT_MAX_PAIRS, chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
                  t_img: np.ndarray | None = None, p_img: np.ndarray | None = None,
                  names: Sequence[str] | None = None) -> _Match:
    """Greedy SpaceNet matching (proposals by decreasing confidence, each to its best free truth of its image).

    ``t_img``/``p_img``: image number of each polygon (default: all one image; ``names[i]`` names image ``i`` in
    errors). All images are matched in one pass (one STRtree, a few vectorised overlays), which is what makes
    thousands of small images fast. Proposals are matched a chunk at a time, in matching order, so the IoUs held at
    once are about ``chunk_pairs`` whatever the overlap (each decision needs only its own candidates and the truth
    already taken). An image with more than ``max_pairs`` candidate pairs is refused (:class:`ScoringError`). A
    proposal of non-finite area (coordinates like 1e308 overflow it) is a false positive; a truth polygon of
    non-finite area is refused.
    """
    t_img = np.zeros(len(truth), dtype=np.intp) if t_img is None else np.asarray(t_img, dtype=np.intp)
    p_img = np.zeros(len(props), dtype=np.intp) if p_img is None else np.asarray(p_img, dtype=np.intp)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite areas are handled below
        t_area = shapely.area(truth) if len(truth) else np.zeros(0)
        p_area = shapely.area(props) if len(props) else np.zeros(0)
    bad_t = np.flatnonzero(~np.isfinite(t_area))
    if len(bad_t):
        raise ScoringError(f"truth polygon {int(bad_t[0])} has a non-finite area (coordinates too large?); "
                           "fix or remove it")
    p_unscorable = np.flatnonzero(~np.isfinite(p_area))  # counted as false positives, never matched
    t_keep = np.flatnonzero(t_area >= min_area)
    p_keep = np.flatnonzero(np.isfinite(p_area) & (p_area > min_area))
    key = () if conf is None else (-np.asarray(conf, dtype=float)[p_keep],)
    p_keep = p_keep[np.lexsort((*key, p_img[p_keep]))]  # by image, then confidence; stable: file order on ties
    matches: list[tuple[int, int, float]] = []
    # invalid truth never matches; empty truth (min_area 0) has no box
    t_use = t_keep[shapely.is_valid(truth[t_keep]) & ~shapely.is_empty(truth[t_keep])] if len(t_keep) else t_keep
    if len(t_use) and len(p_keep):
        pg = props[p_keep]
        bad = ~shapely.is_valid(pg)
        if bad.any():
            pg = pg.copy()
            pg[bad] = shapely.buffer(pg[bad], 0.0)
        tg, pa, ta = truth[t_use], shapely.area(pg), t_area[t_use]
        boxes = shapely.bounds(pg), shapely.bounds(tg)
        rects = _rectangles(pg, pa, boxes[0]), _rectangles(tg, ta, boxes[1])
        pim, tim = p_img[p_keep], t_img[t_use]
        span = float(max(boxes[0][:, 2].max(), boxes[1][:, 2].max()) - min(boxes[0][:, 0].min(), boxes[1][:, 0].min()))
        span = 2.0 * span + 1.0  # images never touch once shifted
        p_boxes = _image_boxes(boxes[0], pim, span)
        tree = shapely.STRtree(_image_boxes(boxes[1], tim, span))
        _check_pairs(tree, p_boxes, pim, tim, max_pairs, chunk_pairs, names)
        taken = np.zeros(len(tg), dtype=bool)
        per_prop = np.cumsum(np.bincount(tim, minlength=int(pim.max()) + 1)[pim])  # pairs bound, cumulated
        s = 0
        while s < len(pg):
            base = per_prop[s - 1] if s else 0
            e = max(s + 1, int(np.searchsorted(per_prop, base + chunk_pairs, side="right")))
            qi, qt = tree.query(p_boxes[s:e])
            qi = qi + s
            ok = (pim[qi] == tim[qt]) & ~taken[qt]
            pi, ti, iou = _pair_ious(pg, tg, pa, ta, *boxes, *rects, qi[ok], qt[ok], iou_threshold)
            found = _greedy(pi, ti, iou, taken)
            if found:
                k, j, v = (np.asarray(x) for x in zip(*found))
                matches += zip(p_keep[k].tolist(), t_use[j].tolist(), v.tolist())
            s = e
    matched_p = np.fromiter((m[0] for m in matches), dtype=np.intp, count=len(matches))
    matched_t = np.fromiter((m[1] for m in matches), dtype=np.intp, count=len(matches))
    fps = np.sort(np.concatenate([p_keep[~np.isin(p_keep, matched_p)], p_unscorable]))
    fns = t_keep[(t_area[t_keep] > 0) & ~np.isin(t_keep, matched_t)]
    return _Match(matches, fps.tolist(), fns.tolist())


def match_buildings(truth_polys: Sequence[Any], prop_polys: Sequence[Any], confidences: Sequence[float] | None = None,
                    iou_threshold: float = 0.5, min_area: float = 20.0) -> dict[str, Any]:
    """SpaceNet matching of one image's polygons (pixel coordinates).

    ``matches`` is a list of ``(proposal_index, truth_index, iou)`` into the given sequences; ``false_positives`` /
    ``false_negatives`` are the indices of the scored proposals / truth polygons left unmatched (polygons under
    ``min_area`` are not scored, so they are in neither). Without ``confidences`` (given, or as the second item of
    ``(polygon, confidence)`` proposals) the proposals are taken in the given order. A proposal of non-finite area
    is a false positive; a truth polygon of non-finite area raises :class:`ScoringError`.
    """
    truth = _as_geoms(truth_polys)
    props = _as_geoms(prop_polys)
    if confidences is None and len(prop_polys) and isinstance(prop_polys[0], tuple):
        confidences = [p[1] for p in prop_polys]
    if confidences is not None and len(confidences) != len(props):
        raise ValueError(f"match_buildings: {len(confidences)} confidences for {len(props)} proposals")
    m = _match_arrays(truth, props, None if confidences is None else np.asarray(confidences, float),
                      iou_threshold, min_area)
    tp, fp, fn = len(m.matches), len(m.false_positives), len(m.false_negatives)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "matches": m.matches, "false_positives": m.false_positives, "false_negatives": m.false_negatives}


@dataclass(frozen=True)
class TileScore:
    """One tile's pixel counts and SpaceNet building match. The per-tile score row (:meth:`row`) and the Review
    page's TP/FP/FN picture (:attr:`tp_proposals`, :attr:`fp_proposals`, :attr:`fn_truth`) are both read from this
    one object, so they cannot disagree.

    ``truth``: ground-truth polygons, ``proposals``: ``(polygon, confidence)`` pairs (pixel coordinates),
    ``pred``: the thresholded prediction (H,W) the pixel counts were taken from, ``match``: ``match_buildings``
    of the two, proposals taken by decreasing confidence as SpaceNet scores them."""

    pixels: PixelCounts
    truth: list[BaseGeometry]
    proposals: list[tuple[BaseGeometry, float]]
    match: dict[str, Any] = field(repr=False)
    pred: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, pred: np.ndarray, truth_mask: np.ndarray, truth: Sequence[BaseGeometry],
           proposals: Sequence[tuple[BaseGeometry, float]], iou_threshold: float = 0.5,
           min_area: float = 20.0) -> TileScore:
        truth, proposals = list(truth), list(proposals)
        match = match_buildings(truth, [p for p, _ in proposals], [c for _, c in proposals],
                                iou_threshold=iou_threshold, min_area=min_area)
        return cls(PixelCounts.from_masks(pred, truth_mask), truth, proposals, match, np.asarray(pred, bool))

    @property
    def tp_proposals(self) -> list[BaseGeometry]:
        return [self.proposals[p][0] for p, _, _ in self.match["matches"]]

    @property
    def fp_proposals(self) -> list[BaseGeometry]:
        return [self.proposals[p][0] for p in self.match["false_positives"]]

    @property
    def fn_truth(self) -> list[BaseGeometry]:
        return [self.truth[t] for t in self.match["false_negatives"]]

    def buildings(self) -> pd.DataFrame:
        """Every building of the tile with its part in the match, one row each (pixel coordinates): ``layer``
        ("prediction" / "truth"), ``index`` (into ``proposals`` / ``truth``), ``status`` ("TP", "FP", "FN", or
        "not scored": under ``min_area``), ``iou`` (of the matched pair, else NaN), ``confidence`` (the proposal's;
        for matched truth its proposal's, else NaN), ``area_px`` and ``geometry``. Read from :attr:`match`: the
        TP/FP/FN here are the ones :meth:`row` counts; matched truth is "TP" too (a row of the truth layer)."""
        nan = float("nan")
        pred_status = {p: ("TP", iou, t) for p, t, iou in self.match["matches"]}
        pred_status.update({p: ("FP", nan, None) for p in self.match["false_positives"]})
        truth_status = {t: ("TP", iou, p) for p, t, iou in self.match["matches"]}
        truth_status.update({t: ("FN", nan, None) for t in self.match["false_negatives"]})
        rows = []
        for i, (poly, conf) in enumerate(self.proposals):
            status, iou, _ = pred_status.get(i, ("not scored", nan, None))
            rows.append(("prediction", i, status, iou, float(conf), poly))
        for i, poly in enumerate(self.truth):
            status, iou, p = truth_status.get(i, ("not scored", nan, None))
            rows.append(("truth", i, status, iou, nan if p is None else float(self.proposals[p][1]), poly))
        df = pd.DataFrame(rows, columns=["layer", "index", "status", "iou", "confidence", "geometry"])
        df.insert(5, "area_px", [float(shapely.area(g)) for g in df["geometry"]])
        return df

    def row(self) -> dict[str, Any]:
        """Pixel IoU/precision/recall/F1 and counts, building TP/FP/FN/precision/recall/F1, ``n_truth``, ``n_pred``.

        A tile with no buildings and no prediction is scored as perfect (IoU, precision, recall, F1 = 1), not 0: the
        model got it right, and the Review table must not list it among the worst tiles. Aggregates use summed
        counts, which such a tile does not change."""
        pix, m = self.pixels.as_dict(), dict(self.match)
        if pix["tp"] + pix["fp"] + pix["fn"] == 0:
            pix.update(iou=1.0, precision=1.0, recall=1.0, f1=1.0)
        if m["tp"] + m["fp"] + m["fn"] == 0:
            m.update(precision=1.0, recall=1.0, f1=1.0)
        return {
            "pixel_iou": pix["iou"], "pixel_precision": pix["precision"], "pixel_recall": pix["recall"],
            "pixel_f1": pix["f1"], "pixel_tp": int(pix["tp"]), "pixel_fp": int(pix["fp"]), "pixel_fn": int(pix["fn"]),
            "tp": int(m["tp"]), "fp": int(m["fp"]), "fn": int(m["fn"]), "precision": m["precision"],
            "recall": m["recall"], "f1": m["f1"], "n_truth": len(self.truth), "n_pred": len(self.proposals),
        }


# --------------------------------------------------------------------------- SpaceNet CSVs


def _decode_utf8(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped), or :class:`ScoringError` naming the first bad byte and its row."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1  # header is row 1, as a spreadsheet numbers lines
        raise ScoringError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at row {row}); "
                           "save it as UTF-8") from None


def _parse_wkt(path: Path, df: pd.DataFrame) -> np.ndarray:
    """``PolygonWKT_Pix`` → 2-D shapely geometries (vectorised; on a parse error the first bad row is named)."""
    wkt = df["PolygonWKT_Pix"].astype(str).str.strip().to_numpy(dtype=object)
    wkt[wkt == ""] = "POLYGON EMPTY"
    try:
        geoms = shapely.from_wkt(wkt)
    except shapely.errors.ShapelyError:
        for i, text in enumerate(wkt):  # find the row to name
            try:
                shapely.from_wkt(text)
            except shapely.errors.ShapelyError as exc:
                # row numbers as a spreadsheet shows them: header is line 1
                raise ScoringError(f"{path}: row {i + 2} (ImageId {df['ImageId'].iloc[i]!r}): bad PolygonWKT_Pix "
                                   f"{text[:60]!r}: {exc}; fix or remove that row") from None
        raise
    geoms[pd.isna(geoms)] = shapely.Polygon()
    kind = shapely.get_type_id(geoms)
    wrong = np.flatnonzero(~np.isin(kind, (3, 6, 7)) & ~shapely.is_empty(geoms))  # Polygon, MultiPolygon, collection
    if len(wrong):
        i = int(wrong[0])
        raise ScoringError(f"{path}: row {i + 2}: PolygonWKT_Pix is a {geoms[i].geom_type}, expected a POLYGON")
    has_z = shapely.has_z(geoms)
    if has_z.any():  # force_2d copies every geometry: only those with z
        geoms[has_z] = shapely.force_2d(geoms[has_z])
    return geoms


def _strip_image_ids(path: Path, df: pd.DataFrame) -> None:
    """Strip stray spaces around ImageIds (else ``"img1 "`` is scored as an image of its own), with one warning."""
    ids = df["ImageId"].astype(str)
    stripped = ids.str.strip()
    changed = np.flatnonzero((ids != stripped).to_numpy())
    if len(changed):
        i = int(changed[0])
        log.warning("%s: stripped spaces around %d ImageId(s) (first: row %d, %r)", path, len(changed), i + 2, ids.iloc[i])
    df["ImageId"] = stripped


def read_spacenet_csv(path: str | Path) -> pd.DataFrame:
    """Read a SpaceNet truth or proposal CSV into a frame with a ``geometry`` column (2-D shapely, pixels).

    Accepts a UTF-8 BOM, an extra ``PolygonWKT_Geo`` column and ``POLYGON EMPTY`` rows. A missing
    ``Confidence`` column becomes 1.0. Unparsable WKT or a file that is not UTF-8 raises :class:`ScoringError`
    naming file and row. Spaces around an ImageId are stripped (one warning with the count). ``attrs["path"]``
    records the file, so later errors can name it (rows are ``index + 2``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SpaceNet CSV (check the path)")
    try:
        df = pd.read_csv(io.StringIO(_decode_utf8(path)), dtype={"ImageId": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ScoringError(f"{path}: empty file; a SpaceNet CSV needs the header {','.join(SPACENET_HEADER)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("ImageId", "PolygonWKT_Pix") if c not in df.columns]
    if missing:
        raise ScoringError(f"{path}: missing column(s) {missing}; found {list(df.columns)} "
                           f"(expected header {','.join(SPACENET_HEADER)})")
    _strip_image_ids(path, df)
    df["geometry"] = _parse_wkt(path, df)
    if "Confidence" in df.columns:
        conf = pd.to_numeric(df["Confidence"].replace("", np.nan), errors="coerce")
        if conf.isna().any():
            i = int(np.flatnonzero(conf.isna().to_numpy())[0])
            raise ScoringError(f"{path}: row {i + 2}: Confidence {df['Confidence'].iloc[i]!r} is not a number")
        df["Confidence"] = conf.astype(float)
    else:
        df["Confidence"] = 1.0
    if "BuildingId" in df.columns:
        df["BuildingId"] = pd.to_numeric(df["BuildingId"], errors="coerce").fillna(-1).astype(int)
    df.attrs["path"] = str(path)
    return df


def write_spacenet_csv(path: str | Path, rows: Iterable[Any]) -> None:
    """Atomically write proposals as ``ImageId,BuildingId,PolygonWKT_Pix,Confidence``.

    ``rows``: a DataFrame with those columns (``geometry`` may replace ``PolygonWKT_Pix``), or an iterable
    of dicts / 4-tuples. Geometries may be shapely objects or WKT strings.
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    records = []
    for r in rows:
        if isinstance(r, dict):
            geom = r.get("PolygonWKT_Pix", r.get("geometry"))
            rec = [r["ImageId"], r.get("BuildingId", -1), geom, r.get("Confidence", 1.0)]
        else:
            rec = list(r)
            if len(rec) != 4:
                raise ValueError(f"write_spacenet_csv({path}): rows need 4 fields {SPACENET_HEADER}, got {rec!r}")
        if isinstance(rec[2], BaseGeometry):
            rec[2] = "POLYGON EMPTY" if rec[2].is_empty else shapely.to_wkt(rec[2], trim=True, rounding_precision=-1)
        records.append(rec)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SPACENET_HEADER)
    w.writerows(records)
    atomic_write(path, lambda f: f.write(buf.getvalue()), "w")


def aoi_of(image_id: str) -> str:
    """``AOI_2_Vegas_img3457`` → ``AOI_2_Vegas`` (everything before the last underscore)."""
    return "_".join(str(image_id).split("_")[:-1])


def _ensure_frame(df: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(df, (str, Path)):
        return read_spacenet_csv(df)
    if "geometry" not in df.columns:
        df = df.copy()
        df["geometry"] = _as_geoms(df["PolygonWKT_Pix"].astype(str))
    return df


def _nonfinite_rows(df: pd.DataFrame) -> np.ndarray:
    """Positions of rows whose polygon has a non-finite area (coordinates like ±1e308 overflow it)."""
    geoms = df["geometry"].to_numpy()
    if not len(geoms):
        return np.zeros(0, dtype=np.intp)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.flatnonzero(~np.isfinite(shapely.area(geoms)))


def _rows_text(df: pd.DataFrame, rows: np.ndarray) -> str:
    """``<file>: row 3, row 9`` (CSV rows: header is row 1) or ``rows at positions 1, 7`` for an in-memory frame."""
    shown = ", ".join(f"row {int(r) + 2}" if "path" in df.attrs else str(int(r)) for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"{df.attrs['path']}: {shown}{more}" if "path" in df.attrs else f"rows at positions {shown}{more}"


def score_spacenet(truth_df: pd.DataFrame | str | Path, prop_df: pd.DataFrame | str | Path,
                   iou_threshold: float = 0.5, min_area: float = 20.0, max_pairs: int = DEFAULT_MAX_PAIRS,
                   chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score proposals against truth, per image and per AOI (solaris ``spacenet_buildings_2`` columns).

    Returns ``(per_aoi, per_image)``. ``per_aoi`` is indexed by ``AOI`` (sorted), columns
    ``F1Score,FalseNeg,FalsePos,Precision,Recall,TruePos`` — ``per_aoi.to_csv(index=False)`` is the
    reference ``*_results.csv``. ``per_image`` has ``...,imageID,iou_field,AOI``, one row per image found in
    either file, sorted by ``imageID`` (the reference scorer's row order is a set's order, i.e. random).

    Memory is bounded by ``chunk_pairs`` candidate pairs at a time; an image with more than ``max_pairs``
    candidate pairs (overlapping bounding boxes) is refused with a :class:`ScoringError` naming it. Polygons whose
    area is not finite (coordinates like ±1e308): a truth row is refused (:class:`ScoringError` naming file and
    row: the score would be meaningless without it), a proposal is kept as a false positive (it is a wrong
    detection, and dropping it would flatter the score) with one warning naming the rows.
    """
    if max_pairs < 1 or chunk_pairs < 1:
        raise ScoringError(f"max_pairs ({max_pairs}) and chunk_pairs ({chunk_pairs}) must be at least 1; "
                           "--max-pairs takes a positive count")
    truth_df, prop_df = _ensure_frame(truth_df), _ensure_frame(prop_df)
    bad = _nonfinite_rows(truth_df)
    if len(bad):
        raise ScoringError(f"truth {_rows_text(truth_df, bad)}: polygon area is not finite (coordinates too large, "
                           "e.g. 1e308, or inf/nan); fix or remove that row")
    bad = _nonfinite_rows(prop_df)
    if len(bad):
        log.warning("proposals %s: polygon area is not finite (coordinates too large?); scored as false "
                    "positive(s)", _rows_text(prop_df, bad))
    names = sorted(set(truth_df["ImageId"].unique().tolist()) | set(prop_df["ImageId"].unique().tolist()))
    t_img = pd.Categorical(truth_df["ImageId"], categories=names).codes.astype(np.intp)
    p_img = pd.Categorical(prop_df["ImageId"], categories=names).codes.astype(np.intp)
    p_conf = prop_df["Confidence"].to_numpy(dtype=float) if "Confidence" in prop_df else np.ones(len(prop_df))
    m = _match_arrays(truth_df["geometry"].to_numpy(), prop_df["geometry"].to_numpy(), p_conf, iou_threshold,
                      min_area, max_pairs, chunk_pairs, t_img, p_img, names)
    n = len(names)
    tps = np.bincount(p_img[[p for p, _, _ in m.matches]], minlength=n)
    fps = np.bincount(p_img[m.false_positives], minlength=n)
    fns = np.bincount(t_img[m.false_negatives], minlength=n)
    rows = []
    for image_id, tp, fp, fn in zip(names, tps.tolist(), fps.tolist(), fns.tolist()):
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        rows.append({"F1Score": f1, "FalseNeg": fn, "FalsePos": fp, "Precision": precision,
                     "Recall": recall, "TruePos": tp, "imageID": image_id, "iou_field": "iou_score",
                     "AOI": aoi_of(image_id)})
    per_image = pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)
    per_image = per_image.astype({"F1Score": float, "Precision": float, "Recall": float,
                                  "FalseNeg": "int64", "FalsePos": "int64", "TruePos": "int64"})
    sums = per_image.groupby("AOI", sort=True)[["FalseNeg", "FalsePos", "TruePos"]].sum()
    per_aoi = pd.DataFrame(index=sums.index, columns=PER_AOI_COLUMNS)
    for aoi, (fn, fp, tp) in sums.iterrows():
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        per_aoi.loc[aoi] = [f1, fn, fp, precision, recall, tp]
    per_aoi = per_aoi.astype({"F1Score": float, "Precision": float, "Recall": float,
                              "FalseNeg": "int64", "FalsePos": "int64", "TruePos": "int64"})
    return per_aoi, per_image


def overall_scores(per_image: pd.DataFrame) -> dict[str, float | int]:
    """Counts summed over all images, then P/R/F1 (the usual single-number SpaceNet score)."""
    tp, fp, fn = (int(per_image[c].sum()) for c in ("TruePos", "FalsePos", "FalseNeg"))
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


__all__ = [
    "DEFAULT_CHUNK_PAIRS",
    "DEFAULT_MAX_PAIRS",
    "SPACENET_HEADER",
    "PixelCounts",
    "ScoringError",
    "TileScore",
    "aoi_of",
    "match_buildings",
    "overall_scores",
    "pixel_metrics",
    "precision_recall_f1",
    "read_spacenet_csv",
    "score_spacenet",
    "write_spacenet_csv",
]
