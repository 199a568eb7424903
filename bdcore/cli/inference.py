"""Commands: evaluate (a run's checkpoint on its val tiles), predict (a checkpoint or exported model on any GeoTIFF),
export (a run's checkpoint as model.onnx + model.json)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from bdcore.data.imagery import MAX_PIXELS, NORMALIZE_MODES
from bdcore.engine.runs import run_path
from bdcore.inference.evaluate import WHICH, evaluate_checkpoint
from bdcore.metrics.polygons import DEFAULT_OUTLINE, OUTLINES
from bdcore.progress import terminal_progress


def add_normalize_argument(p: argparse.ArgumentParser) -> None:
    """``--normalize checkpoint|image``, shared by ``predict`` and ``evaluate``."""
    p.add_argument("--normalize", choices=NORMALIZE_MODES, default="checkpoint",
                   help="checkpoint: scale pixels with the training band statistics (default); image: per-image "
                        "2-98%% stretch, for imagery unlike the training data (e.g. 8-bit)")


def _pixels(text: str) -> int:
    """``--max-pixels``: a positive whole number of pixels (``10000000000`` or ``10_000_000_000``)."""
    try:
        n = int(text.replace(",", "_"))
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of pixels (e.g. 2000000000)")
    return n


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler) interrupts like Ctrl-C, so the prediction's temporary files are removed
    instead of the process dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def add_outline_argument(p: argparse.ArgumentParser) -> None:
    """``--outline none|simplify|orthogonal``, shared by ``predict`` and ``evaluate``."""
    p.add_argument("--outline", choices=OUTLINES, default=DEFAULT_OUTLINE,
                   help="building outlines: none (exact pixel edges), simplify (Douglas-Peucker, 0.5 px), orthogonal "
                        f"(right angles along the building's dominant directions); default {DEFAULT_OUTLINE}, the "
                        "best SpaceNet F1 measured (docs/performance.md)")


def _cmd_predict(args: argparse.Namespace) -> int:
    # torch + segmentation_models_pytorch: 2.1-2.4 s to import (measured on 2 CPU cores), kept out of
    # `python -m bdcore --help` and the other commands
    from bdcore.inference.predict import predict_geotiff

    try:
        with _sigterm_as_interrupt(), terminal_progress("win", Path(args.input).name) as progress:
            res = predict_geotiff(args.checkpoint, args.input, args.out, tta=args.tta, window=args.window,
                                  overlap=args.overlap, threshold=args.threshold, batch_size=args.batch_size,
                                  device=args.device, progress=progress, normalize=args.normalize,
                                  max_pixels=args.max_pixels, outline=args.outline)
    except KeyboardInterrupt:
        print("interrupted: prediction stopped, no output written (temporary files removed)", file=sys.stderr)
        return 130
    print(f"{'model':8} {args.checkpoint} ({res['runtime']})")
    for key in ("prob", "mask", "geojson", "csv"):
        if key in res:
            print(f"{key:8} {res[key]}")
    print(f"{res.get('n_buildings', 0)} buildings ({res['outline']} outlines), {res['windows']} windows, {res['seconds']:.1f} s")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run_dir = run_path(args.run)
    with terminal_progress("tile", f"{run_dir.name} {args.which}") as progress:
        df, summary = evaluate_checkpoint(run_dir, which=args.which, tiles=args.tiles, threshold=args.threshold,
                                          progress=progress, device=args.device, normalize=args.normalize,
                                          outline=args.outline)
    if args.json:
        print(json.dumps({"summary": summary, "tiles": df.to_dict("records")}, indent=2, default=str))
        return 0
    cols = ["tile_id", "pixel_iou", "precision", "recall", "f1", "tp", "fp", "fn"]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{summary['n_tiles']} tiles ({summary['cached_tiles']} cached)  pixel IoU {summary['pixel_iou']:.4f}  "
          f"SpaceNet F1 {summary['F1Score']:.4f} (P {summary['Precision']:.3f} R {summary['Recall']:.3f}, "
          f"TP {summary['TruePos']} FP {summary['FalsePos']} FN {summary['FalseNeg']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    # torch + smp + onnxruntime: ~3 s to import, kept out of the other commands (see _cmd_predict)
    from bdcore.inference.modelfile import export_run

    run_dir = run_path(args.run)
    res = export_run(run_dir, args.which, args.out)
    meta = res.meta
    print(f"{'onnx':8} {res.onnx} ({meta['onnx_bytes'] / 2**20:.1f} MiB, opset {meta['opset']})")
    print(f"{'sidecar':8} {res.sidecar}")
    print(f"{run_dir.name}/{args.which}.pt (sha256 {meta['checkpoint']['sha256'][:12]}) exported in {res.seconds:.1f} s; "
          f"onnxruntime matches torch within {meta['verified']['max_abs_diff']:.1e}")
    print(f"use it: python -m bdcore predict --model {res.onnx} --input IMAGE.tif")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a run's checkpoint on its val tiles (pixel IoU, SpaceNet F1)")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--which", choices=WHICH, default="best")
    p.add_argument("--tiles", default="val", help="val (the run's split) or all (every labelled tile)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    add_normalize_argument(p)
    add_outline_argument(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict building footprints on a GeoTIFF")
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                   help="a run's best.pt/last.pt, or an exported model.onnx (its model.json beside it; run with "
                        "onnxruntime, CUDA provider when present)")
    p.add_argument("--input", required=True, help="GeoTIFF of any size")
    p.add_argument("--out", default=None, help="output folder (default: <input folder>/predictions)")
    p.add_argument("--tta", action="store_true", help="average over flips (4x slower)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-pixels", type=_pixels, default=MAX_PIXELS, metavar="N",
                   help=f"refuse inputs over N pixels (width x height; default {MAX_PIXELS:,}): a small file can "
                        "declare a huge image; raise it to predict a bigger one")
    add_normalize_argument(p)
    add_outline_argument(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a run's checkpoint as model.onnx + model.json (for onnxruntime)")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--which", choices=WHICH, default="best")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/export/<which>)")
    p.set_defaults(func=_cmd_export)
