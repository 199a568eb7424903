"""The training loop: ``train(cfg, run_dir, resume=False)``, in-process, in a detached process or under torchrun.

Files in ``run_dir`` (one writer: rank 0):
  ``status.json``   state queued/running/finished/failed/stopped + progress, heartbeat every ~2 s (atomic writes)
  ``metrics.jsonl`` one JSON line per logged step (``kind="step"``) and per epoch (``kind="epoch"``, adds ``val_*``)
  ``last.pt``       every epoch end and on stop; ``best.pt`` at the best val IoU (atomic writes)

Determinism: the sample order of epoch ``e`` is a pure function of (seed, e) (a seeded ``DistributedSampler`` per
pass, sliced per rank), datasets get ``set_epoch(e)`` and the global RNGs are re-seeded from (seed, e, rank) at every
epoch start. So ``N`` epochs straight and ``k`` epochs + resume produce the same weights and the same metrics log
(apart from the time fields ``TIME_FIELDS``), also when stopped mid-epoch: the checkpoint records how many batches
of the epoch are done, and the resumed run skips exactly those.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from bdcore.atomic import atomic_write, atomic_write_json
from bdcore.engine.config import RunConfig
from bdcore.engine.models import load_checkpoint, model_from_config, save_checkpoint

log = logging.getLogger(__name__)

TIME_FIELDS = ("time", "elapsed", "img_per_s")
STATUS_NAME, METRICS_NAME, LAST_NAME, BEST_NAME = "status.json", "metrics.jsonl", "last.pt", "best.pt"
HEARTBEAT_S = 2.0


class TrainError(ValueError):
    """A run that cannot start as asked (e.g. a fresh start over an existing checkpoint)."""


# --------------------------------------------------------------------------- devices and processes
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``auto`` = cuda, then mps, then cpu; a forced device that is not there is a clear error."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            spec = "mps"
        else:
            spec = "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device {spec!r} asked for but CUDA is not available here; set device: auto or cpu")
        if local_rank is not None and spec == "cuda":
            spec = f"cuda:{local_rank}"
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainError("device 'mps' asked for but MPS is not available here; set device: auto or cpu")
    return torch.device(spec)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo(), resolve_device(device_spec)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_spec, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


# --------------------------------------------------------------------------- run-folder files
class StatusWriter:
    """``status.json`` owner: main thread updates fields, a daemon thread rewrites it every ``HEARTBEAT_S``."""

    def __init__(self, path: Path, enabled: bool, base: dict):
        self.path, self.enabled = path, enabled
        self.data = dict(base)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def update(self, write: bool = False, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            if write:
                self._write_locked()

    def _write_locked(self) -> None:
        if not self.enabled:
            return
        now = time.time()
        self.data["heartbeat"] = now
        self.data["updated"] = now
        atomic_write_json(self.path, self.data)

    def start(self) -> None:
        if not self.enabled:
            return

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with self._lock:
                    if self._stop.is_set():
                        break
                    try:
                        self._write_locked()
                    except OSError as exc:  # a full disk must not kill training; the next beat retries
                        log.warning("status heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="bdcore-heartbeat", daemon=True)
        self._thread.start()

    def finish(self, **fields: Any) -> None:
        """Final state: stop the heartbeat first so it can never overwrite the final state."""
        self._stop.set()
        with self._lock:
            self.data.update(fields)
            self._write_locked()
        if self._thread is not None:
            self._thread.join(timeout=5)


class MetricsLog:
    """Append-only JSON lines, each flushed and fsynced (a kill loses at most the line being written)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, sort_keys=True, allow_nan=False, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> int:
        """Keep only records up to ``step`` (those after it belong to work the checkpoint lost); atomic rewrite.
        Returns the number of records dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                dropped += 1  # a line cut short by a kill
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                kept.append(raw)
            else:
                dropped += 1
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.path, lambda f: f.write(text), "w")
        return dropped


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl (a torn last line is skipped)."""
    from bdcore.engine.runs import read_jsonl

    return read_jsonl(path)


