"""Review: a checkpoint's predictions on the val tiles, side by side with the truth, worst tiles first."""

from __future__ import annotations

import streamlit as st
from streamlit_folium import st_folium

from bdcore.data.catalog import load_catalog
from bdcore.data.imagery import read_image, read_profile
from bdcore.engine import runs
from bdcore.inference import evaluate
from bdcore.metrics.polygons import DEFAULT_OUTLINE, OUTLINES
from bdcore.viz import layers, maps, overlays
from appkit import USER_ERRORS, through_app_navigation

through_app_navigation()
st.title("Review")

try:
    infos = [i for i in runs.list_runs() if evaluate.available_checkpoints(i.path)]
except USER_ERRORS as exc:
    st.error(f"Could not list runs: {exc}")
    st.stop()
if not infos:
    st.info("No checkpoints yet: train a model on the **Train** page first (a run writes best.pt / last.pt).")
    st.stop()

c1, c2, c3, c4 = st.columns([3, 1, 2, 1])
run_id = c1.selectbox("Run", [i.run_id for i in infos], key="review_run")
info = next(i for i in infos if i.run_id == run_id)
which = c2.radio("Checkpoint", evaluate.available_checkpoints(info.path), horizontal=True, key="review_which")
threshold = c3.slider("Threshold", 0.05, 0.95, 0.5, 0.05, key="review_threshold")
outline = c4.selectbox("Outlines", OUTLINES, index=OUTLINES.index(DEFAULT_OUTLINE), key="review_outline",
                       help="how predicted buildings are outlined before they are matched with the truth")
if info.weights:  # what the encoder started from: pretrained or random init makes a large difference
    (st.warning if info.weights_source == "random" else st.caption)(f"Encoder weights of this run: {info.weights}")


def _export_onnx(run_dir: str, which: str) -> None:
    """Export ONNX, then a download of model.onnx + model.json as one zip (exported once per checkpoint: the
    session remembers it, and ``reuse`` keeps an export of the same checkpoint sha256 in <run>/export/<which>)."""
    made = st.session_state.setdefault("review_exports", {})
    key = (run_dir, which, evaluate.checkpoint_key(evaluate.checkpoint_path(run_dir, which)))
    if not st.button("Export ONNX", key="review_export", help="model.onnx + model.json, for onnxruntime "
                     "(python -m bdcore predict --model model.onnx)") and key not in made:
        return
    # torch + smp: 2-7 s to import (measured on 2 shared cores); only an export needs them here (the page's scores
    # may all come from cached predictions)
    from bdcore.inference import modelfile

    if key not in made:
        with st.spinner(f"Exporting {which}.pt to ONNX…"):
            made[key] = modelfile.export_run(run_dir, which, reuse=True)
    exported = made[key]
    st.download_button(f"Download {exported.onnx.name} + {exported.sidecar.name} (zip)",
                       lambda: modelfile.bundle_zip(exported), file_name=f"{run_id}-{which}-onnx.zip",
                       mime="application/zip", key="review_export_download")
    st.caption(f"Exported to {exported.onnx.parent} ({exported.meta['onnx_bytes'] / 2**20:.1f} MiB; onnxruntime "
               f"matches torch within {exported.meta['verified']['max_abs_diff']:.1e})")


try:
    _export_onnx(str(info.path), which)
except USER_ERRORS as exc:
    st.error(f"Could not export {run_id} ({which}) to ONNX: {exc}")


