"""Model factory (cached weights, band adaptation) and checkpoint safety; downloads are in test_weights.py."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from bdcore.engine.config import ENCODER_CHOICES, RunConfig
from bdcore.engine.models import (
    ARCHITECTURES,
    CheckpointError,
    adapt_first_conv,
    build_model,
    create_model,
    freeze_unused_parameters,
    load_checkpoint,
    load_model,
    load_pretrained_encoder,
    save_checkpoint,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_builds_and_keeps_the_input_size(arch):
    model = build_model(arch, "resnet18", in_channels=8, classes=2, encoder_weights=None).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 8, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    assert isinstance(model, ARCHITECTURES[arch])


@pytest.mark.parametrize("encoder", ENCODER_CHOICES)
def test_every_offered_encoder_is_accepted_and_builds_with_every_architecture(encoder):
    RunConfig(encoder=encoder, encoder_weights=None)  # the config accepts it (smp knows the name)
    for arch in ARCHITECTURES:
        assert isinstance(build_model(arch, encoder, in_channels=3, classes=1, encoder_weights=None),
                          ARCHITECTURES[arch])


def test_freezing_unused_head_keeps_outputs_and_checkpoint_keys():
    """efficientnet keeps classification-head layers that segmentation never calls: frozen, not dropped."""
    torch.manual_seed(0)
    plain = smp.Unet(encoder_name="efficientnet-b0", encoder_weights=None, in_channels=3, classes=1).eval()
    frozen = smp.Unet(encoder_name="efficientnet-b0", encoder_weights=None, in_channels=3, classes=1).eval()
    frozen.load_state_dict(plain.state_dict())
    names = freeze_unused_parameters(frozen, 3)
    assert set(names) == {"encoder._conv_head.weight", "encoder._bn1.weight", "encoder._bn1.bias"}
    assert not frozen.training and all(p.grad is None for p in frozen.parameters())
    assert list(frozen.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), plain.state_dict().values()))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(frozen(x), plain(x))
    # an old checkpoint of the same model loads into the factory's model (strict)
    build_model("Unet", "efficientnet-b0", encoder_weights=None).load_state_dict(plain.state_dict())


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from bdcore.engine.config import ENCODER_CHOICES, RunConfig
from bdcore.engine.device import make_amp
from bdcore.engine.models import model_from_config
from bdcore.engine.recipe import make_optimizer, make_scheduler, train_step
torch.set_num_threads(1)
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
cpu = torch.device("cpu")
for encoder in ENCODER_CHOICES:
    cfg = RunConfig(encoder=encoder, encoder_weights=None, batch_size=2, device="cpu", epochs=1)
    torch.manual_seed(0)
    model, _ = model_from_config(cfg, pretrained=False)
    ddp = DistributedDataParallel(model)
    opt = make_optimizer(model, cfg, cpu)
    sched = make_scheduler(opt, cfg, 3)
    autocast, scaler = make_amp(cfg.amp, cpu)
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x, y = torch.rand(2, 3, 64, 64, generator=g), (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float()
        train_step(ddp, x, y, opt, sched, scaler, cfg, autocast)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    both = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    assert torch.equal(both[0], both[1]), encoder + ": ranks diverged"
    print("ok", encoder, flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow  # ~20 s on 2 idle cores: two processes build and step six encoders
def test_every_offered_encoder_trains_three_steps_under_two_process_ddp(tmp_path):
    """Two gloo ranks, 3 steps each, 64x64, batch 2: DDP's unused-parameter check passes and the replicas agree."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_SCRIPT, str(r), str(tmp_path / "store")], cwd=PROJECT_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert out.split() == [w for e in ENCODER_CHOICES for w in ("ok", e)], out[-3000:]


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown arch 'Segformer'"):
        build_model("Segformer", "resnet18")
    with pytest.raises(ValueError, match="unknown encoder 'resnet19'"):
        build_model("Unet", "resnet19")


def _fake_pretrained_state() -> dict[str, torch.Tensor]:
    """A distinctive resnet18 encoder state dict standing in for downloaded ImageNet weights."""
    enc = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    g = torch.Generator().manual_seed(123)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v) for k, v in enc.state_dict().items()}


