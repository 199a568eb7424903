"""Model factory over segmentation-models-pytorch, and safe checkpoints.

Pretrained encoder weights come from ``bdcore.engine.weights`` (cached, downloaded with a bounded network check, or a
local file); when they cannot be had the model starts from random init and says so.
Checkpoints hold plain tensors and containers only and are read with ``weights_only=True``, so
a checkpoint file can never run code.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import segmentation_models_pytorch as smp
import torch
from torch import nn

from bdcore.atomic import atomic_write
from bdcore.engine.config import ARCH_NAMES, RunConfig, check_arch, check_encoder
from bdcore.engine.weights import ByteProgress, WeightsError, WeightsInfo, resolve_encoder_weights

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "Unet": smp.Unet,
    "UnetPlusPlus": smp.UnetPlusPlus,
    "FPN": smp.FPN,
    "DeepLabV3Plus": smp.DeepLabV3Plus,
}
assert tuple(ARCHITECTURES) == ARCH_NAMES

CHECKPOINT_FORMAT = "bdcore-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is truncated, not a bdcore checkpoint, or for another model than expected."""


# --------------------------------------------------------------------------- pretrained weights
def adapt_first_conv(pretrained: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit RGB first-conv weights (out, 3, k, k) to ``in_channels`` bands.

    More bands: the RGB weights are copied to bands 0-2 and every extra band gets their mean.
    Fewer bands: each band gets the RGB sum divided by the band count (keeps the activation scale).
    """
    out, c, *k = pretrained.shape
    if c == in_channels:
        return pretrained.clone()
    if in_channels > c:
        new = pretrained.new_empty((out, in_channels, *k))
        new[:, :c] = pretrained
        new[:, c:] = pretrained.mean(dim=1, keepdim=True)
        return new
    return (pretrained.sum(dim=1, keepdim=True) / in_channels).repeat(1, in_channels, *[1] * len(k))


def _first_conv_fits(value: torch.Tensor, target: torch.Tensor) -> bool:
    """A 4-D kernel that differs from ``target`` only in its input channels (RGB weights for an 8-band model)."""
    return value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0] \
        and value.shape[2:] == target.shape[2:]


def load_pretrained_encoder(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> int:
    """Copy an encoder state dict into ``model.encoder``, adapting first-conv band counts; returns tensors loaded.

    Keys may be the encoder's own, prefixed ``encoder.`` (a whole smp model) or lack timm's ``model.`` prefix.
    Tensors the encoder needs but ``state`` lacks, or has in another shape, are a ``WeightsError`` that names
    them: a partial load would silently mix pretrained and random layers."""
    own = model.encoder.state_dict()
    fitted: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for key, value in state.items():
        base = key[len("encoder."):] if key.startswith("encoder.") else key
        target_key = next((k for k in (base, f"model.{base}") if k in own), None)
        if target_key is None:
            continue  # e.g. a classifier head the encoder does not have
        target = own[target_key]
        if value.shape != target.shape and _first_conv_fits(value, target):
            value = adapt_first_conv(value, target.shape[1])
        if value.shape != target.shape:
            wrong.append(f"{target_key} (file {tuple(value.shape)}, model {tuple(target.shape)})")
            continue
        fitted[target_key] = value.to(target.dtype)
    missing = [k for k in own if k not in fitted and not k.endswith("num_batches_tracked")
               and not any(w.startswith(k + " ") for w in wrong)]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        if wrong:
            parts.append(f"{len(wrong)} of another shape: {', '.join(wrong[:5])}{' …' if len(wrong) > 5 else ''}")
        raise WeightsError(f"{source}: does not fit the {type(model.encoder).__name__} encoder "
                           f"({'; '.join(parts)}); use weights saved from this encoder")
    model.encoder.load_state_dict(fitted, strict=False)
    return len(fitted)


def freeze_unused_parameters(model: nn.Module, in_channels: int) -> list[str]:
    """Set ``requires_grad=False`` on the parameters the segmentation forward never uses, and return their names.

    Some encoders keep classification-head layers the segmentation model never calls (efficientnet-b*:
    ``_conv_head``, ``_bn1``). They never get a gradient, which DDP refuses at its second step ("Expected to have
    finished reduction in the prior iteration"). Found by one forward/backward in eval mode (no running-stat
    update, no dropout draw, no RNG use) on a 32 px zero input (the smallest a stride-32 encoder takes; ~0.2-0.4 s
    on one CPU thread). The state dict keeps every key, so checkpoints load either way, and the optimizer never
    stepped these parameters anyway (they had no gradient)."""
    if any(p.is_inference() for p in model.parameters()):
        return []  # built under inference_mode: never trained, and autograd cannot run on it
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():  # also when built under no_grad/inference_mode
            model(torch.zeros(1, in_channels, 32, 32)).float().sum().backward()
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    except (RuntimeError, ValueError) as exc:  # e.g. a tu- encoder that needs a larger input: left as built
        log.debug("%s: no dry pass on a 32 px input (%s); no parameter frozen", type(model).__name__, exc)
        unused = []
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    params = dict(model.named_parameters())
    for name in unused:
        params[name].requires_grad_(False)
    return unused


def create_model(arch: str = "Unet", encoder: str = "resnet34", in_channels: int = 3, classes: int = 1,
                 encoder_weights: Optional[str] = "imagenet", progress: Optional[ByteProgress] = None,
                 ) -> tuple[nn.Module, WeightsInfo]:
    """An smp model (parameters it never uses frozen: :func:`freeze_unused_parameters`) and what its encoder got
    (see ``bdcore.engine.weights``): downloaded, cached or local pretrained weights, or random init with one log
    line when they cannot be had."""
    name = check_arch(arch)
    check_encoder(encoder)
    model = ARCHITECTURES[name](encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)
    frozen = freeze_unused_parameters(model, in_channels)
    if frozen:
        log.debug("%s/%s: %d parameter(s) unused by segmentation frozen: %s", name, encoder, len(frozen),
                  ", ".join(frozen))
    state, info = resolve_encoder_weights(encoder, encoder_weights, progress=progress)
    if state is not None:
        info.tensors = load_pretrained_encoder(model, state, source=info.path or str(encoder_weights))
        log.info("encoder: %s (%d tensors)", info.summary(), info.tensors)
    return model, info


def build_model(arch: str = "Unet", encoder: str = "resnet34", in_channels: int = 3, classes: int = 1,
                encoder_weights: Optional[str] = "imagenet") -> nn.Module:
    """``create_model`` without the report."""
    return create_model(arch, encoder, in_channels, classes, encoder_weights)[0]


def model_from_config(cfg: RunConfig, pretrained: bool = True, progress: Optional[ByteProgress] = None,
                      ) -> tuple[nn.Module, WeightsInfo]:
    """The run's model and what its encoder got (``pretrained=False``: random init, e.g. before loading a
    checkpoint)."""
    return create_model(cfg.arch, cfg.encoder, cfg.in_channels, cfg.classes,
                        cfg.encoder_weights if pretrained else None, progress=progress)


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` atomically (temp file, fsync, rename): a kill never leaves half a checkpoint."""
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(data, f), "wb")


