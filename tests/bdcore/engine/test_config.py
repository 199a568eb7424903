"""RunConfig: defaults, validation errors that name the file and field, YAML/JSON round trips."""

from __future__ import annotations

import json

import pytest

from bdcore.engine.config import ConfigError, RunConfig


def test_defaults_are_a_cpu_demo_config():
    cfg = RunConfig()
    assert (cfg.data_root, cfg.product, cfg.arch, cfg.encoder) == ("demo", "PS-RGB", "Unet", "resnet34")
    assert (cfg.crop_size, cfg.batch_size, cfg.epochs, cfg.schedule, cfg.split) == (256, 8, 10, "cosine", "random")
    assert (cfg.in_channels, cfg.classes) == (3, 1)
    assert cfg.steps_per_epoch is None and cfg.encoder_weights == "imagenet"


@pytest.mark.parametrize("product,bands", [("PS-RGB", 3), ("PS-MS", 8), ("MS", 8), ("PAN", 1)])
def test_in_channels_follow_product_and_classes_follow_boundary(product, bands):
    cfg = RunConfig(product=product, boundary=True)
    assert cfg.in_channels == bands
    assert cfg.classes == 2


def test_arch_name_is_case_insensitive_and_weights_none_spellings():
    cfg = RunConfig(arch="unetplusplus", encoder_weights="none")
    assert cfg.arch == "UnetPlusPlus" and cfg.encoder_weights is None
    assert RunConfig(encoder_weights="").encoder_weights is None


@pytest.mark.parametrize("field,value,needle", [
    ("encoder", "resnet35", "unknown encoder 'resnet35'"),
    ("arch", "SegFormer", "allowed: Unet, UnetPlusPlus, FPN, DeepLabV3Plus"),
    ("product", "RGB", "unknown product 'RGB'; SpaceNet 2 products are PS-RGB, PS-MS, MS, PAN"),
    ("device", "gpu", "allowed: auto, cpu, cuda, cuda:N, mps"),
    ("crop_size", 100, "multiple of 32"),
    ("batch_size", 0, "greater than or equal to 1"),
    ("lr", -1.0, "greater than 0"),
    ("val_fraction", 1.5, "less than 1"),
    ("schedule", "step", "'cosine', 'onecycle' or 'constant'"),
    ("encoder_weights", "noisy-student", "allowed: imagenet, ssl, swsl, none"),
])
def test_bad_field_in_file_names_file_field_and_allowed_values(tmp_path, field, value, needle):
    path = tmp_path / "run.yaml"
    base = {"encoder": "resnet18"}
    base[field] = value
    import yaml

    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError) as info:
        RunConfig.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"field '{field}'" in msg
    assert needle in msg


def test_unknown_field_is_refused_and_lists_the_fields(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ConfigError, match=r"field 'epoch': unknown field; allowed fields: .*epochs"):
        RunConfig.load(path)


def test_encoder_typo_suggests_close_names():
    with pytest.raises(ValueError, match=r"did you mean .*resnet34"):
        RunConfig(encoder="resnet35")


def test_valid_device_forms():
    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps", "CUDA:0"):
        assert RunConfig(device=dev).device == dev.lower()


def test_timm_universal_encoder_names_are_accepted_and_checked():
    assert RunConfig(encoder="tu-resnet18").encoder == "tu-resnet18"
    with pytest.raises(ValueError, match="unknown timm encoder"):
        RunConfig(encoder="tu-not_a_model_at_all")


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_load_round_trip_is_atomic(tmp_path, suffix):
    cfg = RunConfig(encoder="resnet18", crop_size=None, steps_per_epoch=7, product="PS-MS", boundary=True, lr=3e-4)
    path = tmp_path / f"cfg{suffix}"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left behind
    if suffix == ".json":
        assert json.loads(path.read_text())["steps_per_epoch"] == 7


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        RunConfig.load(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.load(bad_json)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.load(scalar)


def test_empty_yaml_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert RunConfig.load(path) == RunConfig()


def test_resolved_data_root(tmp_path, monkeypatch):
    import bdcore.data.demo

    called = []
    monkeypatch.setattr(bdcore.data.demo, "demo_root", lambda: called.append(1) or tmp_path / "demo-aoi")
    assert RunConfig(data_root="demo").resolved_data_root() == tmp_path / "demo-aoi"
    assert RunConfig(data_root="").resolved_data_root() == tmp_path / "demo-aoi"
    assert len(called) == 2
    assert RunConfig(data_root=str(tmp_path)).resolved_data_root() == tmp_path
    with pytest.raises(ConfigError, match="is not a folder"):
        RunConfig(data_root=str(tmp_path / "nope")).resolved_data_root()


def test_validate_assignment():
    cfg = RunConfig()
    with pytest.raises(ValueError):
        cfg.encoder = "nonsense"
    cfg.epochs = 3
    assert cfg.epochs == 3