# --------------------------------------------------------------------------- RNG
def seed_everything(*parts: int) -> None:
    seq = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    s = int(seq.generate_state(1, np.uint64)[0] & ((1 << 63) - 1))
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def rng_state() -> dict:
    """Python/numpy/torch/cuda RNG states as tensors (checkpoint-safe under ``weights_only``)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- data order
def steps_in_epoch(n_items: int, cfg: RunConfig, world: int = 1) -> int:
    if n_items <= 0:
        raise TrainError("the training set is empty; check data_root and val_fraction in the run config")
    if cfg.steps_per_epoch:
        return int(cfg.steps_per_epoch)
    per_rank = math.ceil(n_items / world)
    return max(1, math.ceil(per_rank / cfg.batch_size))


def epoch_batches(n_items: int, batch_size: int, steps: int, seed: int, epoch: int,
                  rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of epoch ``epoch``: seeded DistributedSampler passes, concatenated until ``steps``
    full batches are filled (a small dataset is cycled; each pass has its own order)."""
    need = steps * batch_size
    out: list[int] = []
    p = 0
    while len(out) < need:
        sampler = DistributedSampler(range(n_items), num_replicas=world, rank=rank, shuffle=True,
                                     seed=seed + 7919 * p, drop_last=False)
        sampler.set_epoch(epoch)
        out.extend(int(i) for i in sampler)
        p += 1
    out = out[:need]
    return [out[i:i + batch_size] for i in range(0, need, batch_size)]


# --------------------------------------------------------------------------- loss, schedule, eval
def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over the batch, per channel, averaged (fp32)."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    logits = logits.float()
    target = target.float()
    loss = logits.new_zeros(())
    if cfg.bce_weight:
        loss = loss + cfg.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
    if cfg.dice_weight:
        loss = loss + cfg.dice_weight * dice_loss(logits, target)
    return loss


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    # fused AdamW (one kernel for all tensors) on CPU/CUDA; the per-tensor Python loop is a third of a CPU step
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def make_amp(amp: bool, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler]:
    """(autocast context factory, grad scaler): bf16 autocast on CUDA (fp16 + loss scaling where bf16 is
    missing), plain fp32 elsewhere."""
    use_amp = bool(amp) and device.type == "cuda"
    dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=use_amp)

    return autocast, scaler


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        pct = min(0.5, max(0.01, cfg.warmup_epochs / cfg.epochs)) if cfg.warmup_epochs else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    cosine = cfg.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, sched: Any,
               scaler: torch.amp.GradScaler, cfg: RunConfig, autocast: Callable[[], Any]) -> torch.Tensor:
    """One optimisation step (forward under autocast, fp32 loss, backward, clip, step); returns the loss."""
    with autocast():
        logits = model(x)
    loss = seg_loss(logits, y, cfg)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    if sched is not None:
        sched.step()
    return loss.detach()


