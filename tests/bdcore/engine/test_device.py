"""One device resolver for training and inference."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from bdcore.engine.device import (
    DeviceError,
    autocast_dtype,
    configure_determinism,
    device_name,
    make_amp,
    resolve_device,
    setup_distributed,
)


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


def test_emulated_bf16_gpu_trains_in_fp16_with_loss_scaling(pre_ampere_cuda):
    cuda = torch.device("cuda")
    assert torch.cuda.is_bf16_supported()  # what the old check saw: emulation counts
    assert autocast_dtype(cuda) == torch.float16
    autocast, scaler = make_amp(True, cuda)
    assert scaler.is_enabled()
    ctx = autocast()
    assert ctx.fast_dtype == torch.float16 and ctx._enabled
    _, scaler_off = make_amp(False, cuda)
    assert not scaler_off.is_enabled()


def test_native_bf16_gpu_trains_in_bf16_without_scaler(pre_ampere_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    autocast, scaler = make_amp(True, torch.device("cuda"))
    assert autocast().fast_dtype == torch.bfloat16 and not scaler.is_enabled()


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1", "auto"])
def test_torchrun_ranks_take_their_local_rank_gpu(pre_ampere_cuda, monkeypatch, caplog, spec):
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setattr("torch.distributed.is_initialized", lambda: True)  # no process group here
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with caplog.at_level(logging.INFO, logger="bdcore.engine.device"):
        info, device = setup_distributed(spec)
    assert (info.rank, info.world, info.local_rank) == (1, 2, 1)
    assert device == torch.device("cuda:1")
    overridden = [r.getMessage() for r in caplog.records if "LOCAL_RANK" in r.getMessage()]
    assert len(overridden) == (1 if spec == "cuda:0" else 0), overridden


def test_without_torchrun_an_explicit_gpu_index_is_kept(pre_ampere_cuda, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cuda:1")[1] == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")


def test_deterministic_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark == torch.cuda.is_available()
