"""The training recipe: loss, optimiser, learning-rate schedule and one optimisation step.

Loss: BCE + soft Dice (``segmentation_models_pytorch.losses.DiceLoss``), both in fp32 on the logits.
Schedule: linear warmup then cosine to 1 % of ``lr`` (``cosine``), warmup then flat (``constant``), or torch's
``OneCycleLR`` (``onecycle``); stepped once per optimisation step.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from bdcore.engine.config import RunConfig

# Soft Dice per channel over the whole batch, averaged over channels. smooth=0.5 makes smp's
# (I + s) / ((Σp + Σt) / 2 + s) equal to bdcore's earlier (2I + 1) / (Σp + Σt + 1). One difference remains: smp
# counts a channel with no target pixel in the whole batch as 0 (the earlier formula gave 1 - 1/(Σp + 1) there).
DICE = DiceLoss("multilabel", from_logits=True, smooth=0.5)
COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of lr


def seg_loss(logits: torch.Tensor, target: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """``bce_weight`` × BCE + ``dice_weight`` × Dice, in fp32."""
    logits = logits.float()
    target = target.float()
    loss = logits.new_zeros(())
    if cfg.bce_weight:
        loss = loss + cfg.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
    if cfg.dice_weight:
        loss = loss + cfg.dice_weight * DICE(logits, target)
    return loss


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    # fused AdamW (one kernel for all tensors) on CPU/CUDA; the per-tensor Python loop is a third of a CPU step
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state into ``opt`` and give every per-parameter tensor (Adam's moments) its
    parameter's memory layout. A ``last.pt`` written on the CPU holds contiguous moments; resumed on CUDA, where the
    parameters are channels_last, the fused AdamW kernel refuses moments whose strides differ from the parameter's."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            slots = opt.state.get(p, {})
            for name, value in slots.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    slots[name] = torch.empty_strided(p.shape, p.stride(), dtype=value.dtype,
                                                      device=value.device).copy_(value)


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> LRScheduler:
    """The run's lr schedule over ``cfg.epochs * steps_per_epoch`` steps. Warmup: ``lr * (k + 1) / W`` at step
    ``k < W`` (``W = round(warmup_epochs * steps_per_epoch)``)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        pct = min(0.5, max(0.01, cfg.warmup_epochs / cfg.epochs)) if cfg.warmup_epochs else 0.3
        return OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    ramp = LinearLR(opt, start_factor=1.0 / warmup if warmup else 1.0, end_factor=1.0, total_iters=max(warmup - 1, 0))
    if cfg.schedule == "constant":
        return ramp
    cosine = CosineAnnealingLR(opt, T_max=max(1, total - warmup), eta_min=COSINE_FLOOR * cfg.lr)
    return SequentialLR(opt, [ramp, cosine], milestones=[warmup]) if warmup else cosine


def restore_scheduler(sched: LRScheduler, state: dict, step: int) -> None:
    """Load a checkpoint's scheduler state into ``sched`` (built by :func:`make_scheduler`, the optimizer state
    already loaded). A checkpoint written before bdcore used torch's schedulers holds a ``LambdaLR`` state
    (``lr_lambdas``); since the lr is a pure function of the step, the schedule is replayed ``step`` steps instead."""
    if "lr_lambdas" not in state:
        sched.load_state_dict(state)
        return
    for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr  # the schedule's step-0 lr (loading the optimizer state overwrote it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(step):
            sched.step()


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               sched: Optional[LRScheduler], scaler: torch.amp.GradScaler, cfg: RunConfig,
               autocast: Callable[[], Any]) -> torch.Tensor:
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
