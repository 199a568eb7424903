"""Validation during training: val loss, pixel IoU/precision/recall/F1, and SpaceNet building F1 on a few tiles."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bdcore.data import imagery, labels
from bdcore.data.dataset import SpaceNetSegmentation
from bdcore.engine.config import RunConfig
from bdcore.engine.device import DistInfo, all_reduce
from bdcore.engine.recipe import forward_padded, seg_loss
from bdcore.metrics.polygons import mask_to_polygons
from bdcore.metrics.scoring import match_buildings

log = logging.getLogger(__name__)


def truth_polygons(val_ds: Dataset, index: int, truth: np.ndarray) -> list:
    """Ground-truth building polygons of val item ``index`` in pixel coordinates.

    Whole tiles of a ``SpaceNetSegmentation`` (what ``build_datasets`` gives for validation): read from the tile's
    label file (exact; none for a tile without one). Crops, or any other dataset: traced from the item's mask
    ``truth`` (K,H,W; channel 1, if there, is the boundary band that separates touching buildings).
    """
    if isinstance(val_ds, SpaceNetSegmentation) and val_ds.crop_size is None:
        t = index // val_ds.samples_per_tile
        if val_ds.label_paths[t] is None:
            return []
        prof = imagery.read_profile(val_ds.image_paths[t])
        gdf = labels.read_buildings(val_ds.label_paths[t], crs=prof["crs"])
        return list(labels.pixel_polygons(gdf, prof["transform"]))
    return [p for p, _ in mask_to_polygons(truth[0], 0.5, min_area=0.0, outline="none",
                                           boundary=truth[1] if truth.shape[0] > 1 else None)]


def _building_counts(prob: np.ndarray, val_ds: Dataset, index: int, truth: np.ndarray, threshold: float) -> tuple:
    """(tp, fp, fn) of SpaceNet building matching (IoU ≥ 0.5) on one val item; ``prob`` is (K,H,W)."""
    props = mask_to_polygons(prob[0], threshold, boundary=prob[1] if prob.shape[0] > 1 else None)
    m = match_buildings(truth_polygons(val_ds, index, truth), [q for q, _ in props], [c for _, c in props])
    return m["tp"], m["fp"], m["fn"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, val_ds: Dataset, cfg: RunConfig, device: torch.device, dist_info: DistInfo,
             autocast: Callable[[], Any]) -> dict:
    """Val loss and pixel IoU/precision/recall/F1 summed over this rank's share of the val tiles (all-reduced),
    plus SpaceNet building F1 on the first ``cfg.building_f1_tiles`` tiles."""
    model.eval()
    mine = list(range(dist_info.rank, len(val_ds), dist_info.world))
    # sums: loss, items, tp, fp, fn, b_tp, b_fp, b_fn
    sums = torch.zeros(8, dtype=torch.float64)
    warned = False
    loader = DataLoader(val_ds, batch_size=1, sampler=mine, num_workers=min(cfg.workers, 2))
    for idx, item in zip(mine, loader):
        x = item["image"].to(device, non_blocking=True)
        y = item["mask"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = forward_padded(model, x)
        logits = logits.float()
        sums[0] += float(seg_loss(logits, y, cfg))
        sums[1] += 1
        prob = torch.sigmoid(logits)
        pred = prob[:, 0] > cfg.threshold
        truth = y[:, 0] > 0.5
        tp = int((pred & truth).sum())
        sums[2] += tp
        sums[3] += int(pred.sum()) - tp
        sums[4] += int(truth.sum()) - tp
        if idx < cfg.building_f1_tiles:
            try:
                b_tp, b_fp, b_fn = _building_counts(prob[0].cpu().numpy(), val_ds, idx, y[0].cpu().numpy(),
                                                    cfg.threshold)
                sums[5] += b_tp
                sums[6] += b_fp
                sums[7] += b_fn
            except Exception as exc:  # noqa: BLE001 - an optional metric must not end a training run
                if not warned:
                    log.warning("building F1 skipped: %s", exc)
                    warned = True
    if dist_info.enabled:
        sums = all_reduce(sums, device)
    model.train()
    return _val_record(sums.tolist(), cfg)


def _val_record(sums: list[float], cfg: RunConfig) -> dict:
    loss, items, tp, fp, fn, btp, bfp, bfn = sums
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out = {
        "val_loss": _ratio(loss, items),
        "val_iou": _ratio(tp, tp + fp + fn),
        "val_precision": precision,
        "val_recall": recall,
        "val_f1": _f1(precision, recall),
        "val_tiles": int(items),
    }
    if cfg.building_f1_tiles > 0:
        bp, br = _ratio(btp, btp + bfp), _ratio(btp, btp + bfn)
        out["val_building_f1"] = _f1(bp, br)
        out["val_building_precision"] = bp
        out["val_building_recall"] = br
    return out
