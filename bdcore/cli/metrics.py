"""Command: score (SpaceNet building F1 of a proposal CSV against a truth CSV)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bdcore.atomic import atomic_write
from bdcore.metrics.scoring import (
    DEFAULT_MAX_PAIRS,
    overall_scores,
    read_spacenet_csv,
    score_spacenet,
)


def _cmd_score(args: argparse.Namespace) -> int:
    per_aoi, per_image = score_spacenet(read_spacenet_csv(args.truth), read_spacenet_csv(args.proposals),
                                        iou_threshold=args.iou, min_area=args.min_area, max_pairs=args.max_pairs)
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


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="SpaceNet building F1 of a proposal CSV against a truth CSV")
    p.add_argument("--truth", required=True, help="truth CSV (ImageId,BuildingId,PolygonWKT_Pix[,PolygonWKT_Geo])")
    p.add_argument("--proposals", required=True, help="proposal CSV (ImageId,BuildingId,PolygonWKT_Pix,Confidence)")
    p.add_argument("--out", default=None, help="folder for results.csv (per AOI) and results_full.csv (per image)")
    p.add_argument("--iou", type=float, default=0.5, help="match when IoU is strictly greater (default 0.5)")
    p.add_argument("--min-area", type=float, default=20.0, help="ignore polygons smaller than this, px² (default 20)")
    p.add_argument("--max-pairs", type=int, default=DEFAULT_MAX_PAIRS, metavar="N",
                   help="refuse an image with more overlapping proposal/truth pairs than this "
                        f"(default {DEFAULT_MAX_PAIRS:,}; memory stays bounded either way, time grows with pairs)")
    p.set_defaults(func=_cmd_score)