def _evaluate(run_dir: str, which: str, key: str, threshold: float, outline: str):
    """Scores per (checkpoint version, threshold, outline), kept in the session; probabilities are cached on disk."""

    memo = st.session_state.setdefault("review_scores", {})
    k = (run_dir, which, key, threshold, outline)
    if k not in memo:
        bar = st.progress(0.0, text="Predicting val tiles (once per checkpoint)…")
        memo[k] = evaluate.evaluate_checkpoint(
            run_dir, which, tiles="val", threshold=threshold, outline=outline,
            progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Predicting val tiles… {d}/{t}"))
        bar.empty()
    return memo[k]


try:
    ck_key = evaluate.checkpoint_key(evaluate.checkpoint_path(info.path, which))
    per_tile, summary = _evaluate(str(info.path), which, ck_key, float(threshold), outline)
except USER_ERRORS as exc:
    st.error(f"Could not evaluate {run_id} ({which}): {exc}")
    st.stop()
if per_tile.empty:
    st.warning("This run has no labelled val tiles to review.")
    st.stop()

m = st.columns(6)
m[0].metric("Val tiles", summary["n_tiles"])
m[1].metric("Pixel IoU", f"{summary['pixel_iou']:.3f}")
m[2].metric("SpaceNet F1", f"{summary['F1Score']:.3f}")
m[3].metric("Precision", f"{summary['Precision']:.3f}")
m[4].metric("Recall", f"{summary['Recall']:.3f}")
m[5].metric("TP · FP · FN", f"{summary['TruePos']}·{summary['FalsePos']}·{summary['FalseNeg']}")

table = per_tile.sort_values(["f1", "pixel_iou"]).reset_index(drop=True)[
    ["tile_id", "pixel_iou", "f1", "precision", "recall", "tp", "fp", "fn", "n_truth", "n_pred"]]
left, right = st.columns([3, 2])
with left:
    st.markdown("**Per-tile scores** (worst first; click a row to view the tile)")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="review_table",
                         height=260, column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                    for c in ("pixel_iou", "f1", "precision", "recall")})
rows = event.selection.rows if event is not None else []
tile_id = str(table.loc[rows[0], "tile_id"]) if rows else str(table.loc[0, "tile_id"])

try:
    catalog = load_catalog(evaluate.run_config(info.path).resolved_data_root())
    with right:
        st.markdown("**Val tiles coloured by SpaceNet F1**")
        scores = dict(zip(per_tile["tile_id"].astype(str), per_tile["f1"].astype(float)))
        st_folium(maps.tile_map(catalog.loc[list(scores)], color_by="value", values=scores),
                  key=f"review_map_{run_id}_{which}_{threshold}_{outline}", height=260, use_container_width=True,
                  returned_objects=[])
    # the same scoring as the table's row (evaluate.tile_score), drawn as scored: the picture shows the row's TP/FP/FN
    score, image_path = evaluate.review_tile(info.path, which, tile_id, float(threshold), catalog=catalog,
                                             outline=outline)
    views = overlays.review_images(read_image(image_path), score)
    buildings = evaluate.tile_buildings(score, image_path)  # the same match: status, IoU, confidence per building
    bounds = maps.bounds_4326(read_profile(image_path))
except USER_ERRORS as exc:
    st.error(f"Could not show tile {tile_id}: {exc}")
    st.stop()

r = table[table["tile_id"] == tile_id].iloc[0]
st.subheader(f"{tile_id} — pixel IoU {r['pixel_iou']:.3f}, SpaceNet F1 {r['f1']:.3f} "
             f"(TP {int(r['tp'])}, FP {int(r['fp'])}, FN {int(r['fn'])})")
cols = st.columns(4)
cols[0].image(views.image, caption="image", width="stretch")
cols[1].image(views.truth, caption="ground truth (yellow)", width="stretch")
cols[2].image(views.prediction, caption=f"prediction > {threshold:.2f} (cyan)", width="stretch")
d = views.drawn
cols[3].image(views.matches, caption=f"TP green · FP red · FN blue ({d['tp']} · {d['fp']} · {d['fn']})", width="stretch")
if bounds is not None:  # a tile without a CRS has no place on a map
    st.markdown("**On the map** (toggle the layers top right; click a building for its IoU, confidence and area)")
    st_folium(layers.review_map(views.image, bounds, buildings),
              key=f"review_tile_map_{run_id}_{which}_{threshold}_{outline}_{tile_id}", height=520,
              use_container_width=True, returned_objects=[])
