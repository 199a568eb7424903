"""The recipes in configs/ stay loadable: every file is a valid RunConfig whose model can be built, and the README's
one command (``train --config FILE --data-root ...``) takes it with flags overriding the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bdcore.engine.config import PRODUCT_BANDS, RunConfig, check_encoder

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.iterdir() if p.suffix.lower() in (".yaml", ".yml", ".json")) \
    if CONFIG_DIR.is_dir() else []


def test_the_paris_recipes_exist():
    names = {p.name for p in CONFIGS}
    assert {"paris-psrgb-unet-r34.yaml", "paris-psms-unet-r34.yaml"} <= names, names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    cfg = RunConfig.load(path)  # unknown fields, bad encoder, crop not /32, bad product... raise ConfigError
    raw = yaml.safe_load(path.read_text()) if path.suffix.lower() != ".json" else json.loads(path.read_text())
    assert set(raw) <= set(RunConfig.model_fields)
    assert check_encoder(cfg.encoder) == cfg.encoder
    assert cfg.crop_size is None or (cfg.crop_size > 0 and cfg.crop_size % 32 == 0)
    assert cfg.in_channels == PRODUCT_BANDS[cfg.product]
    # the file name says which product it trains on
    stem = path.stem.lower()
    named = {"psrgb": "PS-RGB", "psms": "PS-MS", "ms": "MS", "pan": "PAN"}
    for part in stem.split("-"):
        if part in named:
            assert cfg.product == named[part], f"{path.name} trains on {cfg.product}, its name says {named[part]}"
    # a recipe names a real AOI folder (where `bdcore download` puts it) or the demo; never a machine's own path
    if cfg.data_root.strip() not in ("", "demo"):
        from bdcore.data.download import AOI_ALIASES

        assert cfg.data_root.startswith("~/"), f"{path.name}: data_root should be home-relative, not {cfg.data_root}"
        assert Path(cfg.data_root).name in {f"{aoi}_Train" for aoi in AOI_ALIASES.values()}, cfg.data_root
        if "paris" in stem:
            assert Path(cfg.data_root).name == "AOI_3_Paris_Train"
    # the saved form round-trips (what the run folder's config.json will hold)
    assert RunConfig.from_dict(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_model_builds_with_its_bands_and_classes(path):
    import torch

    from bdcore.engine.models import model_from_config

    cfg = RunConfig.load(path)
    model = model_from_config(cfg, pretrained=False)[0].eval()
    side = 64
    with torch.no_grad():
        out = model(torch.zeros(1, cfg.in_channels, side, side))
    assert tuple(out.shape) == (1, cfg.classes, side, side)


def test_train_flags_override_a_recipe(tmp_path):
    """The README's command: --config FILE plus flags; the flags win, the rest comes from the file."""
    from bdcore.cli import main
    from bdcore.paths import runs_dir

    path = CONFIG_DIR / "paris-psrgb-unet-r34.yaml"
    assert main(["train", "--config", str(path), "--data-root", "demo", "--device", "cpu", "--epochs", "2",
                 "--name", "recipe-override", "--create-only"]) == 0
    saved = RunConfig.load(runs_dir() / "recipe-override" / "config.json")
    want = RunConfig.load(path).model_copy(update={"data_root": "demo", "device": "cpu", "epochs": 2})
    assert saved == want
