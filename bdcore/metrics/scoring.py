"""Metrics: pixel IoU/F1 and the SpaceNet building F1 (reproduces solaris ``spacenet_buildings_2``).

SpaceNet rules, as the reference scorer applies them (checked against its golden CSVs):

* proposals are taken in order of decreasing ``Confidence`` (ties keep file order; solaris uses an
  unstable sort there, so its tie order is unspecified);
* each proposal is compared with the still-unmatched truth polygons of its image that it intersects;
  the one with the highest IoU (first in file order on ties) is matched when IoU > 0.5 (strictly);
* truth polygons with area < ``min_area`` and proposals with area <= ``min_area`` are ignored;
  invalid proposals are repaired with ``buffer(0)``, invalid truth polygons never match;
* per image: TP = matched proposals, FP = other proposals, FN = unmatched truth with area > 0;
  P, R, F1 are 0 (not NaN) when undefined; per AOI the counts are summed before P/R/F1.
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from bdcore.atomic import atomic_write

SPACENET_HEADER = ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]
PER_IMAGE_COLUMNS = ["F1Score", "FalseNeg", "FalsePos", "Precision", "Recall", "TruePos", "imageID", "iou_field", "AOI"]
PER_AOI_COLUMNS = ["F1Score", "FalseNeg", "FalsePos", "Precision", "Recall", "TruePos"]


class ScoringError(ValueError):
    """A SpaceNet CSV that cannot be scored (missing column, unparsable WKT)."""


# --------------------------------------------------------------------------- pixel metrics


@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of a binary mask; add them over tiles, then read the metrics."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "PixelCounts") -> "PixelCounts":
        if not isinstance(other, PixelCounts):
            return NotImplemented
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __radd__(self, other: object) -> "PixelCounts":
        if other == 0:  # lets sum(counts) start from 0
            return self
        return NotImplemented

    @classmethod
    def from_masks(cls, pred: np.ndarray, truth: np.ndarray) -> "PixelCounts":
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
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)

    def as_dict(self) -> dict[str, float | int]:
        return {"iou": self.iou, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def pixel_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """IoU/precision/recall/F1 of two boolean (or 0/1) masks; undefined ratios are 0.0."""
    return PixelCounts.from_masks(pred, truth).as_dict()


def _ratio(num: float, den: float) -> float:
    return num / float(den) if den > 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    # Same expression and guard as the reference scorer, so floats agree to the last bit.
    return 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0


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


def _match_arrays(truth: np.ndarray, props: np.ndarray, conf: np.ndarray | None,
                  iou_threshold: float, min_area: float) -> tuple[list[tuple[int, int, float]], int, int]:
    """Greedy SpaceNet matching of one image. Returns (matches, n_scored_props, n_unmatched_truth)."""
    t_area = shapely.area(truth) if len(truth) else np.zeros(0)
    p_area = shapely.area(props) if len(props) else np.zeros(0)
    t_keep = np.flatnonzero(t_area >= min_area)
    p_keep = np.flatnonzero(p_area > min_area)
    if conf is not None and len(p_keep):
        p_keep = p_keep[np.argsort(-np.asarray(conf, dtype=float)[p_keep], kind="stable")]
    n_fn_base = int(np.count_nonzero(t_area[t_keep] > 0))
    if len(t_keep) == 0 or len(p_keep) == 0:
        return [], len(p_keep), n_fn_base

    tg = truth[t_keep]
    pg = props[p_keep]
    bad = ~shapely.is_valid(pg)
    if bad.any():
        pg = pg.copy()
        pg[bad] = shapely.buffer(pg[bad], 0.0)
    t_valid = shapely.is_valid(tg)

    tree = shapely.STRtree(tg)
    pi, ti = tree.query(pg, predicate="intersects")  # candidate pairs, sorted by pi
    matches: list[tuple[int, int, float]] = []
    if len(pi):
        a, b = pg[pi], tg[ti]
        inter = shapely.area(shapely.intersection(a, b))
        # |A ∪ B| = |A| + |B| - |A ∩ B| saves an overlay per pair; where that puts IoU within 1e-9 of the
        # threshold, the union is computed as the reference does, so the strict '>' decides identically.
        union = shapely.area(pg)[pi] + t_area[t_keep][ti] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(t_valid[ti] & (union > 0), inter / union, 0.0)
            close = np.flatnonzero(t_valid[ti] & (np.abs(iou - iou_threshold) < 1e-9))
            if len(close):
                exact_union = shapely.area(shapely.union(a[close], b[close]))
                iou[close] = np.where(exact_union > 0, inter[close] / exact_union, 0.0)
        # Within a proposal, candidates in truth order so that argmax picks the first of equal IoUs.
        order = np.lexsort((ti, pi))
        pi, ti, iou = pi[order], ti[order], iou[order]
        starts = np.searchsorted(pi, np.arange(len(pg) + 1))
        taken = np.zeros(len(tg), dtype=bool)
        for k in range(len(pg)):
            lo, hi = starts[k], starts[k + 1]
            if lo == hi:
                continue
            cand = ti[lo:hi]
            free = ~taken[cand]
            if not free.any():
                continue
            vals = np.where(free, iou[lo:hi], -1.0)
            j = int(np.argmax(vals))
            if vals[j] > iou_threshold:
                taken[cand[j]] = True
                matches.append((int(p_keep[k]), int(t_keep[cand[j]]), float(vals[j])))
    n_fn = n_fn_base - sum(1 for _, t, _ in matches if t_area[t] > 0)
    return matches, len(p_keep), n_fn


def match_buildings(truth_polys: Sequence[Any], prop_polys: Sequence[Any], confidences: Sequence[float] | None = None,
                    iou_threshold: float = 0.5, min_area: float = 20.0) -> dict[str, Any]:
    """SpaceNet matching of one image's polygons (pixel coordinates).

    ``matches`` is a list of ``(proposal_index, truth_index, iou)`` into the given sequences. Without
    ``confidences`` the proposals are taken in the given order.
    """
    truth = _as_geoms(truth_polys)
    props = _as_geoms(prop_polys)
    if confidences is None and len(prop_polys) and isinstance(prop_polys[0], tuple):
        confidences = [p[1] for p in prop_polys]
    if confidences is not None and len(confidences) != len(props):
        raise ValueError(f"match_buildings: {len(confidences)} confidences for {len(props)} proposals")
    matches, n_props, fn = _match_arrays(truth, props, None if confidences is None else np.asarray(confidences, float),
                                         iou_threshold, min_area)
    tp = len(matches)
    fp = n_props - tp
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
            "f1": _f1(precision, recall), "matches": matches}


# --------------------------------------------------------------------------- SpaceNet CSVs


def read_spacenet_csv(path: str | Path) -> pd.DataFrame:
    """Read a SpaceNet truth or proposal CSV into a frame with a ``geometry`` column (2-D shapely, pixels).

    Accepts a UTF-8 BOM, an extra ``PolygonWKT_Geo`` column and ``POLYGON EMPTY`` rows. A missing
    ``Confidence`` column becomes 1.0. Unparsable WKT raises :class:`ScoringError` naming file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SpaceNet CSV (check the path)")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype={"ImageId": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ScoringError(f"{path}: empty file; a SpaceNet CSV needs the header {','.join(SPACENET_HEADER)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("ImageId", "PolygonWKT_Pix") if c not in df.columns]
    if missing:
        raise ScoringError(f"{path}: missing column(s) {missing}; found {list(df.columns)} "
                           f"(expected header {','.join(SPACENET_HEADER)})")
    geoms = np.empty(len(df), dtype=object)
    for i, wkt in enumerate(df["PolygonWKT_Pix"].astype(str)):
        try:
            g = shapely.from_wkt(wkt.strip()) if wkt.strip() else shapely.Polygon()
        except shapely.errors.ShapelyError as exc:
            # row numbers as a spreadsheet shows them: header is line 1
            raise ScoringError(f"{path}: row {i + 2} (ImageId {df['ImageId'].iloc[i]!r}): bad PolygonWKT_Pix "
                               f"{wkt[:60]!r}: {exc}; fix or remove that row") from None
        if g is None:
            g = shapely.Polygon()
        if g.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection") and not g.is_empty:
            raise ScoringError(f"{path}: row {i + 2}: PolygonWKT_Pix is a {g.geom_type}, expected a POLYGON")
        geoms[i] = g
    df["geometry"] = shapely.force_2d(geoms) if len(geoms) else geoms
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


