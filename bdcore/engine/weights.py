"""Pretrained encoder weights: where they come from, fetching them, and what a run got.

``resolve_encoder_weights(encoder, weights)`` returns a state dict plus a ``WeightsInfo`` saying what was obtained:

- ``cached``: the file was already in the Hugging Face cache (no network call at all);
- ``downloaded``: fetched through ``huggingface_hub`` (what smp itself uses) into the normal HF cache, with a
  progress bar (and an optional byte callback for the app); the file's sha256 is checked against the hub's
  ETag and the file is parsed before it is trusted; a bad file is removed from the cache and is an error;
- ``local``: ``weights`` is a ``.safetensors``/``.pth``/``.pt`` file, read with ``weights_only=True``;
- ``random``: the weights cannot be had (offline, hub unreachable, not on the endpoint): random init, one log line,
  the reason recorded. The network question is decided by one bounded probe (``BDCORE_HUB_TIMEOUT``, default
  5 s, hard-capped by a thread join) instead of huggingface_hub's retry loop (~23 s offline);
- ``none``: no pretrained weights were asked for.

``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are honoured at call time.

torch and segmentation_models_pytorch are imported inside the functions that need them: importing them costs
~5 s and ~850 MB (measured), and ``python -m bdcore`` imports this module (through ``bdcore.cli.weights``) for every
command, ``--help`` included.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import huggingface_hub
from huggingface_hub import constants as hf_constants
from tqdm.auto import tqdm

from bdcore.engine.config import WEIGHT_FILE_SUFFIXES

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT_S = 5.0
HUB_FILENAME = "model.safetensors"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# progress(done_bytes, total_bytes or None)
ByteProgress = Callable[[int, Optional[int]], Any]


class WeightsError(ValueError):
    """Weights that were asked for but cannot be used as they are (corrupt download, bad local file)."""


@dataclass
class HubFile:
    """Where an encoder's pretrained weights live on the hub."""

    repo_id: str
    revision: Optional[str]
    filename: str = HUB_FILENAME

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision[:8]}" if self.revision else self.repo_id


@dataclass
class WeightsInfo:
    """What a model's encoder got; stored in ``status.json`` and in checkpoints (plain JSON types only)."""

    source: str                      # downloaded | cached | local | random | none
    encoder: str
    requested: Optional[str] = None  # "imagenet", a file path, or None
    repo: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    tensors: int = 0
    reason: Optional[str] = None     # why random init
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.source in ("downloaded", "cached", "local")

    def summary(self) -> str:
        """One line for logs, the runs table and the Review page."""
        if self.source == "none":
            return "random init (no pretrained weights asked for)"
        if self.source == "random":
            return f"random init: {self.reason}"
        sha = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        if self.source == "local":
            return f"{self.encoder} weights from local file {self.path}{sha}"
        verb = "downloaded from" if self.source == "downloaded" else "cached copy of"
        return f"{self.requested} {self.encoder} weights, {verb} {self.repo}{sha}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Optional["WeightsInfo"]:
        if not isinstance(data, Mapping) or "source" not in data or "encoder" not in data:
            return None
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# ------------------------------------------------------------------------------------------------ where
def is_weights_file(spec: Optional[str]) -> bool:
    """``encoder_weights`` names a local file (by its suffix) rather than a hub weights tag like ``imagenet``."""
    return bool(spec) and str(spec).lower().endswith(WEIGHT_FILE_SUFFIXES)


def hub_file(encoder: str, weights: str = "imagenet") -> Optional[HubFile]:
    """The hub file smp (or timm, for ``tu-`` encoders) would load for ``encoder``/``weights``; None if none."""
    if encoder.startswith("tu-"):
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(encoder[3:])
        except Exception:  # noqa: BLE001 - unknown or untagged model: no hub file
            return None
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return None
        return HubFile(repo, None, getattr(cfg, "hf_hub_filename", None) or HUB_FILENAME)
    import segmentation_models_pytorch as smp

    entry = smp.encoders.encoders.get(encoder)
    settings = (entry or {}).get("pretrained_settings", {}).get(weights)
    if not settings:
        return None
    return HubFile(settings["repo_id"], settings.get("revision"))


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT or "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (tests and users may set it late)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def offline_mode() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(hf_constants.HF_HUB_OFFLINE)


