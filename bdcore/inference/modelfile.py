"""Exported models: a run's checkpoint as ``model.onnx`` + its sidecar ``model.json``, and such a pair run with
onnxruntime through the SAME windows, padding, flips and blending as a checkpoint (a :class:`Predictor` whose
:data:`predictor.Backend` is an :class:`OnnxBackend`).

``model.onnx`` maps a normalised (B, bands, H, W) float32 batch (H, W multiples of ``input_multiple``) to
(B, classes, H, W) sigmoid probabilities; batch, height and width are dynamic. ``model.json`` holds what the file
alone does not say: product, bands, the band statistics the pixels are scaled with, threshold, classes,
architecture, bdcore version, and the sha256 of the source checkpoint and of ``model.onnx`` (checked on every load:
a changed or swapped file is an error, never silently different predictions).

Exporter: ``torch.onnx.export(dynamo=False)`` (the TorchScript tracer), opset 17. Both exporters of torch 2.14 export
smp Unet/FPN/Unet++/DeepLabV3+ with a dynamic batch and H/W, and onnxruntime reproduces torch within 2e-4 on logits
either way (resnet34, 64-256 px); but ``dynamo=True`` took 16-23 s per model against 3-5 s (2 CPU cores; the
Review page's button waits for it) and needs two more packages (onnxscript, onnx_ir). These networks have no
data-dependent control flow, which is the case tracing handles exactly; every export is checked against torch
(:func:`export_onnx`), and the tests export with the pinned torch, so a torch without that exporter fails them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bdcore
from bdcore.atomic import atomic_write_bytes, atomic_write_json
from bdcore.engine import models
from bdcore.engine.config import RunConfig
from bdcore.engine.rundir import RunDir
from bdcore.engine.weights import sha256_file
from bdcore.inference.evaluate import checkpoint_path
from bdcore.inference.normalization import Normalization, PredictError
from bdcore.inference.predictor import Predictor

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "bdcore-onnx-model"
SIDECAR_VERSION = 1
ONNX_NAME, SIDECAR_NAME = "model.onnx", "model.json"
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
CLASS_NAMES = ("building", "boundary")  # output channels, in order (boundary only for runs trained with it)
MAX_EXPORT_DIFF = 1e-4  # onnxruntime vs torch probabilities on the export's check batch
REEXPORT = "re-export with python -m bdcore export RUN"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class ModelFileError(PredictError):
    """An exported model (or its sidecar) that cannot be used as it is; the message names the file and the fix."""


@dataclass
class Exported:
    """An exported pair on disk: paths, the sidecar's contents, and how long the export took."""

    onnx: Path
    sidecar: Path
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False  # an existing export of the same checkpoint (same sha256) was kept


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``model.json`` beside ``model.onnx`` (same stem)."""
    return Path(onnx_path).with_suffix(".json")


# ------------------------------------------------------------------------------------------------------ export


class _Probabilities(torch.nn.Module):
    """The network plus its sigmoid: the exported graph outputs probabilities, like ``Predictor.backend``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.sigmoid(out)


