"""Pretrained encoder weights: download through a local server posing as the Hugging Face hub, cache reuse,
bounded offline decision, corrupt downloads, local weight files, and what a run records."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save as save_safetensors

import synth
from bdcore.engine import runs
from bdcore.engine import weights as W
from bdcore.engine.config import RunConfig
from bdcore.engine.models import create_model, load_checkpoint
from bdcore.engine.train import train

ENCODER = "resnet18"
HF = W.hub_file(ENCODER, "imagenet")


def _fake_state(seed: int = 123) -> dict[str, torch.Tensor]:
    """A distinctive resnet18 encoder state dict standing in for the ImageNet weights."""
    enc = smp.encoders.get_encoder(ENCODER, in_channels=3, weights=None)
    g = torch.Generator().manual_seed(seed)
    # default init plus a seeded perturbation: distinctive, yet sane (BN variances stay positive)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v).contiguous()
            for k, v in enc.state_dict().items()}


class FakeHub:
    """A tiny HTTP server answering ``/{repo}/resolve/{rev}/{file}`` like the hub (HEAD metadata, GET body)."""

    def __init__(self, body: bytes, etag: str | None = None, hf: W.HubFile = HF, commit: str | None = None):
        self.body, self.etag = body, etag or hashlib.sha256(body).hexdigest()
        revision, commit = hf.revision or "main", commit or hf.revision
        self.gets = 0
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _headers(self) -> bool:
                want = f"/{hf.repo_id}/resolve/{revision}/{hf.filename}"
                if self.path.split("?")[0] != want:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hub.etag}"')
                self.send_header("Content-Length", str(len(hub.body)))
                self.end_headers()
                return True

            def do_HEAD(self):
                self._headers()

            def do_GET(self):
                if self._headers():
                    hub.gets += 1
                    self.wfile.write(hub.body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF cache, online mode (conftest sets HF_HUB_OFFLINE=1 for every other test)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf" / "hub"


@pytest.fixture
def served(hf_home, monkeypatch):
    state = _fake_state()
    hub = FakeHub(save_safetensors(state))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub, state
    hub.close()


def _encoder_equals(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.encoder.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_run_downloads_weights_from_the_hub_and_records_them(served, tmp_path):
    hub, state = served
    root = synth.make_aoi(tmp_path / "aoi", n_tiles=4, size=48, buildings_per_tile=2, seed=3).root
    cfg = RunConfig(data_root=str(root), encoder=ENCODER, encoder_weights="imagenet", crop_size=32, batch_size=2,
                    epochs=1, steps_per_epoch=1, workers=0, device="cpu", val_fraction=0.5, building_f1_tiles=0)
    run = tmp_path / "run"
    train(cfg, run)
    got = json.loads((run / "status.json").read_text())["weights"]
    assert got["source"] == "downloaded" and got["sha256"] == hub.etag and got["tensors"] == len(state)
    assert "downloaded from smp-hub/resnet18.imagenet" in got["summary"]
    assert load_checkpoint(run / "last.pt")["weights"]["sha256"] == hub.etag
    assert hub.gets == 1
    info = runs.run_info(run)
    assert info.weights_source == "downloaded" and info.weights == got["summary"]
    cached = W.cached_file(HF)
    assert cached is not None and W.sha256_file(cached) == hub.etag

    # A later model reuses the cache (no second GET) and its encoder holds exactly the served tensors.
    model, info = create_model("Unet", ENCODER, 3, 1, "imagenet")
    assert info.source == "cached" and hub.gets == 1
    assert _encoder_equals(model, state)


def test_eight_band_model_from_downloaded_rgb_weights(served):
    hub, state = served
    seen: list[tuple[int, int | None]] = []
    model, info = create_model("FPN", ENCODER, 8, 1, "imagenet", progress=lambda d, t: seen.append((d, t)))
    assert info.source == "downloaded"
    assert seen and seen[-1] == (len(hub.body), len(hub.body))  # the byte progress the Train page shows
    w = model.encoder.conv1.weight.detach()
    assert torch.equal(w[:, :3], state["conv1.weight"])
    assert torch.allclose(w[:, 5], state["conv1.weight"].mean(dim=1))


def test_dead_endpoint_is_random_init_decided_quickly(hf_home, monkeypatch, caplog):
    # A port that accepts connections but never answers: only the bounded probe can end the wait.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.delenv("BDCORE_HUB_TIMEOUT", raising=False)
    caplog.set_level(logging.INFO, logger="bdcore")
    t0 = time.monotonic()
    model, info = create_model("Unet", ENCODER, 3, 1, "imagenet")
    elapsed = time.monotonic() - t0
    silent.close()
    assert elapsed < 10, elapsed
    assert info.source == "random" and "not cached" in info.reason and "timed out" in info.reason
    lines = [r.getMessage() for r in caplog.records if "random init" in r.getMessage()]
    assert len(lines) == 1 and ENCODER in lines[0]
    ok, message = W.availability(ENCODER, "imagenet", timeout=0.5)
    assert not ok and "weights pull resnet18" in message and "random init" in message


def test_refused_connection_is_random_init(hf_home, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    _, info = create_model("Unet", ENCODER, 3, 1, "imagenet")
    assert info.source == "random" and "unreachable" in info.reason


@pytest.mark.parametrize("etag_of", ["full", "truncated"])
def test_truncated_download_is_a_clear_error_and_leaves_nothing_good_in_the_cache(hf_home, monkeypatch, etag_of):
    full = save_safetensors(_fake_state())
    cut = full[: len(full) // 2]
    # "full": the hub's ETag names the real file (sha mismatch); "truncated": consistent but unparseable file.
    hub = FakeHub(cut, etag=hashlib.sha256(full if etag_of == "full" else cut).hexdigest())
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with pytest.raises(W.WeightsError) as err:
            create_model("Unet", ENCODER, 3, 1, "imagenet")
    finally:
        hub.close()
    msg = str(err.value)
    assert "removed it from the Hugging Face cache" in msg and "weights pull" in msg
    assert ("sha256" in msg) if etag_of == "full" else ("not a readable weights file" in msg)
    assert W.cached_file(HF) is None
    leftovers = [p for p in hf_home.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".incomplete"))
                 and ("blobs" in p.parts or "snapshots" in p.parts)]
    assert leftovers == []


def test_local_pth_file_is_loaded_and_recorded_with_its_sha256(tmp_path):
    state = _fake_state(7)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state}, path)
    model, info = create_model("Unet", ENCODER, 3, 1, str(path))
    assert info.source == "local" and info.sha256 == W.sha256_file(path)
    assert _encoder_equals(model, state)
    cfg = RunConfig(encoder=ENCODER, encoder_weights=str(path))  # a file is a valid encoder_weights value
    assert cfg.encoder_weights == str(path)


def test_local_file_with_missing_and_misshaped_tensors_names_them(tmp_path):
    state = _fake_state(7)
    del state["layer4.1.bn2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save_safetensors(state))
    with pytest.raises(W.WeightsError) as err:
        create_model("Unet", ENCODER, 3, 1, str(path))
    msg = str(err.value)
    assert str(path) in msg and "layer4.1.bn2.weight" in msg and "missing" in msg
    assert "layer1.0.conv1.weight (file (64, 64, 1, 1), model (64, 64, 3, 3))" in msg


def test_local_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _fake_state(), "hook": print}, path)  # a callable needs pickle's GLOBAL
    with pytest.raises(W.WeightsError, match="not a readable weights file"):
        create_model("Unet", ENCODER, 3, 1, str(path))


def test_cli_pull_then_list(served, capsys):
    from bdcore.cli import main

    hub, _ = served
    assert main(["weights", "pull", ENCODER]) == 0
    assert "downloaded smp-hub/resnet18.imagenet" in capsys.readouterr().out
    assert main(["weights", "pull", ENCODER]) == 0
    assert "already cached" in capsys.readouterr().out and hub.gets == 1
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "smp-hub/resnet18.imagenet" in out and "resnet18 (imagenet)" in out


def test_no_weights_asked_is_recorded_as_such():
    _, info = create_model("Unet", ENCODER, 3, 1, None)
    assert info.source == "none" and not info.pretrained
    assert W.WeightsInfo.from_dict(info.to_dict()) == info


def test_timm_encoder_weights_download_into_the_smp_wrapper(hf_home, monkeypatch):
    """``tu-`` encoders: timm's hub file (with its classifier head) lands in smp's ``encoder.model``."""
    import timm

    full = timm.create_model("resnet18", pretrained=False)
    g = torch.Generator().manual_seed(5)
    state = {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v).contiguous()
             for k, v in full.state_dict().items()}
    hf = W.hub_file("tu-resnet18")
    hub = FakeHub(save_safetensors(state), hf=hf, commit="a" * 40)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        model, info = create_model("Unet", "tu-resnet18", 4, 1, "imagenet")
    finally:
        hub.close()
    assert info.source == "downloaded" and info.repo == "timm/resnet18.a1_in1k"
    own = model.encoder.state_dict()
    assert torch.equal(own["model.layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(own["model.conv1.weight"][:, :3], state["conv1.weight"])  # 4-band first conv from RGB
