"""The one run config (``RunConfig``): what a training run needs, validated, saved beside the run.

Kept free of torch at import time: the app imports it on every page and ``python -m bdcore`` for every command.
segmentation-models-pytorch (2.2 s to import, measured; it imports torch) and timm (2.1 s) are imported inside the
encoder checks, only when a config naming an encoder is validated.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, ValidationInfo

from bdcore.atomic import atomic_write
from bdcore.data import demo
from bdcore.data.products import DEFAULT_PRODUCT, PRODUCT_BANDS, PRODUCTS
from bdcore.data.products import product as product_info

# Architectures the model factory knows (bdcore.engine.models.ARCHITECTURES maps these to smp classes).
ARCH_NAMES: tuple[str, ...] = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus")
# The encoders the Train page offers (any smp or tu- encoder can still be typed or set in a config). Each builds with
# every architecture and trains under DDP (tests/bdcore/engine/test_models.py); the model factory freezes heads
# the segmentation forward never uses (bdcore.engine.models.freeze_unused_parameters).
ENCODER_CHOICES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3",
                                    "mobilenet_v2")
# encoder_weights may name a local file with one of these suffixes (bdcore.engine.weights reads it).
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the file and field."""


def encoder_names() -> list[str]:
    """smp's built-in encoder names (``tu-<timm model>`` names are accepted as well)."""
    import segmentation_models_pytorch as smp  # 2.2 s: see the module docstring

    return list(smp.encoders.get_encoder_names())


def check_arch(name: str) -> str:
    """The canonical spelling of an architecture name (case-insensitive), or a ValueError listing the allowed ones."""
    for arch in ARCH_NAMES:
        if str(name).lower() == arch.lower():
            return arch
    raise ValueError(f"unknown arch {name!r}; allowed: {', '.join(ARCH_NAMES)}")


def check_encoder(name: str) -> str:
    if name.startswith("tu-"):
        import timm  # 2.1 s: see the module docstring

        if not timm.is_model(name[3:].split(".")[0]):
            raise ValueError(f"unknown timm encoder {name!r}; use 'tu-' + a name from timm.list_models()")
        return name
    names = encoder_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown encoder {name!r}; {hint}use one of the {len(names)} smp encoders "
            "(segmentation_models_pytorch.encoders.get_encoder_names(), e.g. resnet18, resnet34, resnet50, "
            "efficientnet-b0) or 'tu-<timm model name>'"
        )
    return name


class RunConfig(BaseModel):
    """Everything one training run depends on; stored as ``config.json`` in the run folder."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    data_root: str = Field("demo", description='AOI folder; "" or "demo" = the synthetic demo AOI')
    product: str = Field(DEFAULT_PRODUCT, description=f"image product: {', '.join(PRODUCTS)}")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split: Literal["random", "blocked"] = "random"
    crop_size: Optional[int] = Field(256, description="training crop (multiple of 32); None = full tiles")
    samples_per_tile: int = Field(1, ge=1, description="random crops per train tile per epoch (distinct crops)")
    # optimisation
    batch_size: int = Field(8, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    bce_weight: float = Field(1.0, ge=0.0)
    dice_weight: float = Field(1.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max grad norm; 0 = off")
    amp: bool = Field(True, description="mixed precision on CUDA: bf16, or fp16 with loss scaling where the GPU "
                                        "has no native bf16 (ignored on CPU)")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="None = one pass over the train tiles")
    # model
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: Optional[str] = Field(
        "imagenet", description='"imagenet" (downloaded once, then cached), none, or a .safetensors/.pth file')
    boundary: bool = Field(False, description="second output channel: building boundary/contact band")
    # run
    seed: int = 0
    device: str = "auto"
    gpus: int = Field(1, ge=1, le=64, description="processes, one per GPU: > 1 launches the run under torchrun "
                      "--standalone (DDP; gloo processes on a CPU-only machine)")
    workers: Optional[int] = Field(
        None, ge=0, description="DataLoader workers per process; None = auto: the cores (at most 16) on CUDA, 2 else")
    eval_every: int = Field(1, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_minutes: float = Field(10.0, ge=0.0, description="also write last.pt inside an epoch this often, "
                                      "so a kill loses at most this much work; 0 = only at epoch ends")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    building_f1_tiles: int = Field(4, ge=0, description="val tiles scored as polygons (SpaceNet F1) per eval")
    exclude_bad_labels: bool = Field(
        False, description="leave out train/val tiles whose labels file is unusable (a Point feature, unreadable) "
                           "instead of refusing the run; the tiles left out are recorded in status.json")
    deterministic: bool = Field(False, description="deterministic GPU kernels where torch has them, no cuDNN "
                                                   "autotuning (slower; see README: Reproducibility)")

    # ---------------------------------------------------------------- validators
    @field_validator("crop_size")
    @classmethod
    def _crop(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and (v <= 0 or v % 32):
            raise ValueError(f"crop_size must be a positive multiple of 32 (got {v}); e.g. 128, 256, 512")
        return v

    @field_validator("product")
    @classmethod
    def _product(cls, v: str) -> str:
        return product_info(v).name

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return check_arch(v)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        return check_encoder(v)

    @field_validator("encoder_weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null", "random")):
            return None
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE_RE.match(v):
            raise ValueError(f"unknown device {v!r}; allowed: auto, cpu, cuda, cuda:N, mps")
        return v

    @field_validator("encoder_weights")
    @classmethod
    def _weights_exist(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        encoder = info.data.get("encoder")
        if v is not None and v.lower().endswith(WEIGHT_FILE_SUFFIXES):
            return v  # a local weights file: read (and checked) when the model is built
        if v is not None and encoder and not encoder.startswith("tu-"):
            import segmentation_models_pytorch as smp  # 2.2 s: see the module docstring

            settings = smp.encoders.encoders[encoder].get("pretrained_settings", {})
            if v not in settings:
                allowed = ", ".join([*settings, "none", "a .safetensors/.pth file"])
                raise ValueError(f"encoder_weights {v!r} do not exist for {encoder}; allowed: {allowed}")
        return v

    # ---------------------------------------------------------------- derived
    @property
    def in_channels(self) -> int:
        return PRODUCT_BANDS[self.product]

    @property
    def classes(self) -> int:
        return 2 if self.boundary else 1

    def resolved_data_root(self) -> Path:
        """The AOI folder to train on; ``""``/``"demo"`` is the demo AOI (written on first use)."""
        if self.data_root.strip() in ("", "demo"):
            return Path(demo.demo_root())
        root = Path(self.data_root).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"data_root {str(root)!r} is not a folder; point data_root at a SpaceNet AOI folder or use 'demo'"
            )
        return root

    # ---------------------------------------------------------------- files
    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of config fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {format_validation_error(exc)}") from None

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Read a YAML or JSON config; any problem is a ``ConfigError`` naming the file and field."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from None
        data: Any
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            data = {}
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write atomically: JSON for ``.json``, YAML otherwise."""
        path = Path(path)
        data = self.model_dump(mode="json")
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        else:
            text = yaml.safe_dump(data, sort_keys=True)
        atomic_write(path, lambda f: f.write(text), "w")


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "config"
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field; allowed fields: {', '.join(RunConfig.model_fields)}"
        parts.append(f"field {field!r}: {msg}")
    return "; ".join(parts)