def cached_file(hf: HubFile) -> Optional[Path]:
    """The cached copy of ``hf`` (exact revision, else any), or None; never touches the network."""
    for rev in (hf.revision, None) if hf.revision else (None,):
        try:
            found = huggingface_hub.try_to_load_from_cache(hf.repo_id, hf.filename, revision=rev,
                                                           cache_dir=str(hub_cache_dir()))
        except Exception:  # noqa: BLE001 - malformed cache: treat as absent
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def probe_hub(hf: HubFile, timeout: Optional[float] = None) -> Optional[str]:
    """None when the endpoint answers for ``hf``; else the reason it cannot be used. Bounded by ``timeout``
    (``BDCORE_HUB_TIMEOUT``, default 5 s) including DNS: the request runs in a thread that is joined with a cap."""
    if offline_mode():
        return "offline mode (HF_HUB_OFFLINE=1)"
    timeout = float(os.environ.get("BDCORE_HUB_TIMEOUT", DEFAULT_PROBE_TIMEOUT_S)) if timeout is None else timeout
    url = f"{hub_endpoint()}/{hf.repo_id}/resolve/{hf.revision or 'main'}/{hf.filename}"
    result: dict[str, Optional[str]] = {"reason": f"{hub_endpoint()} did not answer within {timeout:g} s"}

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect is an answer: stop there
            return None

    def ask() -> None:
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result["reason"] = None
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                result["reason"] = None
            elif exc.code in (401, 403, 404):
                result["reason"] = f"{hf.label} is not available at {hub_endpoint()} (HTTP {exc.code})"
            else:
                result["reason"] = f"{hub_endpoint()} answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            why = getattr(exc, "reason", exc)
            result["reason"] = f"{hub_endpoint()} is unreachable ({why})"

    worker = threading.Thread(target=ask, name="bdcore-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return result["reason"]


def availability(encoder: str, weights: Optional[str], timeout: float = 2.0) -> tuple[bool, str]:
    """Can ``weights`` be had for ``encoder`` right now? (ok, one line) — for the Train page's warning."""
    if not weights:
        return True, "random init (no pretrained weights asked for)"
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        return (True, f"local weights file {path}") if path.is_file() else (False, f"{path}: weights file not found")
    hf = hub_file(encoder, weights)
    if hf is None:
        return False, f"{encoder} has no {weights!r} weights on the hub"
    if cached_file(hf) is not None:
        return True, f"{weights} weights for {encoder} are cached"
    reason = probe_hub(hf, timeout=timeout)
    if reason is None:
        return True, f"{weights} weights for {encoder} will be downloaded from {hub_endpoint()} at start"
    return False, (f"{weights} weights for {encoder} are not cached and cannot be downloaded ({reason}): the run "
                   f"would start from random init. Fetch them on a connected machine with "
                   f"`python -m bdcore weights pull {encoder}` (copy the HF cache or the file over), or pick a "
                   f"local weights file")


# ------------------------------------------------------------------------------------------------ files
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file (``weights_only=True``: a file can never run code).
    A ``{"state_dict": …}`` / ``{"model": …}`` wrapper is unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; give the path of a .safetensors or .pth file")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt or foreign file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"{path}: not a readable weights file ({first}); copy it again or pick another") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors; expected an encoder state dict")
    return dict(state)


def _forget_cached(path: Path) -> None:
    """Remove a cached hub file: the snapshot link and the blob it points to (nothing that looks good stays)."""
    blob = path.resolve()
    for p in {path, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def verify_cached(path: Path, expect_sha256: Optional[str] = None) -> str:
    """sha256 of a cached hub file, checked against the hub's ETag (the blob's name for LFS files) and parsed;
    a bad file is removed from the cache and raises ``WeightsError``."""
    blob = path.resolve()
    expect = expect_sha256 or (blob.name if _SHA256_RE.match(blob.name) else None)
    digest = sha256_file(blob)
    problem = None
    if expect and digest != expect:
        problem = f"sha256 {digest[:12]}… does not match the hub's {expect[:12]}… (truncated or altered download)"
    else:
        try:
            read_weights_file(path)
        except WeightsError as exc:
            problem = str(exc).split(": ", 1)[-1]
    if problem:
        _forget_cached(path)
        raise WeightsError(f"{path}: {problem}; removed it from the Hugging Face cache; retry the download "
                           "(python -m bdcore weights pull ENCODER)")
    return digest


def _progress_class(progress: Optional[ByteProgress]) -> type:
    """A tqdm class for ``hf_hub_download`` that also reports bytes to ``progress``."""

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n: float = 1) -> Optional[bool]:
            out = super().update(n)
            if progress is not None:
                try:
                    progress(int(self.n), int(self.total) if self.total else None)
                except Exception:  # noqa: BLE001 - a progress display must never break a download
                    pass
            return out

    return _Bar