def _reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            # keep what was refused, not torch's advice to allow-list it (that would let the file run code)
            return ln.split(". Please", 1)[0][:200]
    if not lines:
        return type(exc).__name__
    first = lines[0].split(". ")[0][:200]
    return first if len(first) > 12 else f"{type(exc).__name__}: {first}"


def _describe(ck: Mapping[str, Any]) -> str:
    return f"{ck.get('arch')}/{ck.get('encoder')}/{ck.get('in_channels')} bands/{ck.get('classes')} classes"


def load_checkpoint(path: str | Path, expect: Optional[RunConfig | Mapping[str, Any]] = None,
                    map_location: Any = "cpu") -> dict:
    """Read a bdcore checkpoint safely; ``expect`` (a RunConfig or dict with arch/encoder/in_channels/classes)
    makes a checkpoint of another model a ``CheckpointError`` naming both."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not a bdcore checkpoint, or it contains objects that would run code when loaded "
            f"(refused; nothing was executed): {_reason(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure to parse = corrupt file
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({_reason(exc)}); "
            f"delete it and resume from another checkpoint or retrain"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "model" not in ck:
        raise CheckpointError(f"{path}: not a bdcore checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if int(ck.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ck['format_version']} is newer than this bdcore "
                              f"({CHECKPOINT_VERSION}); upgrade bdcore")
    if expect is not None:
        if isinstance(expect, RunConfig):
            want = {"arch": expect.arch, "encoder": expect.encoder, "in_channels": expect.in_channels,
                    "classes": expect.classes}
        else:
            want = dict(expect)
        diff = [k for k, v in want.items() if k in ("arch", "encoder", "in_channels", "classes") and ck.get(k) != v]
        if diff:
            raise CheckpointError(
                f"{path}: checkpoint is for {_describe(ck)} but the run expects {_describe(want)} "
                f"(differs in {', '.join(diff)}); use a checkpoint of the same model or a new run folder"
            )
    return ck


def _state_dict_diff(model: nn.Module, state: Any) -> str:
    """Why ``state`` does not fit ``model``, in a few words (counts and the first offending tensor)."""
    if not isinstance(state, Mapping):
        return f"weights are a {type(state).__name__}, not a state dict"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shapes:
        parts.append(f"{len(shapes)} of another shape, e.g. {shapes[0]}")
    return ", ".join(parts)


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """Model (eval mode, on ``device``) and its RunConfig from a checkpoint, for inference."""
    ck = load_checkpoint(checkpoint_path)
    cfg = RunConfig.from_dict(ck["config"], source=f"{checkpoint_path} (config)")
    model, _ = model_from_config(cfg, pretrained=False)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{checkpoint_path}: weights do not fit {_describe(ck)} "
                              f"({_state_dict_diff(model, ck['model']) or _reason(exc)}); the file was saved "
                              "from another architecture or edited: use the run's own best.pt/last.pt") from None
    return model.to(device).eval(), cfg
