"""Training throughput: model-only (one batch already in device memory) vs the full pipeline
(ArrayCache memmaps -> crop/augment in DataLoader workers -> host-to-device copy -> model), on the demo AOI.

Both use ``bdcore.engine.recipe.train_step`` and the trainer's input path (raw uint16 crops from workers that
ignore SIGTERM, ``data.device_batch.BatchPrep`` normalising and jittering on the device). Goal: pipeline >= 95 % of
model-only, in steady state: the pipeline's clock starts after the first ``workers x prefetch`` batches (which the
workers prepare at start-up, while the model warms up) and runs ``--steps`` more (default 200 on CUDA, 12 on CPU).
Prints one JSON object.

    python bench/train.py                                  # CPU defaults (small)
    python bench/train.py --device cuda --batch 16 --crop 512 --bf16 --channels-last   # workers: auto (cores)
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.data import DataLoader

from bdcore.data.dataset import build_datasets, loader_workers, worker_init
from bdcore.data.device_batch import BatchPrep
from bdcore.engine.config import RunConfig
from bdcore.engine.models import model_from_config
from bdcore.engine.device import device_name, make_amp, resolve_device
from bdcore.engine.recipe import make_optimizer, train_step
from bdcore.engine.trainer import EpochBatchSampler, epoch_batches

PREFETCH = 4  # the trainer's prefetch_factor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step, batches, device, warmup: int) -> tuple[float, int]:
    """Run ``step`` on each batch; time all but the first ``warmup`` (wall clock, device synced)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    _sync(device)
    t0, n = time.perf_counter(), 0
    for b in it:
        n += int(step(b))
    _sync(device)
    return time.perf_counter() - t0, n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: 200 on CUDA, 12 "
                   "on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed model steps first (the pipeline skips at least "
                   "workers x prefetch batches)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the trainer's auto value)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA")
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--data-root", default="demo", help='AOI folder, or "demo" (written to the cache on first use)')
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: flush denormal floats to zero (default on). Stepping many times on ONE batch (the "
                        "model-only figure) drives values into the denormal range, where x86 float math is many "
                        "times slower; without this, model-only measured 4x slower than the full pipeline on CPU")
    return p


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    flushed = bool(args.flush_denormal) and torch.set_flush_denormal(True)

    device = resolve_device(args.device)
    steps = args.steps if args.steps is not None else (200 if device.type == "cuda" else 12)
    workers = loader_workers(args.workers, device.type)
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = RunConfig(data_root=args.data_root, arch=args.arch, encoder=args.encoder, encoder_weights=None,
                    crop_size=args.crop, batch_size=args.batch, workers=workers, amp=bf16, device=args.device)
    train_ds, _ = build_datasets(cfg)
    t0 = time.perf_counter()
    if hasattr(train_ds, "warm_cache"):
        train_ds.warm_cache()  # decode once, as after the first epoch of a run
    warm_s = time.perf_counter() - t0

    torch.manual_seed(0)
    model = model_from_config(cfg, pretrained=False)[0].to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model, cfg, device)
    autocast, scaler = make_amp(bf16, device)
    prep = BatchPrep(train_ds.stats.lo, train_ds.stats.hi, device, channels_last=channels_last)
    skip = max(args.warmup, workers * PREFETCH)  # batches prepared at start-up are not steady state

    def step(batch) -> int:
        x, y = batch if isinstance(batch, tuple) else prep(batch)
        loss = train_step(model, x, y, opt, None, scaler, cfg, autocast)
        float(loss)  # the trainer reads the loss every step too
        return x.shape[0]

    # model only: one batch, already on the device
    one = prep(next(iter(DataLoader(train_ds, batch_size=args.batch, shuffle=True))))
    model_s, model_n = _timed_steps(step, [one] * (args.warmup + steps), device, args.warmup)

    def loader(epoch: int) -> DataLoader:
        """The trainer's loader (``Trainer._make_loader``) over ``skip + steps`` batches of ``epoch``."""
        sampler = EpochBatchSampler(pairs=True)
        sampler.set(epoch, epoch_batches(len(train_ds), args.batch, skip + steps, seed=0, epoch=epoch))
        return DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                          worker_init_fn=worker_init if workers else None,
                          prefetch_factor=PREFETCH if workers else None)

    # data only: how fast the loader alone delivers batches (device prep included), after the start-up batches
    data_s, data_n = _timed_steps(lambda b: prep(b)[0].shape[0], loader(0), device, skip)

    # full pipeline: the trainer's loader feeding the trainer's step
    pipe_s, pipe_n = _timed_steps(step, loader(1), device, skip)

    out = {
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "arch": args.arch, "encoder": args.encoder, "batch": args.batch, "crop": args.crop,
        "bf16": bf16, "channels_last": channels_last, "workers": workers, "timed_steps": steps,
        "untimed_pipeline_batches": skip,
        "flush_denormal": flushed,
        "train_tiles": len(train_ds), "cache_warm_s": round(warm_s, 3),
        "model_only_img_s": round(model_n / model_s, 3),
        "pipeline_img_s": round(pipe_n / pipe_s, 3),
        "data_only_img_s": round(data_n / data_s, 3),
    }
    out["pipeline_vs_model"] = round(out["pipeline_img_s"] / out["model_only_img_s"], 4)
    out["goal_met"] = out["pipeline_vs_model"] >= 0.95
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