def test_eight_band_first_conv_copies_rgb_and_fills_extra_bands_with_their_mean():
    state = _fake_pretrained_state()
    model = build_model("Unet", "resnet18", in_channels=8, classes=1, encoder_weights=None)
    n = load_pretrained_encoder(model, state)
    assert n == len(state)
    w = model.encoder.conv1.weight.detach()
    rgb = state["conv1.weight"]
    assert w.shape == (64, 8, 7, 7)
    assert torch.equal(w[:, :3], rgb)
    for band in range(3, 8):
        assert torch.allclose(w[:, band], rgb.mean(dim=1))
    # every other encoder tensor is copied verbatim
    own = model.encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k != "conv1.weight")


def test_adapt_first_conv_fewer_bands_keeps_activation_scale():
    rgb = torch.randn(4, 3, 3, 3)
    pan = adapt_first_conv(rgb, 1)
    assert pan.shape == (4, 1, 3, 3)
    assert torch.allclose(pan[:, 0], rgb.sum(dim=1))
    assert torch.equal(adapt_first_conv(rgb, 3), rgb)


def test_cached_weights_are_used_without_any_network_call(tmp_path, monkeypatch, caplog):
    """A file already in the HF cache is used as it is; HF_ENDPOINT points nowhere to prove no request is made."""
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo_dir = tmp_path / "hf" / "hub" / ("models--" + settings["repo_id"].replace("/", "--"))
    snap = repo_dir / "snapshots" / settings["revision"]
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(settings["revision"])
    state = _fake_pretrained_state()
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    caplog.set_level(logging.INFO, logger="bdcore.engine.models")
    model, info = create_model("FPN", "resnet18", in_channels=8, classes=1, encoder_weights="imagenet")
    assert info.source == "cached" and info.path == str(snap / "model.safetensors")
    assert torch.equal(model.encoder.conv1.weight[:, :3].detach(), state["conv1.weight"])
    assert torch.equal(model.encoder.layer1[0].conv1.weight.detach(), state["layer1.0.conv1.weight"])
    assert any("cached copy of smp-hub/resnet18.imagenet" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- checkpoints
def _cfg(**kw) -> RunConfig:
    return RunConfig(encoder="resnet18", encoder_weights=None, **kw)


def _payload(cfg: RunConfig, model: torch.nn.Module) -> dict:
    return {"config": cfg.model_dump(mode="json"), "arch": cfg.arch, "encoder": cfg.encoder,
            "in_channels": cfg.in_channels, "classes": cfg.classes, "model": model.state_dict(), "epoch": 1,
            "step": 10}


def test_checkpoint_round_trip_and_load_model(tmp_path):
    cfg = _cfg(product="PS-MS", boundary=True)
    model = build_model(cfg.arch, cfg.encoder, cfg.in_channels, cfg.classes, None).eval()
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(cfg, model))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    ck = load_checkpoint(path, expect=cfg)
    assert ck["format_version"] == 1 and ck["step"] == 10
    loaded, cfg2 = load_model(path, "cpu")
    assert cfg2 == cfg and not loaded.training
    x = torch.rand(1, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_of_another_model_names_both(tmp_path):
    cfg = _cfg()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _payload(cfg, build_model("Unet", "resnet18", 3, 1, None)))
    other = RunConfig(arch="FPN", encoder="resnet34", encoder_weights=None, product="PS-MS")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expect=other)
    msg = str(info.value)
    assert "Unet/resnet18/3 bands" in msg and "FPN/resnet34/8 bands" in msg and str(path) in msg


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _payload(_cfg(), build_model("Unet", "resnet18", 3, 1, None)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "PWNED"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"model": evil}))
    else:
        torch.save({"format": "bdcore-checkpoint", "model": evil}, path)
    with pytest.raises(CheckpointError, match="would run code when loaded .refused; nothing was executed"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickles_that_are_not_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a bdcore checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a bdcore checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_kill_inside_checkpoint_write_keeps_the_old_file(tmp_path):
    """A process SIGKILLed after writing the temp file but before the rename leaves last.pt intact."""
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from bdcore.engine.models import save_checkpoint
        save_checkpoint({str(path)!r}, {{"model": {{"w": torch.ones(1000)}}, "step": 1}})
        real_fsync = os.fsync
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        save_checkpoint({str(path)!r}, {{"model": {{"w": torch.zeros(1000)}}, "step": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert leftovers and all(n.startswith(".last.pt.") and n.endswith(".tmp") for n in leftovers)
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.equal(ck["model"]["w"], torch.ones(1000))
