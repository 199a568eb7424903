"""Devices and processes: which torch device, its mixed precision, and the torchrun process group.

The one place that turns a config's ``device`` ("auto", "cpu", "cuda", "cuda:N", "mps") into a ``torch.device``:
the trainer and inference (``bdcore.inference.predict``) both call :func:`resolve_device`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """A device asked for that this machine does not have; the message says which setting to change."""


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(spec: str | torch.device = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``auto`` = cuda, then mps, then cpu; a forced device that is not there is a ``DeviceError``.
    ``local_rank`` (one GPU per torchrun process) maps ``cuda`` and ``cuda:N`` to ``cuda:<local_rank>``: every rank
    on the same GPU is refused by NCCL, so an explicit index is overridden (one log line)."""
    spec = str(spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else ("mps" if _mps_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for but CUDA is not available here; set device: auto or cpu")
        if local_rank is not None:
            if spec != "cuda" and spec != f"cuda:{local_rank}":
                log.info("device %r: torchrun rank with LOCAL_RANK=%d uses cuda:%d (one GPU per process)", spec,
                         local_rank, local_rank)
            spec = f"cuda:{local_rank}"
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if spec == "mps" and not _mps_available():
        raise DeviceError("device 'mps' asked for but MPS is not available here; set device: auto or cpu")
    return torch.device(spec)


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA, else the device type ("cpu", "mps")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision dtype on ``device``, for training and inference alike: bf16 where the GPU computes it
    natively (Ampere and later), else fp16 (which needs loss scaling when training). Emulated bf16 (V100, T4:
    ``is_bf16_supported()`` counts it by default) is slow, so it does not count."""
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def autocast_for(device: torch.device, enabled: bool = True) -> Callable[[], Any]:
    """A factory of autocast contexts in :func:`autocast_dtype` on CUDA; contexts that change nothing elsewhere."""
    use_amp = bool(enabled) and device.type == "cuda"
    dtype = autocast_dtype(device)

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=use_amp)

    return autocast


def make_amp(amp: bool, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler]:
    """(autocast context factory, grad scaler): mixed precision on CUDA (bf16, or fp16 with loss scaling where
    bf16 is not native), plain fp32 elsewhere."""
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and autocast_dtype(device) == torch.float16)
    return autocast_for(device, use_amp), scaler


def configure_determinism(deterministic: bool) -> None:
    """``deterministic``: deterministic algorithms where torch has them (``warn_only``: an op without one warns
    instead of failing the run), cuDNN deterministic and not autotuned, cuBLAS with a fixed workspace (the
    environment variable is read when cuBLAS starts, so call this before the first GPU matmul). Otherwise cuDNN
    autotunes (fastest kernels, not bit-reproducible)."""
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and torch.cuda.is_available()


# --------------------------------------------------------------------------------------------- torchrun
@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo(), resolve_device(device_spec)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_spec, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def teardown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, device: torch.device, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over all ranks (``op`` "sum" or "max"), on the GPU when training there (nccl), else on the
    CPU (gloo); returned on the CPU."""
    t = t.to(device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.cpu()
