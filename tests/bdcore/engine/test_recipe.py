"""The training recipe against the hand-written formulas it replaced: smp's DiceLoss vs bdcore's earlier soft Dice,
torch's LinearLR/CosineAnnealingLR/SequentialLR vs the earlier warmup+cosine LambdaLR, and checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch

from bdcore.engine.config import RunConfig
from bdcore.engine.models import build_model
from bdcore.engine.recipe import (
    forward_padded,
    load_optimizer_state,
    make_optimizer,
    make_scheduler,
    restore_scheduler,
    seg_loss,
)


# --------------------------------------------------------------------------- the formulas bdcore used before
def earlier_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits.float())
    target = target.float()
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def earlier_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
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


def _dice_only(**kw) -> RunConfig:
    return RunConfig(bce_weight=0.0, dice_weight=1.0, **kw)


def _batch(seed: int, k: int, empty: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, k, 24, 24, generator=g) * 3
    target = (torch.rand(4, k, 24, 24, generator=g) > 0.7).float()
    if k == 2:  # the boundary band: sparse, inside the footprint
        target[:, 1] = target[:, 0] * (torch.rand(4, 24, 24, generator=g) > 0.8)
    for c in empty:
        target[:, c] = 0.0
    return logits, target


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("k", [1, 2])  # footprint only; footprint + boundary channel
@pytest.mark.parametrize("seed", range(5))
def test_dice_equals_the_earlier_formula(k, seed):
    logits, target = _batch(seed, k)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    new, old = seg_loss(a, target, _dice_only()), earlier_dice_loss(b, target)
    assert float(new.detach()) == pytest.approx(float(old.detach()), rel=1e-6, abs=1e-7)
    new.backward()
    old.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-9)


def test_dice_of_a_channel_without_target_pixels_is_zero():
    """The one documented difference: smp counts a channel with no target pixel in the batch as 0 (the earlier
    formula gave 1 - 1/(sum of probabilities + 1) there, close to 1)."""
    logits, target = _batch(0, 2, empty=(1,))
    new = seg_loss(logits, target, _dice_only())
    footprint_only = earlier_dice_loss(logits[:, :1], target[:, :1])
    assert float(new) == pytest.approx(float(footprint_only) / 2, rel=1e-6)
    empty_term = 1 - 1 / (float(torch.sigmoid(logits[:, 1]).sum()) + 1)
    assert float(earlier_dice_loss(logits, target)) == pytest.approx((float(footprint_only) + empty_term) / 2,
                                                                       rel=1e-6)


def test_seg_loss_weights_bce_and_dice():
    logits, target = _batch(3, 1)
    cfg = RunConfig(bce_weight=0.5, dice_weight=2.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    expect = 0.5 * bce + 2.0 * earlier_dice_loss(logits, target)
    assert float(seg_loss(logits, target, cfg)) == pytest.approx(float(expect), rel=1e-6)


def test_forward_padded_handles_any_size():
    model = torch.nn.Conv2d(3, 1, 1)
    assert forward_padded(model, torch.rand(1, 3, 650, 650)).shape == (1, 1, 650, 650)


# --------------------------------------------------------------------------- learning-rate schedule
def _lrs(make, cfg: RunConfig, steps_per_epoch: int, n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = make(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])  # the lr an epoch record shows after the last step
    return out


SCHEDULES = [
    dict(schedule="cosine", epochs=3, warmup_epochs=0.5, lr=2e-3),
    dict(schedule="cosine", epochs=10, warmup_epochs=1.0, lr=1.0),
    dict(schedule="cosine", epochs=40, warmup_epochs=1.0, lr=1.0),     # 20,000 steps below
    dict(schedule="cosine", epochs=5, warmup_epochs=0.0, lr=1e-3),
    dict(schedule="cosine", epochs=2, warmup_epochs=5.0, lr=1.0),      # warmup longer than the run
    dict(schedule="constant", epochs=3, warmup_epochs=1.0, lr=1e-3),
    dict(schedule="constant", epochs=3, warmup_epochs=0.0, lr=1e-3),
]


@pytest.mark.parametrize("kw", SCHEDULES, ids=lambda kw: f"{kw['schedule']}-e{kw['epochs']}-w{kw['warmup_epochs']}")
def test_lr_per_step_equals_the_earlier_lambda_schedule(kw):
    cfg = RunConfig(**kw)
    spe = 500 if cfg.epochs == 40 else 7
    n = cfg.epochs * spe
    new, old = _lrs(make_scheduler, cfg, spe, n), _lrs(earlier_scheduler, cfg, spe, n)
    assert max(abs(a - b) for a, b in zip(new, old)) < 1e-12


def test_warmup_then_cosine_schedule():
    cfg = RunConfig(epochs=10, warmup_epochs=1, lr=1.0)
    lrs = _lrs(make_scheduler, cfg, 10, 100)[:100]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # cosine decays monotonically
    assert lrs[-1] == pytest.approx(0.01, abs=0.01)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "onecycle"])
@pytest.mark.parametrize("k", [3, 7, 20])  # inside the warmup, at its end, in the cosine part
def test_scheduler_state_round_trips_through_a_checkpoint(tmp_path, schedule, k):
    cfg = RunConfig(schedule=schedule, epochs=4, warmup_epochs=1.0, lr=1e-3)
    spe, n = 7, 28
    straight = _lrs(make_scheduler, cfg, spe, n)

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, spe)
    for _ in range(k):
        opt.step()
        sched.step()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.AdamW([p2], lr=cfg.lr)
    sched2 = make_scheduler(opt2, cfg, spe)
    opt2.load_state_dict(ck["optimizer"])
    restore_scheduler(sched2, ck["scheduler"], k)
    resumed = []
    for _ in range(n - k):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == straight[k:]


@pytest.mark.parametrize("k", [2, 7, 15])
def test_a_checkpoint_with_the_earlier_lambda_scheduler_resumes_on_the_same_schedule(k):
    """last.pt written before the switch to torch's schedulers holds a LambdaLR state: the schedule is replayed."""
    cfg = RunConfig(schedule="cosine", epochs=3, warmup_epochs=1.0, lr=1e-3)
    spe, n = 7, 21
    old_lrs = _lrs(earlier_scheduler, cfg, spe, n)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = earlier_scheduler(opt, cfg, spe)
    for _ in range(k):
        opt.step()
        sched.step()
    ck = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}

    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched2 = make_scheduler(opt2, cfg, spe)
    opt2.load_state_dict(ck["optimizer"])
    restore_scheduler(sched2, ck["scheduler"], k)
    resumed = []
    for _ in range(n - k):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert max(abs(a - b) for a, b in zip(resumed, old_lrs[k:])) < 1e-12


def test_resumed_adam_moments_take_their_channels_last_parameters_layout(tmp_path):
    """A CPU-written last.pt (contiguous moments) resumed where the parameters are channels_last (CUDA)."""
    cfg = RunConfig(encoder="resnet18", encoder_weights=None)
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", encoder_weights=None)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    seg_loss(model(torch.rand(2, 3, 64, 64)), torch.ones(2, 1, 64, 64), cfg).backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)

    resumed = build_model("Unet", "resnet18", encoder_weights=None).to(memory_format=torch.channels_last)
    opt2 = make_optimizer(resumed, cfg, torch.device("cpu"))
    load_optimizer_state(opt2, saved)
    params = list(resumed.parameters())
    four_d = [p for p in params if p.dim() == 4 and p in opt2.state]
    assert sum(not p.is_contiguous() for p in four_d) > 10  # channels_last kernels really differ (not 1x1 ones)
    for i, p in enumerate(params):
        if p not in opt2.state:
            continue
        for name in ("exp_avg", "exp_avg_sq"):
            moment = opt2.state[p][name]
            assert moment.stride() == p.stride(), (i, name)
            assert torch.equal(moment, saved["state"][i][name]), (i, name)
