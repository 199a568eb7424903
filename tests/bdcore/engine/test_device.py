"""One device resolver for training and inference."""

from __future__ import annotations

import pytest
import torch

from bdcore.engine.device import DeviceError, device_name, make_amp, resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expect = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expect == resolve_device(None).type
    assert device_name(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_names_the_fix():
    for spec in ("cuda", "cuda:1", "CUDA"):
        with pytest.raises(DeviceError, match="CUDA is not available here; set device: auto or cpu"):
            resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_and_local_rank():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_amp_is_off_on_cpu():
    autocast, scaler = make_amp(True, torch.device("cpu"))
    assert not scaler.is_enabled()
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
