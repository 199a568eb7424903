"""Raw loader batches → model input on the training device: the torch twin of ``imagery.normalize_bands`` and the
batched form of ``augment.photometric``.

Why: on CPU, float conversion, normalisation and the gamma ``np.power`` were most of a DataLoader worker's time per
512² crop (~5 of 7.8 ms), and a float32 crop is 4x the bytes of a uint16 one through collate and the host-to-device
copy. So a ``SampleSpec(raw=True)`` item ships the crop as stored (uint16/uint8; crop, padding and the geometric
flips/rotations already applied), a uint8 mask, the ``valid`` box (the crop's pixels inside the padded output) and
the ``photo`` parameters (brightness, contrast, gamma) drawn from the item's own RNG, exactly where the CPU path draws
them: an item stays a pure function of (seed, epoch, index), and exact resume holds. :class:`BatchPrep` then does the
float work once per batch with torch ops on the device.

The normalisation formula is ``imagery.normalize_bands`` op for op in float32 (subtract, divide, clip), so training
here and inference (``inference.normalization``, numpy) give bit-identical model input (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NORMALIZE_EPS = 1e-6  # the span floor of imagery.normalize_bands


def band_tensors(lo: Sequence[float], hi: Sequence[float],
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, span) as float32 (1,C,1,1) tensors on ``device``; span = max(hi - lo, 1e-6) in float32, as numpy does."""
    lo_t = torch.tensor(list(lo), dtype=torch.float32).reshape(1, -1, 1, 1)
    span = torch.clamp_min(torch.tensor(list(hi), dtype=torch.float32).reshape(1, -1, 1, 1) - lo_t, NORMALIZE_EPS)
    return lo_t.to(device), span.to(device)


def normalize_bands_torch(x: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """``(x - lo) / span`` clipped to [0, 1] in float32 (NaN → 0), for a (B,C,H,W) batch of any dtype."""
    y = x.to(torch.float32)
    y = y.sub_(lo) if y is not x else y - lo
    y.div_(span).clamp_(0.0, 1.0)
    return torch.nan_to_num_(y, nan=0.0) if x.is_floating_point() else y


def valid_mask(valid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B,1,H,W) bool: True inside each item's ``valid`` box (y0, y1, x0, x1)."""
    rows = torch.arange(h, device=valid.device).view(1, h, 1)
    cols = torch.arange(w, device=valid.device).view(1, 1, w)
    v = valid.view(-1, 4, 1, 1)
    inside = (rows >= v[:, 0]) & (rows < v[:, 1]) & (cols >= v[:, 2]) & (cols < v[:, 3])
    return inside.unsqueeze(1)


def photometric_batch(x: torch.Tensor, photo: torch.Tensor, n_inside: torch.Tensor) -> torch.Tensor:
    """``augment.photometric`` on a normalised (B,C,H,W) float32 batch, IN PLACE: per item ``photo`` = (b, c, g),
    contrast about the item's mean over its ``n_inside`` crop values (padding must be zero here), clipped to
    [0, 1], then gamma."""
    photo = photo.to(device=x.device, dtype=torch.float64)
    b, c, g = photo[:, 0], photo[:, 1], photo[:, 2]
    # float32 sum (a float64 one is 40x slower on CPU); its rounding moves the shift by ~1e-7
    mean = x.sum(dim=(1, 2, 3)).to(torch.float64) / n_inside.clamp_min(1)
    shift = (mean * (1.0 - c) + b).to(torch.float32).view(-1, 1, 1, 1)
    x.mul_(c.to(torch.float32).view(-1, 1, 1, 1)).add_(shift).clamp_(0.0, 1.0)
    return x.pow_(g.to(torch.float32).view(-1, 1, 1, 1))


class BatchPrep:
    """A collated loader batch → ``(x, y)`` float32 model input on ``device`` (channels-last if asked).

    A raw batch (``SampleSpec(raw=True)``: it has ``valid``) is normalised with the band stats ``lo``/``hi`` and
    jittered with its ``photo`` parameters here; a batch of already-normalised float items is only moved."""

    def __init__(self, lo: Sequence[float] | None, hi: Sequence[float] | None, device: torch.device,
                 channels_last: bool = False):
        self.device, self.channels_last = device, channels_last
        self.lo, self.span = band_tensors(lo, hi, device) if lo is not None and hi is not None else (None, None)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True).to(torch.float32)
        if "valid" in batch:
            x = self.raw_to_input(x, batch["valid"], batch.get("photo"))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def raw_to_input(self, x: torch.Tensor, valid: torch.Tensor, photo: torch.Tensor | None) -> torch.Tensor:
        """Normalise a raw batch on the device, jitter it with ``photo`` (if given), keep padding at zero.
        ``valid``: the (B,4) boxes, on the CPU as collated (checking them costs no device sync)."""
        if self.lo is None:
            raise ValueError("a raw batch (SampleSpec(raw=True)) needs band stats: give BatchPrep the dataset's lo/hi")
        if x.shape[1] != self.lo.shape[1]:
            raise ValueError(f"batch has {x.shape[1]} bands but the band stats have {self.lo.shape[1]}; compute "
                             "stats for the product you are reading")
        h, w = x.shape[2], x.shape[3]
        x = normalize_bands_torch(x, self.lo, self.span)
        padded = not bool((valid.cpu() == torch.tensor([0, h, 0, w])).all())
        inside = valid_mask(valid.to(self.device, non_blocking=True), h, w) if padded else None
        if inside is not None:
            x.masked_fill_(~inside, 0.0)  # padding is zero model input, as the CPU path pads after the jitter
        if photo is not None:
            n = ((valid[:, 1] - valid[:, 0]) * (valid[:, 3] - valid[:, 2]) * x.shape[1]).to(torch.float64)
            x = photometric_batch(x, photo, n.to(self.device))
            if inside is not None:
                x.masked_fill_(~inside, 0.0)
        return x