def download(hf: HubFile, progress: Optional[ByteProgress] = None) -> Path:
    """Fetch ``hf`` into the HF cache (progress bar on stderr), verify it, return its cached path."""
    cache = hub_cache_dir()
    path = Path(huggingface_hub.hf_hub_download(
        hf.repo_id, hf.filename, revision=hf.revision, cache_dir=str(cache), endpoint=hub_endpoint(),
        etag_timeout=float(os.environ.get("BDCORE_HUB_TIMEOUT", DEFAULT_PROBE_TIMEOUT_S)),
        tqdm_class=_progress_class(progress),
    ))
    verify_cached(path)
    return path


# ------------------------------------------------------------------------------------------------ resolve
def resolve_encoder_weights(encoder: str, weights: Optional[str], progress: Optional[ByteProgress] = None,
                            ) -> tuple[Optional[dict[str, torch.Tensor]], WeightsInfo]:
    """The encoder state dict to load (None = random init) and what was obtained. Raises ``WeightsError`` only
    for weights that exist but are bad (a corrupt download, an unreadable local file)."""
    t0 = time.time()
    if not weights:
        return None, WeightsInfo("none", encoder)
    if is_weights_file(weights):
        path = Path(weights).expanduser().resolve()
        state = read_weights_file(path)
        return state, WeightsInfo("local", encoder, str(weights), path=str(path), sha256=sha256_file(path),
                                  tensors=len(state), seconds=time.time() - t0)
    hf = hub_file(encoder, weights)
    if hf is None:
        info = WeightsInfo("random", encoder, weights, reason=f"{encoder} has no {weights!r} weights on the hub")
        log.warning("%s", info.summary())
        return None, info
    path = cached_file(hf)
    source = "cached"
    if path is not None:
        digest = verify_cached(path)
    else:
        reason = probe_hub(hf)
        if reason is not None:
            info = WeightsInfo("random", encoder, weights, repo=hf.label, seconds=time.time() - t0,
                               reason=f"{weights} weights for {encoder} are not cached and {reason}")
            log.warning("%s", info.summary())
            return None, info
        log.info("downloading %s weights for %s from %s/%s", weights, encoder, hub_endpoint(), hf.repo_id)
        try:
            path = download(hf, progress)
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - the network went away mid-way: as offline, say why
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            info = WeightsInfo("random", encoder, weights, repo=hf.label, seconds=time.time() - t0,
                               reason=f"download of {hf.label} failed ({type(exc).__name__}: {first})")
            log.warning("%s", info.summary())
            return None, info
        digest, source = sha256_file(path), "downloaded"
    state = read_weights_file(path)
    return state, WeightsInfo(source, encoder, weights, repo=hf.label, path=str(path), sha256=digest,
                              tensors=len(state), seconds=time.time() - t0)


# ------------------------------------------------------------------------------------------------ listing
def cached_weights() -> list[dict]:
    """Encoder weights in the HF cache that smp/timm encoders use: repo, revision, size, path, encoders."""
    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    import segmentation_models_pytorch as smp

    by_repo: dict[str, list[str]] = {}
    for name, entry in smp.encoders.encoders.items():
        for tag, settings in entry.get("pretrained_settings", {}).items():
            by_repo.setdefault(settings["repo_id"], []).append(f"{name} ({tag})")
    try:
        info = huggingface_hub.scan_cache_dir(str(cache))
    except Exception:  # noqa: BLE001 - not a cache folder
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        for rev in repo.revisions:
            for f in rev.files:
                if not f.file_name.endswith(WEIGHT_FILE_SUFFIXES):
                    continue
                rows.append({"repo": repo.repo_id, "revision": rev.commit_hash[:8], "file": f.file_name,
                             "mb": round(f.size_on_disk / 1e6, 1), "path": str(f.file_path),
                             "encoders": ", ".join(by_repo.get(repo.repo_id, [])) or "-"})
    return rows
