"""The training loop as an object: a :class:`Trainer` advancing a :class:`TrainState`.

Files it writes (rank 0 only; names in ``bdcore.engine.rundir``): ``status.json`` through a ``StatusWriter``,
``metrics.jsonl`` (``kind="step"`` every ``log_every`` steps, ``kind="epoch"`` at each epoch end, with ``val_*`` every
``eval_every`` epochs and at the last), ``last.pt`` at every epoch end and on stop, ``best.pt`` at the best val IoU
(weights only: the optimizer/scheduler/RNG state, needed only to continue, lives in ``last.pt``).

Data: one DataLoader for the whole run, its workers persistent (no respawn per epoch); its batch sampler
(:class:`EpochBatchSampler`) yields ``(epoch, index)`` pairs, so the epoch reaches the workers' dataset copies.
Items are raw crops (``SampleSpec(raw=True)``); ``data.device_batch.BatchPrep`` normalises and jitters them on the
device. Workers ignore SIGTERM/SIGINT (``dataset.worker_init``), so a signal to the whole process group (torchrun,
SLURM, Ctrl-C) stops the run cleanly instead of killing its workers.

Determinism: the sample order of epoch ``e`` is a pure function of (seed, e) (a seeded ``DistributedSampler`` per
pass, sliced per rank), datasets get ``set_epoch(e)`` and the global RNGs are re-seeded from (seed, e, rank) at every
epoch start. So ``N`` epochs straight and ``k`` epochs + resume produce the same weights and the same metrics log
(apart from ``rundir.TIME_FIELDS``), also when stopped mid-epoch: the checkpoint records how many batches of the
epoch are done (and every rank's RNG state), and the resumed run skips exactly those. On CPU this is bit-exact
(tested, also with 2 gloo ranks); on a GPU see README "Reproducibility" and ``RunConfig.deterministic``.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from bdcore.data.catalog import load_catalog
from bdcore.data.dataset import SpaceNetSegmentation, build_datasets, loader_workers, worker_init
from bdcore.data.device_batch import BatchPrep
from bdcore.data.split import config_split
from bdcore.engine.config import RunConfig
from bdcore.engine.device import DistInfo, all_reduce, make_amp
from bdcore.engine.models import load_checkpoint, model_from_config, save_checkpoint
from bdcore.engine.recipe import load_optimizer_state, make_optimizer, make_scheduler, restore_scheduler, train_step
from bdcore.engine.rundir import MetricsLog, RunDir, StatusWriter
from bdcore.engine.validate import evaluate

log = logging.getLogger(__name__)


class TrainError(ValueError):
    """A run that cannot start as asked (e.g. a fresh start over an existing checkpoint)."""


# --------------------------------------------------------------------------------------------- RNG and order
def seed_everything(*parts: int) -> None:
    """Seed Python, numpy and torch from ``parts`` (e.g. seed, epoch, rank)."""
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


def gather_rng_states(dist_info: DistInfo) -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order, on rank 0 (other ranks get ``[]``); all ranks must call it.
    Ranks draw different streams (seeded with their rank), so one rank's state would not resume the others."""
    own = rng_state()
    if not dist_info.enabled:
        return [own]
    states: list | None = [None] * dist_info.world if dist_info.main else None
    dist.gather_object(own, states, dst=0)
    return states or []