def score_spacenet(truth_df: pd.DataFrame | str | Path, prop_df: pd.DataFrame | str | Path,
                   iou_threshold: float = 0.5, min_area: float = 20.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score proposals against truth, per image and per AOI (solaris ``spacenet_buildings_2`` columns).

    Returns ``(per_aoi, per_image)``. ``per_aoi`` is indexed by ``AOI`` (sorted), columns
    ``F1Score,FalseNeg,FalsePos,Precision,Recall,TruePos`` — ``per_aoi.to_csv(index=False)`` is the
    reference ``*_results.csv``. ``per_image`` has ``...,imageID,iou_field,AOI``, one row per image found in
    either file, sorted by ``imageID`` (the reference scorer's row order is a set's order, i.e. random).
    """
    truth_df, prop_df = _ensure_frame(truth_df), _ensure_frame(prop_df)
    t_groups = {k: v for k, v in truth_df.groupby("ImageId", sort=False).indices.items()}
    p_groups = {k: v for k, v in prop_df.groupby("ImageId", sort=False).indices.items()}
    t_geom = truth_df["geometry"].to_numpy()
    p_geom = prop_df["geometry"].to_numpy()
    p_conf = prop_df["Confidence"].to_numpy(dtype=float) if "Confidence" in prop_df else np.ones(len(prop_df))
    empty = np.zeros(0, dtype=np.intp)
    rows = []
    for image_id in sorted(set(t_groups) | set(p_groups)):
        ti, pi = t_groups.get(image_id, empty), p_groups.get(image_id, empty)
        matches, n_props, fn = _match_arrays(t_geom[ti], p_geom[pi], p_conf[pi], iou_threshold, min_area)
        tp = len(matches)
        fp = n_props - tp
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        rows.append({"F1Score": _f1(precision, recall), "FalseNeg": fn, "FalsePos": fp, "Precision": precision,
                     "Recall": recall, "TruePos": tp, "imageID": image_id, "iou_field": "iou_score",
                     "AOI": aoi_of(image_id)})
    per_image = pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)
    per_image = per_image.astype({"F1Score": float, "Precision": float, "Recall": float,
                                  "FalseNeg": "int64", "FalsePos": "int64", "TruePos": "int64"})
    sums = per_image.groupby("AOI", sort=True)[["FalseNeg", "FalsePos", "TruePos"]].sum()
    per_aoi = pd.DataFrame(index=sums.index, columns=PER_AOI_COLUMNS)
    for aoi, (fn, fp, tp) in sums.iterrows():
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_aoi.loc[aoi] = [_f1(precision, recall), fn, fp, precision, recall, tp]
    per_aoi = per_aoi.astype({"F1Score": float, "Precision": float, "Recall": float,
                              "FalseNeg": "int64", "FalsePos": "int64", "TruePos": "int64"})
    return per_aoi, per_image


def overall_scores(per_image: pd.DataFrame) -> dict[str, float | int]:
    """Counts summed over all images, then P/R/F1 (the usual single-number SpaceNet score)."""
    tp, fp, fn = (int(per_image[c].sum()) for c in ("TruePos", "FalsePos", "FalseNeg"))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": _f1(precision, recall)}


# --------------------------------------------------------------------------- CLI


def _cmd_score(args: argparse.Namespace) -> int:
    per_aoi, per_image = score_spacenet(read_spacenet_csv(args.truth), read_spacenet_csv(args.proposals),
                                        iou_threshold=args.iou, min_area=args.min_area)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(per_aoi.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    total = overall_scores(per_image)
    print(f"overall: F1 {total['f1']:.4f}  precision {total['precision']:.4f}  recall {total['recall']:.4f}  "
          f"TP {total['tp']}  FP {total['fp']}  FN {total['fn']}  ({len(per_image)} images)")
    if args.out:
        out = Path(args.out)
        atomic_write(out / "results.csv", lambda f: per_aoi.to_csv(f, index=False), "w")
        atomic_write(out / "results_full.csv", lambda f: per_image.to_csv(f, index=False), "w")
        print(f"wrote {out / 'results.csv'} and {out / 'results_full.csv'}")
    return 0


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("score", help="SpaceNet building F1 of a proposal CSV against a truth CSV")
    p.add_argument("--truth", required=True, help="truth CSV (ImageId,BuildingId,PolygonWKT_Pix[,PolygonWKT_Geo])")
    p.add_argument("--proposals", required=True, help="proposal CSV (ImageId,BuildingId,PolygonWKT_Pix,Confidence)")
    p.add_argument("--out", default=None, help="folder for results.csv (per AOI) and results_full.csv (per image)")
    p.add_argument("--iou", type=float, default=0.5, help="match when IoU is strictly greater (default 0.5)")
    p.add_argument("--min-area", type=float, default=20.0, help="ignore polygons smaller than this, px² (default 20)")
    p.set_defaults(func=_cmd_score)


__all__ = ["PixelCounts", "ScoringError", "aoi_of", "match_buildings", "overall_scores", "pixel_metrics",
           "read_spacenet_csv", "score_spacenet", "write_spacenet_csv", "SPACENET_HEADER"]
