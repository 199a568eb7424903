"""Benchmark: exporting a checkpoint to ONNX, and onnxruntime vs torch inference on CPU through the same Predictor.

    python bench/export_onnx.py [--arch Unet --encoder resnet34] [--tiles 10] [--window 1024] [--overlap 128]
                         [--vegas DIR]

1. ``export``: ``modelfile.export_onnx`` of a random-init checkpoint (no download; weights do not change the time):
   wall seconds (load, trace, check against torch, write both files) and the model's size.
2. ``speed``: the SpaceNet 2 Vegas sample's 650x650 PS-RGB tiles (``../shared/data/spacenet2_vegas_sample``, else
   the two in tests/data) through ``Predictor.predict_array`` with the torch checkpoint and with the exported
   model (onnxruntime, CPU provider), timed tile by tile and alternately (both share whatever load the machine
   has) after one warm-up tile each; ms/tile, the ratio, and the largest probability difference over all tiles.

Runs in a temp dir; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before torch/smp are imported: never wait on the hub

import numpy as np
import torch

from bdcore.data.imagery import read_image
from bdcore.engine.config import RunConfig
from bdcore.engine.models import build_model, save_checkpoint
from bdcore.inference import modelfile
from bdcore.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
VEGAS = (ROOT.parent / "shared" / "data" / "spacenet2_vegas_sample", ROOT / "tests" / "data" / "spacenet2_vegas")
VEGAS_STATS = {"lo": [133.0, 283.0, 251.0], "hi": [938.0, 1118.0, 741.0]}  # the sample's 2/98 % band statistics


def vegas_tiles(folder: str | None, n: int) -> list[Path]:
    roots = [Path(folder)] if folder else [p for p in VEGAS if p.is_dir()]
    tiles = sorted(p for r in roots[:1] for p in r.rglob("*.tif") if "RGB-PanSharpen" in p.name)
    if not tiles:
        raise SystemExit(f"no PS-RGB tiles under {roots[:1]}")
    return tiles[:n]


def checkpoint(path: Path, arch: str, encoder: str) -> Path:
    torch.manual_seed(0)
    cfg = RunConfig(arch=arch, encoder=encoder, encoder_weights=None, data_root="/nonexistent")
    model = build_model(arch, encoder, 3, 1, encoder_weights=None)
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "arch": arch, "encoder": encoder,
                           "in_channels": 3, "classes": 1, "model": model.state_dict(), "band_stats": VEGAS_STATS})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="Unet")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--tiles", type=int, default=10)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--vegas", default=None, help="folder of 650x650 PS-RGB tiles (default: the Vegas sample)")
    args = ap.parse_args()

    tiles = vegas_tiles(args.vegas, args.tiles)
    images = [read_image(p) for p in tiles]
    with tempfile.TemporaryDirectory() as tmp:
        ck = checkpoint(Path(tmp) / "run" / "best.pt", args.arch, args.encoder)
        t0 = time.perf_counter()
        exported = modelfile.export_onnx(ck, Path(tmp) / "export")
        export_s = time.perf_counter() - t0
        backends = {"torch": Predictor.from_checkpoint(ck, device="cpu", batch_size=args.batch_size),
                    "onnxruntime": modelfile.onnx_predictor(exported.onnx, device="cpu", batch_size=args.batch_size)}

    def run(name: str, image: np.ndarray) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        prob = backends[name].predict_array(image, window=args.window, overlap=args.overlap)
        return prob, time.perf_counter() - t

    for name in backends:  # warm-up (first-call allocations, onnxruntime's arena)
        run(name, images[0])
    seconds = {name: 0.0 for name in backends}
    max_diff = 0.0
    for image in images:
        probs = {}
        for name in backends:
            probs[name], s = run(name, image)
            seconds[name] += s
        max_diff = max(max_diff, float(np.abs(probs["torch"] - probs["onnxruntime"]).max()))
    ms = {name: round(1000 * s / len(images), 1) for name, s in seconds.items()}
    print(json.dumps({
        "model": f"{args.arch}/{args.encoder}", "device": "cpu",
        "export": {"seconds": round(export_s, 2), "onnx_mb": round(exported.meta["onnx_bytes"] / 2**20, 1),
                   "opset": exported.meta["opset"], "check_max_abs_diff": exported.meta["verified"]["max_abs_diff"]},
        "speed": {"tiles": len(images), "tile": "x".join(map(str, images[0].shape)), "source": str(tiles[0].parent),
                  "window": args.window, "overlap": args.overlap, "batch_size": args.batch_size,
                  "torch_ms_per_tile": ms["torch"], "onnxruntime_ms_per_tile": ms["onnxruntime"],
                  "onnxruntime_speedup": round(ms["torch"] / ms["onnxruntime"], 2),
                  "runtimes": [p.runtime for p in backends.values()], "torch_threads": torch.get_num_threads(),
                  "max_abs_prob_diff": max_diff},
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))


if __name__ == "__main__":
    main()
