"""Benchmark: inference throughput on SpaceNet-sized tiles and peak memory on a big GeoTIFF.

    python bench/inference.py [--device auto] [--arch Unet --encoder resnet34] [--tiles 8] [--tta]
                              [--size 4000 | --big | --shape 600x60000] [--window 1024] [--overlap 128]
                              [--mem-model dummy|real]
                              [--bf16 | --no-bf16] [--channels-last | --no-channels-last]

``--bf16``: the Predictor's bf16 autocast on CUDA (its default there); on CPU a bf16 autocast around the calls.
``--channels-last``: the Predictor keeps the model (converted once) and its batches in channels_last (default: on
CUDA). Both are recorded in the output.

1. ``speed``: 650x650x3 uint16 tiles through ``Predictor.predict_array`` (the Review page / evaluate path) and
   through ``predict_geotiff`` (GeoTIFF in, prob/mask GeoTIFF + GeoJSON + CSV out), random-init weights (no
   download), tiles/s and ms/tile after one warm-up tile.
2. ``memory``: ``predict_geotiff`` on a ``--size``² 3-band uint16 GeoTIFF (``--big``: 10,000²; ``--shape HxW``: any
   shape, e.g. ``600x60000`` for a wide, short strip whose memory must not grow with its width), run in a fresh child
   process; reported as peak RSS growth over the child's RSS just before the call (model built and warmed up),
   next to the size of the image as float32 (what reading it whole would cost). ``--mem-model dummy`` (default)
   uses a 1x1-conv model so the figure is the pipeline's own memory and the run is fast on CPU; ``real`` uses the
   chosen architecture.

Runs in a temp dir; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before torch/smp are imported: never wait on the hub

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from bdcore.engine.models import build_model
from bdcore.inference.predict import predict_geotiff
from bdcore.inference.predictor import Normalization, Predictor


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Dummy:
    """Cheap stand-in network (per-pixel band mean → logit) so memory runs measure the pipeline, not the model.

    (Not a 1x1 Conv2d: torch's CPU convolution allocates ~128 bytes per input pixel of workspace.)"""

    @staticmethod
    def build(in_ch: int = 3):
        class BandMean(torch.nn.Module):
            def forward(self, x):
                return x.mean(dim=1, keepdim=True) * 4.0 - 1.5

        return BandMean()


def _model(arch: str, encoder: str, dummy: bool = False):
    if dummy:
        return Dummy.build()
    return build_model(arch, encoder, 3, 1, encoder_weights=None)


def write_image(path: Path, size: int, seed: int = 0, strip: int = 512, width: int | None = None) -> None:
    """A size (rows) x ``width`` (default: size) 3-band uint16 GeoTIFF (UTM, 0.3 m) with bright rectangles, written
    in blocks of at most ``strip`` x 4096 px (so writing a very wide image needs little memory)."""
    rng = np.random.default_rng(seed)
    width = width or size
    prof = dict(driver="GTiff", width=width, height=size, count=3, dtype="uint16", crs="EPSG:32611",
                transform=Affine(0.3, 0, 660000.0, 0, -0.3, 4000000.0), tiled=True, blockxsize=256, blockysize=256,
                BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **prof) as dst:
        for r in range(0, size, strip):
            for c in range(0, width, 4096):
                h, w = min(strip, size - r), min(4096, width - c)
                a = rng.normal(300, 40, size=(3, h, w))
                for _ in range(max(1, w * h // (100 * min(size, strip)))):
                    c0, r0 = rng.integers(0, max(1, w - 40)), rng.integers(0, max(1, h - 20))
                    a[:, r0 : r0 + 20, c0 : c0 + 40] = 1500
                dst.write(np.clip(a, 0, 2047).astype(np.uint16), window=Window(c, r, w, h))


def _autocast(args, device: str):
    """A bf16 autocast on CPU when ``--bf16`` asks for it; on CUDA the Predictor autocasts itself."""
    import contextlib

    if args.bf16 and not device.startswith("cuda"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bench_speed(args, tmp: Path) -> dict:
    model = _model(args.arch, args.encoder)
    norm = Normalization(np.full(3, 100.0), np.full(3, 1600.0), "bench")
    pred = Predictor(model, in_channels=3, normalization=norm, device=args.device, product="PS-RGB",
                     batch_size=args.batch_size, channels_last=args.channels_last)
    with _autocast(args, pred.device):
        return {**_speed(args, tmp, pred), "bf16": bool(args.bf16) or pred.device.startswith("cuda"),
                "channels_last": pred.channels_last}


def _speed(args, tmp: Path, pred: Predictor) -> dict:
    rng = np.random.default_rng(0)
    tiles = [np.clip(rng.normal(400, 200, (3, 650, 650)), 0, 2047).astype(np.uint16) for _ in range(args.tiles)]
    pred.predict_array(tiles[0], tta=args.tta)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for t in tiles:
        pred.predict_array(t, tta=args.tta)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    paths = []
    for i in range(min(args.tiles, 4)):
        p = tmp / f"RGB-PanSharpen_AOI_2_Vegas_img{i}.tif"
        write_image(p, 650, seed=i)
        paths.append(p)
    predict_geotiff(pred, paths[0], tmp / "out", tta=args.tta)  # warm-up
    g0 = time.perf_counter()
    for p in paths:
        predict_geotiff(pred, p, tmp / "out", tta=args.tta)
    gwall = time.perf_counter() - g0
    return {
        "tile": "650x650x3 uint16", "tiles": len(tiles), "tta": args.tta,
        "array_tiles_per_s": round(len(tiles) / wall, 3), "array_ms_per_tile": round(1000 * wall / len(tiles), 1),
        "array_cpu_ms_per_tile": round(1000 * cpu / len(tiles), 1),
        "geotiff_tiles_per_s": round(len(paths) / gwall, 3),
        "geotiff_ms_per_tile": round(1000 * gwall / len(paths), 1),
    }


def memory_child(args) -> dict:
    """Runs in a fresh process: peak RSS growth of one predict_geotiff call on a big image (every import, the model
    and a warm-up batch come before the baseline)."""
    model = _model(args.arch, args.encoder, dummy=args.mem_model == "dummy")
    norm = Normalization(np.full(3, 100.0), np.full(3, 1600.0), "bench")
    pred = Predictor(model, in_channels=3, normalization=norm, device=args.device, batch_size=args.batch_size,
                     channels_last=args.channels_last)
    pred.predict_batch(np.zeros((args.batch_size, 3, args.window, args.window), np.float32))  # warm-up allocator
    path = Path(args.image)
    reset = _reset_peak()
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    res = predict_geotiff(pred, path, path.parent / "out", window=args.window, overlap=args.overlap,
                          batch_size=args.batch_size, tta=args.tta)
    wall = time.perf_counter() - t0
    peak = _rss_kb("VmHWM")
    out = {"peak_rss_growth_mb": round((peak - base) / 1024, 1), "baseline_rss_mb": round(base / 1024, 1),
           "peak_rss_mb": round(peak / 1024, 1), "peak_reset": reset, "seconds": round(wall, 2),
           "windows": res["windows"], "n_buildings": res.get("n_buildings")}
    if pred.device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def bench_memory(args, tmp: Path) -> dict:
    height, width = (10_000, 10_000) if args.big else (args.size, args.size)
    if args.shape:
        height, width = (int(v) for v in args.shape.lower().split("x"))
    img = tmp / "big.tif"
    t0 = time.perf_counter()
    write_image(img, height, width=width)
    gen = time.perf_counter() - t0
    cmd = [sys.executable, __file__, "--memory-child", "--image", str(img), "--device", args.device,
           "--arch", args.arch, "--encoder", args.encoder, "--window", str(args.window), "--overlap",
           str(args.overlap), "--batch-size", str(args.batch_size), "--mem-model", args.mem_model]
    if args.channels_last is not None:
        cmd.append("--channels-last" if args.channels_last else "--no-channels-last")
    if args.tta:
        cmd.append("--tta")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    img.unlink(missing_ok=True)
    return {
        "image": f"{height}x{width}x3 uint16", "model": args.mem_model if args.mem_model == "dummy" else
        f"{args.arch}/{args.encoder}", "window": args.window, "overlap": args.overlap,
        "image_float32_mb": round(height * width * 3 * 4 / 2**20, 1),
        "one_band_float32_mb": round(height * width * 4 / 2**20, 1), "input_write_s": round(gen, 1), **child,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="Unet")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--size", type=int, default=4000, help="side of the memory-test image")
    ap.add_argument("--big", action="store_true", help="memory test on a 10,000 x 10,000 image")
    ap.add_argument("--shape", default=None, help="memory test on a ROWSxCOLS image, e.g. 600x60000 (wide, short)")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--mem-model", choices=("dummy", "real"), default="dummy")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for CUDA, where the Predictor always uses it)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="model and batches in channels_last (default: on for CUDA)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bf16 is False and str(args.device).startswith("cuda"):
        ap.error("--no-bf16 on CUDA: the Predictor always runs bf16 autocast there")
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return

    import torch

    from bdcore.engine.device import resolve_device

    result = {"bench": "inference", "device": str(resolve_device(args.device)), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine()}
    if result["device"].startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="bdcore-bench-") as d:
        tmp = Path(d)
        if not args.skip_speed:
            result["speed"] = {"model": f"{args.arch}/{args.encoder}", **bench_speed(args, tmp)}
        if not args.skip_memory:
            result["memory"] = bench_memory(args, tmp)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
