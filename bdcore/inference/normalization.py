"""How raw pixels become model input (:class:`Normalization`): training band statistics from the checkpoint (or the
training catalog), or a per-image 2-98 % stretch; and the one check of an input against those statistics.

No torch here: evaluation of cached predictions and the CLI's argument parsing import this, not the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bdcore.data import imagery
from bdcore.data.catalog import load_catalog
from bdcore.engine.config import RunConfig

log = logging.getLogger(__name__)


class PredictError(ValueError):
    """The input cannot be predicted on as asked (wrong band count, not a raster, ...); the message says why."""


# ---------------------------------------------------------------------------------------------- normalisation


@dataclass
class Normalization:
    """How raw pixels become model input: ``(x - lo) / (hi - lo)`` clipped to [0, 1], per band.

    ``lo``/``hi`` come from the training band statistics stored in the checkpoint; when a checkpoint has none,
    they are per-image 2/98 percentiles (``source == "percentile"``)."""

    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    source: str = "percentile"
    p_lo: float = 2.0
    p_hi: float = 98.0

    def apply(self, arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy of ``arr`` (C,H,W), written into ``out`` if given (no temporaries)."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("Normalization not fitted: call fitted_for() or pass lo/hi")
        return np.nan_to_num(imagery.normalize_bands(arr, self.lo, self.hi, out=out), copy=False, nan=0.0)

    @property
    def from_training(self) -> bool:
        """True when lo/hi are training statistics (checkpoint or training catalog), not per-image percentiles."""
        return self.source != "percentile" and self.lo is not None

    def for_mode(self, normalize: str = "checkpoint") -> "Normalization":
        """``"checkpoint"``: this normalisation (training statistics when known); ``"image"``: an unfitted per-image
        2-98 % stretch (fit it with :meth:`fitted_for`). PredictError for another mode."""
        if normalize not in imagery.NORMALIZE_MODES:
            raise PredictError(f"normalize must be one of {', '.join(imagery.NORMALIZE_MODES)}, got {normalize!r}")
        return Normalization(p_lo=self.p_lo, p_hi=self.p_hi) if normalize == "image" else self

    def check(self, image: np.ndarray | str | os.PathLike, name: str | None = None,
              nodata: float | None = None) -> imagery.InputCheck | None:
        """``imagery.check_input`` of ``image`` (path or array) against these training statistics; None when they are
        per-image percentiles (nothing to compare with)."""
        if not self.from_training:
            return None
        return imagery.check_input(image, self.lo, self.hi, name=name, nodata=nodata)

    def fitted_for(self, sample: np.ndarray, nodata: float | None = None) -> "Normalization":
        """Per-image percentiles from a (decimated) sample of the image, when no training stats are known."""
        if self.source != "percentile":
            return self
        lo, hi = [], []
        for band in sample:
            v = band[np.isfinite(band)] if np.issubdtype(band.dtype, np.floating) else band.ravel()
            if nodata is not None:
                v = v[v != nodata]
            if v.size == 0:
                lo.append(0.0)
                hi.append(1.0)
                continue
            a, b = np.percentile(v, [self.p_lo, self.p_hi])
            lo.append(float(a))
            hi.append(float(b if b > a else a + 1.0))
        return Normalization(np.array(lo), np.array(hi), "percentile", self.p_lo, self.p_hi)

    @classmethod
    def from_stats(cls, stats: Any, source: str) -> "Normalization | None":
        """From anything with ``lo``/``hi`` (``imagery.BandStats``, a dict); None when it has none."""
        if isinstance(stats, dict):
            lo, hi = stats.get("lo"), stats.get("hi")
        else:
            lo, hi = getattr(stats, "lo", None), getattr(stats, "hi", None)
        if lo is None or hi is None:
            return None
        return cls(np.asarray(list(lo), np.float64), np.asarray(list(hi), np.float64), source)


def normalization_from_payload(payload: dict | None) -> Normalization:
    """Training band stats from a checkpoint payload (``stats``/``band_stats``/``norm``, top level or in ``config``)."""
    payload = payload or {}
    for place in (payload, payload.get("meta") or {}, payload.get("config") or {}):
        if not isinstance(place, dict):
            continue
        for key in ("stats", "band_stats", "norm", "normalization"):
            found = Normalization.from_stats(place.get(key), "checkpoint")
            if found is not None:
                return found
    return Normalization()


def training_band_stats(cfg: RunConfig) -> imagery.BandStats | None:
    """The band stats training used (``imagery.band_stats`` over the run's catalog, cached on disk), if that data
    folder is on this machine; else None."""
    try:
        data_root = str(getattr(cfg, "data_root", "") or "").strip()
        if data_root not in ("", "demo") and not Path(data_root).expanduser().is_dir():
            return None
        return imagery.band_stats(load_catalog(cfg.resolved_data_root()), product=cfg.product)
    except Exception as exc:  # noqa: BLE001 - fall back to per-image stretch
        log.info("training band stats unavailable (%s)", exc)
        return None