def forward_padded(model: nn.Module, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Logits for any H,W: zero-pad bottom/right to a multiple of the network stride, crop back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return model(x)[..., :h, :w]


def _truth_polygons(val_ds: Any, index: int, truth: np.ndarray) -> list:
    """Ground-truth building polygons of a val item in pixel coordinates: from the label file when the dataset
    knows it (exact), else from the mask."""
    from bdcore.metrics.polygons import mask_to_polygons

    paths = getattr(val_ds, "label_paths", None)
    images = getattr(val_ds, "image_paths", None)
    n_per = int(getattr(val_ds, "samples_per_tile", 1) or 1)
    crop = getattr(val_ds, "crop_size", None)
    if paths is not None and images is not None and crop is None:
        t = index // n_per
        if paths[t] is None:
            return []
        try:
            from bdcore.data import imagery, labels

            prof = imagery.read_profile(images[t])
            gdf = labels.read_buildings(paths[t], crs=prof["crs"])
            return list(labels.pixel_polygons(gdf, prof["transform"]))
        except (ImportError, AttributeError):
            pass
    return [p for p, _ in mask_to_polygons(truth[0], 0.5, min_area=0.0, simplify=0.0,
                                           boundary=truth[1] if truth.shape[0] > 1 else None)]


@torch.no_grad()
def evaluate(model: nn.Module, val_ds: Dataset, cfg: RunConfig, device: torch.device, dist_info: DistInfo,
             autocast: Callable[[], Any]) -> dict:
    """Val loss and pixel IoU/precision/recall/F1 summed over this rank's share of the val tiles (all-reduced),
    plus SpaceNet building F1 on the first ``cfg.building_f1_tiles`` tiles."""
    model.eval()
    n = len(val_ds)
    mine = list(range(dist_info.rank, n, dist_info.world))
    # sums: loss, items, tp, fp, fn, b_tp, b_fp, b_fn
    sums = torch.zeros(8, dtype=torch.float64)
    try:
        from bdcore.metrics.polygons import mask_to_polygons
        from bdcore.metrics.scoring import match_buildings
    except ImportError:
        mask_to_polygons = match_buildings = None  # type: ignore[assignment]
    warned = False
    loader = DataLoader(val_ds, batch_size=1, sampler=mine, num_workers=min(cfg.workers, 2))
    for idx, item in zip(mine, loader):
        x = item["image"].to(device, non_blocking=True)
        y = item["mask"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = forward_padded(model, x)
        logits = logits.float()
        sums[0] += float(seg_loss(logits, y, cfg))
        sums[1] += 1
        prob = torch.sigmoid(logits)
        pred = prob[:, 0] > cfg.threshold
        truth = y[:, 0] > 0.5
        tp = int((pred & truth).sum())
        sums[2] += tp
        sums[3] += int(pred.sum()) - tp
        sums[4] += int(truth.sum()) - tp
        if mask_to_polygons is not None and idx < cfg.building_f1_tiles:
            p = prob[0].cpu().numpy()
            try:
                props = mask_to_polygons(p[0], cfg.threshold, boundary=p[1] if p.shape[0] > 1 else None)
                truth_polys = _truth_polygons(val_ds, idx, y[0].cpu().numpy())
                m = match_buildings(truth_polys, [q for q, _ in props], [c for _, c in props])
                sums[5] += m["tp"]
                sums[6] += m["fp"]
                sums[7] += m["fn"]
            except Exception as exc:  # noqa: BLE001 - an optional metric must not end a training run
                if not warned:
                    log.warning("building F1 skipped: %s", exc)
                    warned = True
    if dist_info.enabled:
        import torch.distributed as dist

        t = sums.to(device if device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        sums = t.cpu()
    model.train()
    loss, items, tp, fp, fn, btp, bfp, bfn = sums.tolist()

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    out = {
        "val_loss": ratio(loss, items),
        "val_iou": ratio(tp, tp + fp + fn),
        "val_precision": precision,
        "val_recall": recall,
        "val_f1": 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0,
        "val_tiles": int(items),
    }
    if mask_to_polygons is not None and cfg.building_f1_tiles > 0:
        bp, br = ratio(btp, btp + bfp), ratio(btp, btp + bfn)
        out["val_building_f1"] = 2 * bp * br / (bp + br) if bp * br > 0 else 0.0
        out["val_building_precision"] = bp
        out["val_building_recall"] = br
    return out


# --------------------------------------------------------------------------- signals
class StopFlag:
    """SIGTERM/SIGINT → finish the current step, checkpoint, state ``stopped``. A second SIGINT interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: Optional[int] = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum
        log.info("signal %s: stopping after the current step", signal.Signals(signum).name)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# --------------------------------------------------------------------------- the loop
def _clean_temp_files(run_dir: Path) -> None:
    for name in (LAST_NAME, BEST_NAME, STATUS_NAME, METRICS_NAME):
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def train(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False, *,
          datasets: Optional[tuple[Dataset, Dataset]] = None, stop_at_step: Optional[int] = None) -> dict:
    """Train ``cfg`` in ``run_dir`` (resuming from ``last.pt`` with ``resume=True``); returns a summary dict
    (state, epoch, step, best_val_iou, last epoch record).

    ``datasets``: ``(train_ds, val_ds)`` instead of ``bdcore.data.dataset.build_datasets(cfg)``.
    ``stop_at_step``: behave as if SIGTERM arrived once this global step is done (tests, benchmarks).
    """
    if isinstance(cfg, dict):
        cfg = RunConfig.from_dict(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist_info, device = setup_distributed(cfg.device)
    main = dist_info.main
    last_path, best_path = run_dir / LAST_NAME, run_dir / BEST_NAME
    old_status: dict = {}
    try:
        old_status = json.loads((run_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        pass
    started = time.time()
    status = StatusWriter(run_dir / STATUS_NAME, main, {
        "created": old_status.get("created", started), "state": "running", "pid": os.getpid(),
        "host": socket.gethostname(), "device": device_name(device), "world_size": dist_info.world,
        "epoch": 0, "step": 0, "total_epochs": cfg.epochs, "steps_per_epoch": None, "started": started,
        "error": None, "resumed": bool(resume), "weights": old_status.get("weights"), "phase": "starting",
    })
    metrics = MetricsLog(run_dir / METRICS_NAME, main)
    stop = StopFlag()
    stop.install()
    try:
        status.update(write=True)
        status.start()
        result = _train_loop(cfg, run_dir, resume, datasets, stop_at_step, dist_info, device, status, metrics,
                             stop, last_path, best_path)
        status.finish(**result["status"])
        return result["summary"]
    except BaseException as exc:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            status.finish(state="stopped", error="interrupted (second Ctrl-C) before a checkpoint was written")
        else:
            status.finish(state="failed", error=f"{type(exc).__name__}: {msg}")
            log.error("training failed: %s", msg)
        raise
    finally:
        stop.restore()
        if dist_info.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _weights_progress(status: StatusWriter) -> Callable[[int, Optional[int]], None]:
    """Byte progress of an encoder-weights download → ``status.json`` ``phase`` (the heartbeat writes it)."""

    def report(done: int, total: Optional[int]) -> None:
        of = f"/{total / 1e6:.0f}" if total else ""
        status.update(phase=f"downloading encoder weights: {done / 1e6:.0f}{of} MB")

    return report


def _fit_samples_per_tile(train_ds: Any, cfg: RunConfig, world: int) -> None:
    """Make every sample of an epoch a distinct random crop.

    ``SpaceNetSegmentation`` seeds each item's crop/augmentation by (seed, epoch, index), so an index drawn twice
    in one epoch repeats the same crop. An epoch of ``steps_per_epoch`` batches larger than one pass therefore
    gets ``samples_per_tile`` raised so that one pass covers it (and ``cfg.samples_per_tile`` is honoured).
    """
    tiles = getattr(train_ds, "tile_ids", None)
    if tiles is None or not hasattr(train_ds, "samples_per_tile") or not len(tiles):
        return
    want = max(int(train_ds.samples_per_tile), cfg.samples_per_tile)
    if cfg.steps_per_epoch:
        want = max(want, math.ceil(cfg.steps_per_epoch * cfg.batch_size * world / len(tiles)))
    train_ds.samples_per_tile = want


def _train_loop(cfg, run_dir, resume, datasets, stop_at_step, dist_info, device, status, metrics, stop,
                last_path, best_path) -> dict:
    main = dist_info.main
    if main:
        _clean_temp_files(run_dir)
    ck = None
    if resume and last_path.exists():
        ck = load_checkpoint(last_path, expect=cfg)
    elif not resume and last_path.exists():
        raise TrainError(f"{last_path} exists: resume this run (resume=True / --resume) or use a new run folder")

    if datasets is None:
        from bdcore.data.dataset import build_datasets

        datasets = build_datasets(cfg)
    train_ds, val_ds = datasets
    # The normalisation the model was trained with travels in every checkpoint, so inference on another
    # machine (no access to the training catalog) normalises exactly as training did.
    band_stats = getattr(train_ds, "stats", None)
    band_stats = band_stats.to_dict() if hasattr(band_stats, "to_dict") else None
    _fit_samples_per_tile(train_ds, cfg, dist_info.world)
    n_train = len(train_ds)
    steps = steps_in_epoch(n_train, cfg, dist_info.world)
    status.update(steps_per_epoch=steps, write=True)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed, 0xB0C0)
    if ck is None:
        status.update(phase="preparing encoder weights", write=True)
    # Only rank 0 fetches pretrained weights: DDP broadcasts rank 0's parameters to every rank at construction.
    model, got = model_from_config(cfg, pretrained=ck is None and main,
                                   progress=_weights_progress(status) if main else None)
    weights_record = got.to_dict() if ck is None else (ck.get("weights") or status.data.get("weights"))
    status.update(weights=weights_record, phase="train", write=True)
    if ck is not None:
        model.load_state_dict(ck["model"])
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg, device)
    sched = make_scheduler(opt, cfg, steps)
    autocast, scaler = make_amp(cfg.amp, device)

    start_epoch, epoch_step, global_step, best_iou, elapsed0 = 0, 0, 0, -1.0, 0.0
    acc = {"epoch_loss": 0.0, "epoch_items": 0, "window_loss": 0.0, "window_steps": 0, "epoch_time": 0.0}
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if int(ck.get("steps_per_epoch", steps)) != steps:
            raise TrainError(
                f"{last_path}: the run had {ck['steps_per_epoch']} steps per epoch, the data now gives {steps} "
                "(tiles or batch size changed); restore the data or start a new run"
            )
        start_epoch, epoch_step, global_step = int(ck["epoch"]), int(ck["epoch_step"]), int(ck["step"])
        best_iou = float(ck.get("best_metric", -1.0))
        elapsed0 = float(ck.get("elapsed", 0.0))
        acc.update({k: type(acc[k])(v) for k, v in ck.get("accumulators", {}).items() if k in acc})
        if epoch_step >= steps:  # defensive: an epoch whose steps are all done resumes at its end-of-epoch work
            epoch_step = steps
        dropped = metrics.truncate_after(global_step)
        if dropped:
            log.info("metrics.jsonl: dropped %d record(s) written after the checkpoint (step %d)", dropped, global_step)
        log.info("resuming from %s: epoch %d, step %d", last_path, start_epoch + 1, global_step)
    elif main and metrics.path.exists():
        metrics.truncate_after(-1)  # a fresh start: records of a run that never checkpointed are void

    ddp_model: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    t_start = time.time()
    pin = device.type == "cuda"
    world = dist_info.world
    last_epoch_record: dict = {}
    status.update(epoch=start_epoch + 1, step=global_step, write=True)

    def elapsed() -> float:
        return elapsed0 + time.time() - t_start

    def payload(epoch_done: int, in_epoch: int) -> dict:
        return {
            "config": cfg.model_dump(mode="json"), "arch": cfg.arch, "encoder": cfg.encoder,
            "in_channels": cfg.in_channels, "classes": cfg.classes,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(),
            "epoch": epoch_done, "epoch_step": in_epoch, "step": global_step, "steps_per_epoch": steps,
            "best_metric": best_iou, "elapsed": elapsed(), "accumulators": dict(acc), "time": time.time(),
            "band_stats": band_stats, "weights": weights_record,
        }

    def stop_now() -> bool:
        flag = stop.requested or (stop_at_step is not None and global_step >= stop_at_step)
        if dist_info.enabled:
            import torch.distributed as dist

            t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag

    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        for ds in (train_ds, val_ds):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        if epoch_step == 0:
            seed_everything(cfg.seed, epoch, dist_info.rank)
            acc.update(epoch_loss=0.0, epoch_items=0, epoch_time=0.0)
        elif ck is not None and "rng" in ck:
            set_rng_state(ck["rng"])
        batches = epoch_batches(n_train, cfg.batch_size, steps, cfg.seed, epoch, dist_info.rank, world)[epoch_step:]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7 + dist_info.rank)
        loader = DataLoader(train_ds, batch_sampler=batches, num_workers=cfg.workers, pin_memory=pin,
                            generator=gen, persistent_workers=False,
                            prefetch_factor=4 if cfg.workers > 0 else None)
        t_window = time.time()
        t_epoch = time.time()
        window_items = 0
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["mask"].to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            lr = opt.param_groups[0]["lr"]
            loss = train_step(ddp_model, x, y, opt, sched, scaler, cfg, autocast)
            epoch_step += 1
            global_step += 1
            loss_v = float(loss.detach())
            if dist_info.enabled:
                import torch.distributed as dist

                lt = torch.tensor([loss_v], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
                dist.all_reduce(lt)
                loss_v = float(lt.item()) / world
            n_img = int(x.shape[0]) * world
            acc["epoch_loss"] += loss_v
            acc["epoch_items"] += 1
            acc["window_loss"] += loss_v
            acc["window_steps"] += 1
            window_items += n_img
            if global_step % cfg.log_every == 0:
                now = time.time()
                metrics.append({
                    "kind": "step", "epoch": epoch + 1, "step": global_step, "epoch_step": epoch_step,
                    "time": now, "elapsed": round(elapsed(), 3), "lr": lr,
                    "loss": acc["window_loss"] / max(1, acc["window_steps"]),
                    "img_per_s": round(window_items / max(1e-9, now - t_window), 3),
                })
                acc["window_loss"], acc["window_steps"] = 0.0, 0
                t_window, window_items = now, 0
            status.update(epoch=epoch + 1, step=global_step, epoch_step=epoch_step)
            if epoch_step < steps and stop_now():
                acc["epoch_time"] += time.time() - t_epoch
                if main:
                    save_checkpoint(run_dir / LAST_NAME, payload(epoch, epoch_step))
                stopped = True
                break
        if stopped:
            break
        del loader
        acc["epoch_time"] += time.time() - t_epoch
        # ---- end of epoch: evaluate, log, checkpoint
        record = {
            "kind": "epoch", "epoch": epoch + 1, "step": global_step, "time": time.time(),
            "elapsed": round(elapsed(), 3), "lr": opt.param_groups[0]["lr"],
            "loss": acc["epoch_loss"] / max(1, acc["epoch_items"]),
            "img_per_s": round(acc["epoch_items"] * cfg.batch_size * world / max(1e-9, acc["epoch_time"]), 3),
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            status.update(phase="eval", write=True)
            val = evaluate(model, val_ds, cfg, device, dist_info, autocast)
            status.update(phase="train")
            record.update(val)
            record["best"] = val["val_iou"] > best_iou
            if record["best"]:
                best_iou = val["val_iou"]
        metrics.append(record)
        last_epoch_record = record
        epoch_step = 0
        acc.update(epoch_loss=0.0, epoch_items=0, epoch_time=0.0)
        if main:
            ck_payload = payload(epoch + 1, 0)
            if record.get("best"):
                save_checkpoint(best_path, {**ck_payload, "val": {k: v for k, v in record.items()
                                                                   if k.startswith("val_")}})
            save_checkpoint(last_path, ck_payload)
        status.update(epoch=epoch + 1, step=global_step, best_val_iou=best_iou if best_iou >= 0 else None,
                      last_val_iou=record.get("val_iou"), write=True)
        ck = None
        if epoch + 1 < cfg.epochs and stop_now():
            stopped = True
            break

    state = "stopped" if stopped else "finished"
    log.info("training %s at epoch %d, step %d (best val IoU %.4f)", state,
             status.data.get("epoch", 0), global_step, best_iou)
    summary = {"state": state, "epoch": status.data.get("epoch", 0), "step": global_step,
               "best_val_iou": best_iou if best_iou >= 0 else None, "last_epoch": last_epoch_record,
               "run_dir": str(run_dir)}
    return {"summary": summary, "status": {"state": state, "step": global_step,
                                           "stopped_by": (signal.Signals(stop.signal).name if stop.signal else
                                                          ("stop_at_step" if stopped else None))}}


# --------------------------------------------------------------------------- entry point (runs.py, torchrun)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdcore.engine.train",
                                     description="train the run in RUN_DIR (reads RUN_DIR/config.json)")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = RunConfig.load(args.run_dir / "config.json")
    except ValueError as exc:  # never started: say so in status.json too, so the app shows why
        status_path = args.run_dir / STATUS_NAME
        if status_path.parent.is_dir():
            try:
                old = json.loads(status_path.read_text())
            except (OSError, ValueError):
                old = {}
            now = time.time()
            atomic_write_json(status_path, {**old, "state": "failed", "error": str(exc), "pid": os.getpid(),
                                            "heartbeat": now, "updated": now})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, args.run_dir, resume=args.resume)
    except ValueError as exc:  # status.json already says failed, with this message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if result["state"] in ("finished", "stopped") else 1


if __name__ == "__main__":
    raise SystemExit(main())
