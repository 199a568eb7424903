"""Validation during training: val loss, pixel IoU/precision/recall/F1, and SpaceNet building F1 on a few tiles."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bdcore.data import imagery, labels
from bdcore.data.dataset import SpaceNetSegmentation, loader_workers, worker_init
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


EVAL_MAX_BATCH = 32
FULL_TILE_SIDE = 672  # a 650 px SpaceNet tile padded to the encoder stride: the budget's unit when crop_size is None


def eval_chunk(cfg: RunConfig, h: int, w: int) -> int:
    """Items of ``h`` x ``w`` per forward pass: the training batch's pixels, doubled (no gradients are kept), at
    least 1, at most 32."""
    side = cfg.crop_size or FULL_TILE_SIDE
    return max(1, min(EVAL_MAX_BATCH, 2 * cfg.batch_size * side * side // max(1, h * w)))


def _as_list(items: list) -> list:
    return items


def _same_shape_runs(items: list[dict]) -> list[tuple[int, int]]:
    """(start, stop) of the runs of consecutive items whose image shapes are equal (stacked into one forward)."""
    runs, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i]["image"].shape != items[start]["image"].shape:
            runs.append((start, i))
            start = i
    return runs


@torch.no_grad()
def evaluate(model: nn.Module, val_ds: Dataset, cfg: RunConfig, device: torch.device, dist_info: DistInfo,
             autocast: Callable[[], Any]) -> dict:
    """Val loss and pixel IoU/precision/recall/F1 summed over this rank's share of the val tiles (all-reduced),
    plus SpaceNet building F1 on the first ``cfg.building_f1_tiles`` tiles.

    Batched: same-shape tiles go through the model together (:func:`eval_chunk` at a time); the loss and the
    counts are still per tile, so the figures equal a batch-1 evaluation's."""
    model.eval()
    mine = list(range(dist_info.rank, len(val_ds), dist_info.world))
    # sums: loss, items, tp, fp, fn, b_tp, b_fp, b_fn
    sums = torch.zeros(8, dtype=torch.float64)
    warned = [False]
    workers = min(loader_workers(cfg.workers, device.type), 4)
    loader = DataLoader(val_ds, batch_size=max(1, cfg.batch_size), sampler=mine, num_workers=workers,
                        collate_fn=_as_list, worker_init_fn=worker_init if workers > 0 else None)
    pos = 0
    for items in loader:
        for start, stop in _same_shape_runs(items):
            h, w = items[start]["image"].shape[-2:]
            step = eval_chunk(cfg, h, w)
            for a in range(start, stop, step):
                group = items[a : min(a + step, stop)]
                _eval_group(model, group, mine[pos + a : pos + a + len(group)], val_ds, cfg, device, autocast,
                            sums, warned)
        pos += len(items)
    if dist_info.enabled:
        sums = all_reduce(sums, device)
    model.train()
    return _val_record(sums.tolist(), cfg)


def _eval_group(model: nn.Module, group: list[dict], indices: list[int], val_ds: Dataset, cfg: RunConfig,
                device: torch.device, autocast: Callable[[], Any], sums: torch.Tensor, warned: list[bool]) -> None:
    """One forward pass over same-shape val items; adds each item's loss and counts to ``sums``."""
    x = torch.stack([it["image"] for it in group]).to(device, non_blocking=True)
    y = torch.stack([it["mask"] for it in group]).to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast():
        logits = forward_padded(model, x)
    logits = logits.float()
    prob = torch.sigmoid(logits)
    pred = prob[:, 0] > cfg.threshold
    truth = y[:, 0] > 0.5
    tp = (pred & truth).sum(dim=(1, 2))
    for j, idx in enumerate(indices):
        sums[0] += float(seg_loss(logits[j : j + 1], y[j : j + 1], cfg))
        sums[1] += 1
        t = int(tp[j])
        sums[2] += t
        sums[3] += int(pred[j].sum()) - t
        sums[4] += int(truth[j].sum()) - t
        if idx < cfg.building_f1_tiles:
            try:
                b_tp, b_fp, b_fn = _building_counts(prob[j].cpu().numpy(), val_ds, idx, y[j].cpu().numpy(),
                                                    cfg.threshold)
                sums[5] += b_tp
                sums[6] += b_fp
                sums[7] += b_fn
            except Exception as exc:  # noqa: BLE001 - an optional metric must not end a training run
                if not warned[0]:
                    log.warning("building F1 skipped: %s", exc)
                    warned[0] = True


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