def rank_rng_state(saved: dict | list, dist_info: DistInfo, *seed_parts: int) -> dict:
    """This rank's RNG state from a checkpoint's ``rng`` (a list, one per rank; a dict in checkpoints written before
    per-rank states, i.e. rank 0's). Written with another number of ranks: a state seeded from ``seed_parts`` and
    the rank (deterministic, but not the stream the interrupted run would have drawn), said in one log line."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) == dist_info.world:
        return states[dist_info.rank]
    if dist_info.main:
        log.info("checkpoint has RNG states of %d rank(s), this run has %d: the rest of this epoch draws from "
                 "reseeded generators (deterministic, not bit-identical to an uninterrupted run)", len(states),
                 dist_info.world)
    before = rng_state()
    seed_everything(*seed_parts, dist_info.rank, 0x5EED)
    state = rng_state()
    set_rng_state(before)
    return state


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


def fit_samples_per_tile(train_ds: Dataset, cfg: RunConfig, world: int) -> None:
    """Make every sample of an epoch a distinct random crop.

    ``SpaceNetSegmentation`` seeds each item's crop/augmentation by (seed, epoch, index), so an index drawn twice
    in one epoch repeats the same crop. An epoch of ``steps_per_epoch`` batches larger than one pass therefore
    gets ``samples_per_tile`` raised so that one pass covers it (and ``cfg.samples_per_tile`` is honoured).
    """
    if not isinstance(train_ds, SpaceNetSegmentation):
        return
    want = max(train_ds.samples_per_tile, cfg.samples_per_tile)
    if cfg.steps_per_epoch:
        want = max(want, math.ceil(cfg.steps_per_epoch * cfg.batch_size * world / len(train_ds.tile_ids)))
    train_ds.samples_per_tile = want


class EpochBatchSampler:
    """The batch sampler of the trainer's one DataLoader: the batches given to :meth:`set` for an epoch, as
    ``(epoch, index)`` pairs when the dataset takes them (persistent workers keep their own copy of the dataset, which
    ``set_epoch`` in the main process never reaches), else as plain indices."""

    def __init__(self, pairs: bool):
        self.pairs = pairs
        self.epoch = 0
        self.batches: list[list[int]] = []

    def set(self, epoch: int, batches: list[list[int]]) -> None:
        self.epoch, self.batches = int(epoch), batches

    def __iter__(self):
        for b in self.batches:
            yield [(self.epoch, i) for i in b] if self.pairs else list(b)

    def __len__(self) -> int:
        return len(self.batches)


# --------------------------------------------------------------------------------------------------- signals
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


# ----------------------------------------------------------------------------------------------------- state
@dataclass
class TrainState:
    """Where training is. With the model/optimizer/scheduler/scaler/RNG states it is what a checkpoint records to
    continue exactly; the accumulators are running sums of the current epoch and log window."""

    epoch: int = 0              # 0-based epoch in progress (= epochs completed)
    epoch_step: int = 0         # batches of that epoch done
    step: int = 0               # optimisation steps done in all
    best_metric: float = -1.0   # best val IoU so far (-1: none yet)
    elapsed: float = 0.0        # training seconds before this process started (a resumed run)
    epoch_loss: float = 0.0
    epoch_items: int = 0
    window_loss: float = 0.0
    window_steps: int = 0
    epoch_time: float = 0.0

    def accumulators(self) -> dict:
        return {"epoch_loss": self.epoch_loss, "epoch_items": self.epoch_items, "window_loss": self.window_loss,
                "window_steps": self.window_steps, "epoch_time": self.epoch_time}

    def reset_epoch(self) -> None:
        self.epoch_loss, self.epoch_items, self.epoch_time = 0.0, 0, 0.0

    @classmethod
    def from_checkpoint(cls, ck: dict, steps: int) -> "TrainState":
        acc = ck["accumulators"]
        # an epoch whose steps are all done (defensive) resumes at its end-of-epoch work
        return cls(epoch=int(ck["epoch"]), epoch_step=min(int(ck["epoch_step"]), steps), step=int(ck["step"]),
                   best_metric=float(ck["best_metric"]), elapsed=float(ck["elapsed"]),
                   epoch_loss=float(acc["epoch_loss"]), epoch_items=int(acc["epoch_items"]),
                   window_loss=float(acc["window_loss"]), window_steps=int(acc["window_steps"]),
                   epoch_time=float(acc["epoch_time"]))


# --------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One process's share of a run: :meth:`setup` (data, model, optimiser; resume from ``last.pt``), then
    :meth:`fit` (epochs until done or stopped). Rank 0 writes the files; every rank runs the same steps."""

    def __init__(self, cfg: RunConfig, run: RunDir, dist_info: DistInfo, device: torch.device,
                 status: StatusWriter, metrics: MetricsLog, stop: StopFlag, stop_at_step: Optional[int] = None):
        self.cfg, self.run, self.dist, self.device = cfg, run, dist_info, device
        self.status, self.metrics, self.stop, self.stop_at_step = status, metrics, stop, stop_at_step
        self.state = TrainState()
        self.stopped = False
        self.last_epoch_record: dict = {}
        self._resume_rng: Optional[dict] = None  # RNG state for the rest of a mid-epoch checkpoint's epoch
        self._train_loader: Optional[DataLoader] = None  # built on first use, kept for the run (persistent workers)
        self._prep: Optional[BatchPrep] = None
        self._t_start = time.time()
        self._t_saved = time.monotonic()  # last checkpoint write (or the start), for checkpoint_minutes

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, resume: bool, datasets: Optional[tuple[Dataset, Dataset]] = None) -> None:
        cfg, main = self.cfg, self.dist.main
        if main:
            self.run.clean_temp_files()
        if not resume and self.run.last.exists():
            raise TrainError(f"{self.run.last} exists: resume this run (resume=True / --resume) or use a new run "
                             "folder")
        if datasets is None:
            self._check_labels()
        ck = load_checkpoint(self.run.last, expect=cfg) if resume and self.run.last.exists() else None
        self.train_ds, self.val_ds = datasets if datasets is not None else build_datasets(cfg)
        # The normalisation the model was trained with travels in every checkpoint, so inference on another
        # machine (no access to the training catalog) normalises exactly as training did.
        self.band_stats = self.train_ds.stats.to_dict() if isinstance(self.train_ds, SpaceNetSegmentation) else None
        fit_samples_per_tile(self.train_ds, cfg, self.dist.world)
        self.n_train = len(self.train_ds)
        self.steps = steps_in_epoch(self.n_train, cfg, self.dist.world)
        self.status.update(steps_per_epoch=self.steps, write=True)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._build_model(ck)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.sched = make_scheduler(self.opt, cfg, self.steps)
        self.autocast, self.scaler = make_amp(cfg.amp, self.device)
        if ck is not None:
            self._resume(ck)
        elif main and self.metrics.path.exists():
            self.metrics.truncate_after(-1)  # a fresh start: records of a run that never checkpointed are void
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.model.train()

    def _check_labels(self) -> None:
        """The last guard, before any step and on every resume: a train/val tile whose labels file is unusable stops
        the run now, every such file listed (not when the tile is first sampled, hours in); the tiles that
        ``exclude_bad_labels`` leaves out are recorded in status.json."""
        split = config_split(load_catalog(self.cfg.resolved_data_root()), self.cfg)
        split.check_labels(f'set "exclude_bad_labels": true in {self.run.config} to leave those tiles out')
        if split.excluded:
            self.status.update(excluded_tiles=split.excluded, write=True)

    def _build_model(self, ck: Optional[dict]) -> None:
        """The model: pretrained encoder for a fresh run (rank 0 only: DDP broadcasts rank 0's parameters at
        construction), the checkpoint's weights for a resumed one."""
        seed_everything(self.cfg.seed, 0xB0C0)
        if ck is None:
            self.status.update(phase="preparing encoder weights", write=True)
        model, got = model_from_config(self.cfg, pretrained=ck is None and self.dist.main,
                                       progress=self._weights_progress if self.dist.main else None)
        # checkpoints from before encoder weights were recorded: keep what status.json said
        self.weights_record = got.to_dict() if ck is None else (ck.get("weights") or self.status.data["weights"])
        self.status.update(weights=self.weights_record, phase="train", write=True)
        if ck is not None:
            model.load_state_dict(ck["model"])
        model = model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _weights_progress(self, done: int, total: Optional[int]) -> None:
        """Byte progress of an encoder-weights download → ``status.json`` ``phase`` (the heartbeat writes it)."""
        of = f"/{total / 1e6:.0f}" if total else ""
        self.status.update(phase=f"downloading encoder weights: {done / 1e6:.0f}{of} MB")

    def _resume(self, ck: dict) -> None:
        load_optimizer_state(self.opt, ck["optimizer"])  # moments in the parameters' layout (channels_last on CUDA)
        restore_scheduler(self.sched, ck["scheduler"], int(ck["step"]))
        if ck["scaler"]:
            self.scaler.load_state_dict(ck["scaler"])
        if int(ck["steps_per_epoch"]) != self.steps:
            raise TrainError(
                f"{self.run.last}: the run had {ck['steps_per_epoch']} steps per epoch, the data now gives "
                f"{self.steps} (tiles or batch size changed); restore the data or start a new run"
            )
        self.state = TrainState.from_checkpoint(ck, self.steps)
        self._resume_rng = rank_rng_state(ck["rng"], self.dist, self.cfg.seed, self.state.epoch,
                                          self.state.epoch_step) if self.state.epoch_step else None
        dropped = self.metrics.truncate_after(self.state.step)
        if dropped:
            log.info("metrics.jsonl: dropped %d record(s) written after the checkpoint (step %d)", dropped,
                     self.state.step)
        log.info("resuming from %s: epoch %d, step %d", self.run.last, self.state.epoch + 1, self.state.step)

    # ------------------------------------------------------------------------------------------ loop
    def fit(self) -> None:
        """Train until ``cfg.epochs`` are done or a stop is requested (signal or ``stop_at_step``)."""
        s = self.state
        self._t_start = time.time()
        self.status.update(epoch=s.epoch + 1, step=s.step, write=True)
        while s.epoch < self.cfg.epochs:
            if self._train_epoch():
                self.stopped = True
                return
            self._end_epoch()
            if s.epoch < self.cfg.epochs and self._stop_requested():
                self.stopped = True
                return

    def elapsed(self) -> float:
        return self.state.elapsed + time.time() - self._t_start

    def _loader(self) -> DataLoader:
        """The run's DataLoader, set to the rest of this epoch's batches (a resumed epoch skips those its
        checkpoint covers)."""
        cfg, s, rank = self.cfg, self.state, self.dist.rank
        batches = epoch_batches(self.n_train, cfg.batch_size, self.steps, cfg.seed, s.epoch, rank,
                                self.dist.world)[s.epoch_step:]
        if self._train_loader is None:
            self._train_loader = self._make_loader()
        self._train_loader.batch_sampler.set(s.epoch, batches)
        self._train_loader.generator.manual_seed(cfg.seed * 1_000_003 + s.epoch * 7 + rank)
        return self._train_loader

    def _make_loader(self) -> DataLoader:
        """One DataLoader for the run: persistent workers when the dataset takes ``(epoch, index)`` pairs."""
        workers = loader_workers(self.cfg.workers, self.device.type)
        pairs = isinstance(self.train_ds, SpaceNetSegmentation)
        return DataLoader(self.train_ds, batch_sampler=EpochBatchSampler(pairs), num_workers=workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          worker_init_fn=worker_init if workers > 0 else None,
                          persistent_workers=workers > 0 and pairs, prefetch_factor=4 if workers > 0 else None)

    def _train_epoch(self) -> bool:
        """The epoch's (remaining) steps; True when stopped before its end (``last.pt`` then saved mid-epoch)."""
        cfg, s = self.cfg, self.state
        for ds in (self.train_ds, self.val_ds):
            if hasattr(ds, "set_epoch"):  # datasets given to train() need not have it
                ds.set_epoch(s.epoch)
        if s.epoch_step == 0:
            seed_everything(cfg.seed, s.epoch, self.dist.rank)
            s.reset_epoch()
        elif self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        t_window = t_epoch = time.time()
        window_items = 0
        for batch in self._loader():
            lr = self.opt.param_groups[0]["lr"]
            loss, n_img = self._step(batch)
            s.epoch_step += 1
            s.step += 1
            s.epoch_loss += loss
            s.epoch_items += 1
            s.window_loss += loss
            s.window_steps += 1
            window_items += n_img
            if s.step % cfg.log_every == 0 or s.epoch_step == self.steps:  # at least once per epoch
                now = time.time()
                self.metrics.append({
                    "kind": "step", "epoch": s.epoch + 1, "step": s.step, "epoch_step": s.epoch_step,
                    "time": now, "elapsed": round(self.elapsed(), 3), "lr": lr,
                    "loss": s.window_loss / max(1, s.window_steps),
                    "img_per_s": round(window_items / max(1e-9, now - t_window), 3),
                })
                s.window_loss, s.window_steps = 0.0, 0
                t_window, window_items = now, 0
            self.status.update(epoch=s.epoch + 1, step=s.step, epoch_step=s.epoch_step)
            if s.epoch_step < self.steps and self._stop_requested():
                s.epoch_time += time.time() - t_epoch
                self._save(best_val=None)
                return True
            if s.epoch_step < self.steps and self._checkpoint_due():
                self._save_mid_epoch(t_epoch)
        s.epoch_time += time.time() - t_epoch
        return False

    def _step(self, batch: dict) -> tuple[float, int]:
        """One optimisation step on ``batch``: (loss averaged over ranks, images in the step over all ranks)."""
        x, y = self._inputs(batch)
        loss = float(train_step(self.ddp_model, x, y, self.opt, self.sched, self.scaler, self.cfg, self.autocast))
        if self.dist.enabled:
            loss = float(all_reduce(torch.tensor([loss], dtype=torch.float64), self.device).item()) / self.dist.world
        return loss, int(x.shape[0]) * self.dist.world

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as model input on the device: raw crops normalised and jittered there (``BatchPrep``)."""
        if self._prep is None:
            stats = getattr(self.train_ds, "stats", None)
            self._prep = BatchPrep(getattr(stats, "lo", None), getattr(stats, "hi", None), self.device,
                                   channels_last=self.device.type == "cuda")
        return self._prep(batch)

    def _end_epoch(self) -> None:
        """Epoch record (with validation when due), checkpoints, status; the state moves to the next epoch."""
        cfg, s = self.cfg, self.state
        epoch = s.epoch + 1  # 1-based, as logged
        record = {
            "kind": "epoch", "epoch": epoch, "step": s.step, "time": time.time(),
            "elapsed": round(self.elapsed(), 3), "lr": self.opt.param_groups[0]["lr"],
            "loss": s.epoch_loss / max(1, s.epoch_items),
            "img_per_s": round(s.epoch_items * cfg.batch_size * self.dist.world / max(1e-9, s.epoch_time), 3),
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            self.status.update(phase="eval", write=True)
            val = evaluate(self.model, self.val_ds, cfg, self.device, self.dist, self.autocast)
            self.status.update(phase="train")
            record.update(val)
            record["best"] = val["val_iou"] > s.best_metric
            if record["best"]:
                s.best_metric = val["val_iou"]
        self.metrics.append(record)
        self.last_epoch_record = record
        s.epoch, s.epoch_step = epoch, 0
        s.reset_epoch()
        self._resume_rng = None
        self._save(best_val={k: v for k, v in record.items() if k.startswith("val_")} if record.get("best") else None)
        self.status.update(epoch=epoch, step=s.step, best_val_iou=s.best_metric if s.best_metric >= 0 else None,
                           last_val_iou=record.get("val_iou"), write=True)

    def _stop_requested(self) -> bool:
        """A stop signal or ``stop_at_step`` reached, on any rank (every rank must call this at the same points)."""
        flag = self.stop.requested or (self.stop_at_step is not None and self.state.step >= self.stop_at_step)
        if self.dist.enabled:
            flag = bool(all_reduce(torch.tensor([1.0 if flag else 0.0]), self.device, op="max").item() > 0)
        return flag

    def _checkpoint_due(self) -> bool:
        """``checkpoint_minutes`` have passed since the last checkpoint; rank 0's clock decides for every rank (every
        rank must call this at the same points)."""
        minutes = self.cfg.checkpoint_minutes
        if not minutes:
            return False
        due = self.dist.main and time.monotonic() - self._t_saved >= minutes * 60
        if self.dist.enabled:
            due = bool(all_reduce(torch.tensor([1.0 if due else 0.0]), self.device, op="max").item() > 0)
        return bool(due)

    # ------------------------------------------------------------------------------------------ checkpoints
    def payload(self, rng: list[dict] | None = None) -> dict:
        """The checkpoint contents (``models.save_checkpoint`` adds the format marker); ``rng``: every rank's RNG
        state (:func:`gather_rng_states`; default: this process's only)."""
        cfg, s = self.cfg, self.state
        return {
            "config": cfg.model_dump(mode="json"), "arch": cfg.arch, "encoder": cfg.encoder,
            "in_channels": cfg.in_channels, "classes": cfg.classes,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng if rng is not None else [rng_state()],
            "epoch": s.epoch, "epoch_step": s.epoch_step, "step": s.step, "steps_per_epoch": self.steps,
            "best_metric": s.best_metric, "elapsed": self.elapsed(), "accumulators": s.accumulators(),
            "time": time.time(), "band_stats": self.band_stats, "weights": self.weights_record,
        }

    def _save_mid_epoch(self, t_epoch: float) -> None:
        """A time-based ``last.pt`` inside an epoch (the epoch's time so far is saved with it, then goes on)."""
        now = time.time()
        self.state.epoch_time += now - t_epoch
        self.status.update(phase="writing last.pt (checkpoint_minutes)", write=True)
        self._save(best_val=None)
        self.status.update(phase="train")
        self.state.epoch_time -= now - t_epoch  # _train_epoch adds the whole epoch's time at its end

    def _save(self, best_val: Optional[dict]) -> None:
        """``last.pt`` (rank 0); first ``best.pt`` (weights only, with the val metrics) when ``best_val`` is given.
        Every rank calls it (each one's RNG state goes into the checkpoint)."""
        rng = gather_rng_states(self.dist)
        self._t_saved = time.monotonic()
        if not self.dist.main:
            return
        payload = self.payload(rng)
        if best_val is not None:
            save_checkpoint(self.run.best, best_payload(payload, best_val))
        save_checkpoint(self.run.last, payload)

    # ------------------------------------------------------------------------------------------ result
    def result(self) -> tuple[dict, dict]:
        """(summary returned by ``train()``, final ``status.json`` fields)."""
        s = self.state
        state = "stopped" if self.stopped else "finished"
        epoch = self.status.data["epoch"]
        best = s.best_metric if s.best_metric >= 0 else None
        log.info("training %s at epoch %d, step %d (best val IoU %.4f)", state, epoch, s.step, s.best_metric)
        summary = {"state": state, "epoch": epoch, "step": s.step, "best_val_iou": best,
                   "last_epoch": self.last_epoch_record, "run_dir": str(self.run.path)}
        stopped_by = signal.Signals(self.stop.signal).name if self.stop.signal else (
            "stop_at_step" if self.stopped else None)
        return summary, {"state": state, "step": s.step, "stopped_by": stopped_by}


# What only continuing a run needs (``last.pt``); ``best.pt`` leaves it out: for a Paris Unet/resnet34 that is the
# AdamW moments, two thirds of a ~294 MB checkpoint, written and fsynced at every new best.
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "accumulators")


def best_payload(payload: dict, val: dict) -> dict:
    """The ``best.pt`` contents: ``payload`` without :data:`RESUME_ONLY_KEYS`, with the val metrics."""
    return {**{k: v for k, v in payload.items() if k not in RESUME_ONLY_KEYS}, "val": val, "weights_only": True}