def _onnx_bytes(net: torch.nn.Module, bands: int, stride: int) -> bytes:
    """``net`` as ONNX (TorchScript exporter, see the module docstring), dynamic batch, height and width."""
    sample = torch.rand(1, bands, 2 * stride, 2 * stride, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and smp's tracer warnings on shape checks
        torch.onnx.export(net, (sample,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                          do_constant_folding=True)
    return buf.getvalue()


def _check_export(net: torch.nn.Module, data: bytes, bands: int, stride: int) -> dict[str, Any]:
    """Run the exported bytes and torch on one batch of another shape than the traced one; the largest difference
    must stay under ``MAX_EXPORT_DIFF`` (else ModelFileError: nothing is written)."""
    import onnxruntime as ort

    x = torch.rand(2, bands, 3 * stride, 2 * stride, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x).numpy()
    got = ort.InferenceSession(data, providers=[CPU]).run(None, {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= MAX_EXPORT_DIFF:
        raise ModelFileError(f"the exported model does not reproduce the checkpoint (max difference {diff:.2e} > "
                             f"{MAX_EXPORT_DIFF:g} on a {list(x.shape)} batch); nothing was written")
    return {"shape": list(x.shape), "max_abs_diff": diff}


def _band_stats(norm: Normalization) -> dict[str, Any]:
    lo = None if norm.lo is None else [float(v) for v in norm.lo]
    hi = None if norm.hi is None else [float(v) for v in norm.hi]
    return {"source": norm.source, "lo": lo, "hi": hi, "p_lo": norm.p_lo, "p_hi": norm.p_hi}


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Exported:
    """Export a bdcore checkpoint to ``out_dir/model.onnx`` + ``model.json`` (each written atomically; the sidecar
    last, and it carries the onnx file's sha256, so an interrupted export is detected on load). The same
    checkpoint exports to the same bytes, so two concurrent exports of it cannot leave a mismatched pair."""
    t0 = time.perf_counter()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise ModelFileError(f"checkpoint {checkpoint} not found: train a run first or pass a .pt file")
    sha = sha256_file(checkpoint)
    # read twice (config here, weights + normalisation in Predictor.from_checkpoint): export is rare, and the
    # normalisation then is exactly the one predictions with this checkpoint use
    payload = models.load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(payload["config"], source=f"{checkpoint} (config)")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    if sha256_file(checkpoint) != sha:
        raise ModelFileError(f"{checkpoint} changed while it was exported (is its run still training?); export again")
    net = _Probabilities(predictor.model).eval()
    data = _onnx_bytes(net, cfg.in_channels, predictor.stride)
    verified = _check_export(net, data, cfg.in_channels, predictor.stride)
    meta = {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
        "product": cfg.product, "bands": cfg.in_channels, "band_stats": _band_stats(predictor.normalization),
        "threshold": cfg.threshold, "input_multiple": predictor.stride, "classes": list(CLASS_NAMES[:cfg.classes]),
        "arch": cfg.arch, "encoder": cfg.encoder,
        "input": {"name": INPUT_NAME, "shape": ["batch", cfg.in_channels, "height", "width"], "dtype": "float32",
                  "scaling": "(x - lo) / (hi - lo) per band, clipped to [0, 1]; height and width zero-padded "
                             "(bottom/right) to a multiple of input_multiple"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.classes, "height", "width"], "dtype": "float32",
                   "meaning": "sigmoid probabilities, one channel per class"},
        "opset": OPSET, "bdcore_version": bdcore.__version__, "torch_version": torch.__version__,
        "checkpoint": {"file": f"{checkpoint.parent.name}/{checkpoint.name}", "sha256": sha,
                       "epoch": payload.get("epoch"), "step": payload.get("step")},
        "onnx_sha256": hashlib.sha256(data).hexdigest(), "onnx_bytes": len(data),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "verified": verified,
    }
    onnx_path, side = out_dir / ONNX_NAME, out_dir / SIDECAR_NAME
    atomic_write_bytes(onnx_path, data)
    atomic_write_json(side, meta)
    return Exported(onnx_path, side, meta, round(time.perf_counter() - t0, 3))


def export_run(run_dir: str | os.PathLike, which: str = "best", out_dir: str | os.PathLike | None = None,
               reuse: bool = False) -> Exported:
    """Export a run's ``which`` checkpoint (default folder: ``RunDir.export(which)``). ``reuse``: keep an intact
    export of the same checkpoint (sha256 in its sidecar) instead of exporting again (the Review page's cache)."""
    ck = checkpoint_path(run_dir, which)  # EvaluationError naming the missing file and the checkpoint that exists
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run_dir).export(which)
    if reuse and (out_dir / ONNX_NAME).is_file():
        try:
            meta = read_sidecar(out_dir / ONNX_NAME)
        except ModelFileError as exc:
            log.info("exporting again: %s", exc)
        else:
            if meta.get("checkpoint", {}).get("sha256") == sha256_file(ck):
                return Exported(out_dir / ONNX_NAME, out_dir / SIDECAR_NAME, meta, 0.0, reused=True)
    return export_onnx(ck, out_dir)


def bundle_zip(exported: Exported) -> bytes:
    """``model.onnx`` + ``model.json`` in one zip (stored: the weights do not compress), for a download."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.write(exported.onnx, ONNX_NAME)
        zf.write(exported.sidecar, SIDECAR_NAME)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ load and run

_REQUIRED = ("product", "bands", "band_stats", "input_multiple", "classes", "onnx_sha256")


def _load_sidecar(onnx_path: Path) -> dict[str, Any]:
    """The sidecar's JSON, checked for format, version and required fields (not yet against the model)."""
    side = sidecar_path(onnx_path)
    if not side.is_file():
        raise ModelFileError(f"{onnx_path}: no sidecar {side.name} beside it (it holds the band statistics and the "
                             f"checksum the model needs): keep {side.name} next to {onnx_path.name}, or {REEXPORT}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ModelFileError(f"{side}: not valid JSON{where} (truncated or edited); {REEXPORT}") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != SIDECAR_FORMAT:
        found = f"format {fmt!r}" if fmt is not None else "no format field"
        raise ModelFileError(f"{side}: not a bdcore model sidecar ({found}, expected {SIDECAR_FORMAT!r}); {REEXPORT}")
    version = meta.get("format_version")
    if version != SIDECAR_VERSION:
        fix = "upgrade bdcore" if isinstance(version, int) and version > SIDECAR_VERSION else REEXPORT
        raise ModelFileError(f"{side}: sidecar format version {version!r} (bdcore {meta.get('bdcore_version', '?')}),"
                             f" this bdcore {bdcore.__version__} reads version {SIDECAR_VERSION}: {fix}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(f"{side}: missing {', '.join(missing)}; {REEXPORT}")
    return meta


def _check_fields(meta: dict[str, Any], side: Path) -> None:
    """Field types and the band statistics' length against ``bands``."""
    bands, stats = meta["bands"], meta["band_stats"]
    if not isinstance(bands, int) or bands < 1 or not isinstance(meta["input_multiple"], int) \
            or not isinstance(stats, dict) or not isinstance(meta["classes"], list) or not meta["classes"]:
        raise ModelFileError(f"{side}: bands, input_multiple, band_stats or classes has the wrong type; {REEXPORT}")
    for key in ("lo", "hi"):
        values = stats.get(key)
        if values is not None and len(values) != bands:
            raise ModelFileError(f"{side}: band_stats.{key} has {len(values)} values but bands is {bands}: the "
                                 f"sidecar was edited or belongs to another model; {REEXPORT}")


def read_sidecar(onnx_path: str | os.PathLike, data: bytes | None = None) -> dict[str, Any]:
    """The checked sidecar of ``onnx_path``: format, version, fields, and ``model.onnx``'s sha256 (``data``: the
    file's bytes when already read)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelFileError(f"{onnx_path}: model file not found; export one with python -m bdcore export RUN")
    meta = _load_sidecar(onnx_path)
    side = sidecar_path(onnx_path)
    _check_fields(meta, side)
    sha = hashlib.sha256(data if data is not None else onnx_path.read_bytes()).hexdigest()
    if sha != meta["onnx_sha256"]:
        raise ModelFileError(f"{onnx_path}: sha256 {sha[:16]} does not match {side.name} "
                             f"({str(meta['onnx_sha256'])[:16]}): the model file was changed or comes from another "
                             f"export; {REEXPORT}")
    return meta


def providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for a ``--device``: CUDA when present (auto) or asked for, else CPU."""
    import onnxruntime as ort

    spec = str(device).strip().lower()
    available = ort.get_available_providers()
    if spec == "cpu":
        return [CPU]
    if spec == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if spec.startswith("cuda"):
        if CUDA not in available:
            raise ModelFileError(f"device {device!r}: this onnxruntime has no {CUDA} (it has {', '.join(available)});"
                                 " install onnxruntime-gpu, or use --device cpu")
        return [CUDA, CPU]
    raise ModelFileError(f"device {device!r} is not available to onnxruntime: use auto, cpu or cuda")


class OnnxBackend:
    """An onnxruntime session as a :data:`predictor.Backend` (CPU tensors in and out; the session moves data to
    its provider)."""

    def __init__(self, session: Any):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.provider = session.get_providers()[0]

    @property
    def runtime(self) -> str:
        return f"onnxruntime on {self.provider}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])


def _session(data: bytes, onnx_path: Path, device: str) -> Any:
    import onnxruntime as ort

    chosen = providers(device)
    try:
        return ort.InferenceSession(data, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad model file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelFileError(f"{onnx_path}: not a readable ONNX model ({first}); {REEXPORT}") from None


def _check_session(meta: dict[str, Any], session: Any, onnx_path: Path) -> None:
    """The sidecar's bands/classes against the model's input and output channels."""
    side = sidecar_path(onnx_path)
    takes = session.get_inputs()[0].shape[1] if len(session.get_inputs()[0].shape) == 4 else None
    gives = session.get_outputs()[0].shape[1] if len(session.get_outputs()[0].shape) == 4 else None
    if takes != meta["bands"]:
        raise ModelFileError(f"{side} says {meta['bands']} bands ({meta['product']}) but {onnx_path} takes {takes}: "
                             f"the sidecar belongs to another model or was edited; {REEXPORT}")
    if gives != len(meta["classes"]):
        raise ModelFileError(f"{side} names {len(meta['classes'])} classes ({', '.join(map(str, meta['classes']))}) "
                             f"but {onnx_path} outputs {gives}: the sidecar belongs to another model; {REEXPORT}")


def onnx_predictor(onnx_path: str | os.PathLike, device: str = "auto", batch_size: int = 4) -> Predictor:
    """A :class:`Predictor` running ``model.onnx`` with onnxruntime (CUDA provider when present, else CPU); the
    sidecar gives its normalisation, bands, product and input multiple. ModelFileError for a missing, tampered or
    mismatched pair."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelFileError(f"{onnx_path}: model file not found; export one with python -m bdcore export RUN")
    data = onnx_path.read_bytes()  # read once: the checksum and the session see the same bytes
    meta = read_sidecar(onnx_path, data)
    session = _session(data, onnx_path, device)
    _check_session(meta, session, onnx_path)
    stats = meta["band_stats"]
    norm = Normalization.from_stats(stats, stats.get("source") or "checkpoint") or Normalization()
    predictor = Predictor(OnnxBackend(session), in_channels=meta["bands"], normalization=norm, device="cpu",
                          product=meta["product"], batch_size=batch_size, stride=meta["input_multiple"])
    log.debug("%s: %s", onnx_path.name, predictor.runtime)
    return predictor


def load_predictor(model: str | os.PathLike, device: str = "auto", batch_size: int = 4) -> Predictor:
    """THE way a model file becomes a Predictor: an exported ``.onnx`` (onnxruntime), else a bdcore checkpoint."""
    if Path(model).suffix.lower() == ".onnx":
        return onnx_predictor(model, device=device, batch_size=batch_size)
    return Predictor.from_checkpoint(model, device=device, batch_size=batch_size)
