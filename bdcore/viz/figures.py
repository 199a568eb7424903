"""Plotly figures of the dataset, a tile's bands, a run's training curves and several runs' curves overlaid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bdcore.data.labels import building_areas_m2  # noqa: F401  (re-exported: the Explore page's area figure)
from bdcore.viz.maps import UNLABELLED, building_counts

if TYPE_CHECKING:
    from bdcore.engine.compare import RunCurves

_MARGIN = dict(l=40, r=10, t=40, b=40)
BAND_COLORS = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def buildings_per_tile_fig(catalog: gpd.GeoDataFrame) -> go.Figure:
    all_counts = building_counts(catalog)
    counts = np.array([n for n in all_counts if n is not None], dtype=int)  # unlabelled tiles are not 0-building tiles
    n_unlabelled = len(all_counts) - len(counts)
    title = "Buildings per tile" + (f" (labelled tiles; {n_unlabelled} {UNLABELLED} left out)" if n_unlabelled else "")
    fig = go.Figure(go.Histogram(x=counts, name="tiles", marker_color="#d94801"))
    fig.update_layout(title=title, xaxis_title="buildings in tile", yaxis_title="tiles",
                      bargap=0.05, height=320, margin=_MARGIN)
    return fig


def sample_label_paths(catalog: gpd.GeoDataFrame, max_tiles: int = 150, seed: int = 0) -> list[str]:
    """The labels files the building-area figure reads: every labelled tile's, or a random ``max_tiles`` of them."""
    rows = catalog[catalog["labels"].notna()] if "labels" in catalog else catalog.iloc[:0]
    if len(rows) > max_tiles:
        rows = rows.sample(max_tiles, random_state=seed)
    return list(rows["labels"]) if len(rows) else []


def building_area_fig(areas_m2: np.ndarray) -> go.Figure:
    a = np.asarray(areas_m2, dtype=float)
    a = a[np.isfinite(a) & (a > 0)]
    fig = go.Figure(go.Histogram(x=np.log10(a) if len(a) else a, name="buildings", marker_color="#c2185b"))
    ticks = [1, 10, 100, 1000, 10000]
    fig.update_layout(title=f"Building footprint area (n={len(a)})", yaxis_title="buildings", height=320,
                      xaxis=dict(title="area (m², log scale)", tickvals=np.log10(ticks).tolist(),
                                 ticktext=[str(t) for t in ticks]),
                      margin=_MARGIN, bargap=0.05)
    return fig


def band_histogram_fig(arr: np.ndarray, band_names: Sequence[str] | None = None, nodata: float | None = None,
                       bins: int = 128) -> go.Figure:
    """One line per band: pixel-value histogram of a (C,H,W) array (native units)."""
    if arr.ndim != 3:
        raise ValueError(f"band_histogram_fig: expected (C,H,W), got {arr.shape}")
    fig = go.Figure()
    for i, band in enumerate(arr):
        v = band.ravel()
        if nodata is not None:
            v = v[v != nodata]
        if v.size == 0:
            continue
        counts, edges = np.histogram(v, bins=bins)
        name = band_names[i] if band_names and i < len(band_names) else f"band {i + 1}"
        fig.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=counts, mode="lines", name=name,
                                 line=dict(color=BAND_COLORS[i % len(BAND_COLORS)])))
    fig.update_layout(title="Band histograms (selected tile)", xaxis_title="pixel value", yaxis_title="pixels",
                      height=320, margin=_MARGIN)
    return fig


def training_curves_fig(metrics: Sequence[Mapping]) -> go.Figure:
    """Two panels over the global step: train loss (step records) + val loss (epoch records); val IoU / F1."""
    steps = [r for r in metrics if r.get("kind") == "step" and r.get("loss") is not None]
    epochs = [r for r in metrics if r.get("kind") == "epoch"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Validation IoU / F1"))
    fig.add_trace(go.Scatter(x=[r["step"] for r in steps], y=[r["loss"] for r in steps], mode="lines+markers",
                             name="train loss", marker=dict(size=4)), row=1, col=1)
    for key, name, col in (("val_loss", "val loss", 1), ("val_iou", "val IoU", 2), ("val_f1", "val F1", 2)):
        pts = [r for r in epochs if r.get(key) is not None]
        fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r[key] for r in pts], mode="lines+markers",
                                 name=name, text=[f"epoch {r.get('epoch')}" for r in pts]), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=340, margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


COMPARE_X = {"epoch": "epoch", "wall_s": "wall time (s)"}  # x axis choices of compare_curves_fig
RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def compare_curves_fig(curves: Sequence[RunCurves], x: str = "epoch") -> go.Figure:
    """Runs overlaid (``bdcore.engine.compare.RunCurves``): three panels, train loss, val IoU and val F1, one trace
    per run in each, named by the run's label (one legend entry per run; clicking it hides the run everywhere).
    ``x`` is ``"epoch"`` or ``"wall_s"`` (seconds since the run's start)."""
    if x not in COMPARE_X:
        raise ValueError(f"x must be one of {', '.join(COMPARE_X)}, got {x!r}")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Train loss", "Validation IoU", "Validation F1"))
    for i, run in enumerate(curves):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        panels = ((run.train, "loss", 1), (run.val, "val_iou", 2), (run.val, "val_f1", 3))
        for frame, key, col in panels:
            pts = frame[frame[key].notna()] if len(frame) else frame
            fig.add_trace(go.Scatter(
                x=pts[x].tolist() if len(pts) else [], y=pts[key].tolist() if len(pts) else [], mode="lines+markers",
                name=run.label, legendgroup=run.run_id, showlegend=col == 1, line={"color": color},
                marker={"size": 4 if col == 1 else 6}), row=1, col=col)
    fig.update_xaxes(title_text=COMPARE_X[x])
    for col in (2, 3):  # a little past 0 and 1, so that a curve at 0 (an untrained run) is not hidden by the axis
        fig.update_yaxes(range=[-0.03, 1.03], row=1, col=col)
    fig.update_layout(height=380, margin=_MARGIN, legend={"orientation": "h", "y": -0.25})
    return fig
