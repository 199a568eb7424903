"""Review: a checkpoint's predictions on the val tiles, side by side with the truth, worst tiles first."""

from __future__ import annotations

import streamlit as st
from streamlit_folium import st_folium

from bdcore import viz
from pages._shared import USER_ERRORS

st.title("Review")

from bdcore.inference import evaluate
from bdcore.engine import runs
from bdcore.engine.rundir import RunDir

try:
    infos = [i for i in runs.list_runs() if RunDir(i.path).checkpoints()]
except USER_ERRORS as exc:
    st.error(f"Could not list runs: {exc}")
    st.stop()
if not infos:
    st.info("No checkpoints yet: train a model on the **Train** page first (a run writes best.pt / last.pt).")
    st.stop()

c1, c2, c3 = st.columns([3, 1, 2])
run_id = c1.selectbox("Run", [i.run_id for i in infos], key="review_run")
info = next(i for i in infos if i.run_id == run_id)
available = list(RunDir(info.path).checkpoints())
which = c2.radio("Checkpoint", available, horizontal=True, key="review_which")
threshold = c3.slider("Threshold", 0.05, 0.95, 0.5, 0.05, key="review_threshold")
if info.weights:  # what the encoder started from: pretrained or random init makes a large difference
    (st.warning if info.weights_source == "random" else st.caption)(f"Encoder weights of this run: {info.weights}")


def _evaluate(run_dir: str, which: str, key: str, threshold: float):
    """Scores per (checkpoint version, threshold), kept in the session; probabilities are cached on disk."""
    memo = st.session_state.setdefault("review_scores", {})
    k = (run_dir, which, key, threshold)
    if k not in memo:
        bar = st.progress(0.0, text="Predicting val tiles (once per checkpoint)…")
        memo[k] = evaluate.evaluate_checkpoint(
            run_dir, which, tiles="val", threshold=threshold,
            progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Predicting val tiles… {d}/{t}"))
        bar.empty()
    return memo[k]


try:
    ck_key = evaluate.checkpoint_key(evaluate.checkpoint_path(info.path, which))
    per_tile, summary = _evaluate(str(info.path), which, ck_key, float(threshold))
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
    cfg = evaluate.run_config(info.path)
    from bdcore.data.catalog import load_catalog

    catalog = load_catalog(cfg.resolved_data_root())
    with right:
        st.markdown("**Val tiles coloured by SpaceNet F1**")
        scores = dict(zip(per_tile["tile_id"].astype(str), per_tile["f1"].astype(float)))
        st_folium(viz.tile_map(catalog.loc[list(scores)], color_by="value", values=scores),
                  key=f"review_map_{run_id}_{which}_{threshold}", height=260, use_container_width=True,
                  returned_objects=[])
    row = catalog.loc[tile_id]
    prob = evaluate.load_prediction(info.path, which, tile_id)
    views = viz.review_images(prob, row[cfg.product], row["labels"] if isinstance(row["labels"], str) else None,
                              threshold=float(threshold))
except USER_ERRORS as exc:
    st.error(f"Could not show tile {tile_id}: {exc}")
    st.stop()

r = table[table["tile_id"] == tile_id].iloc[0]
st.subheader(f"{tile_id} — pixel IoU {r['pixel_iou']:.3f}, SpaceNet F1 {r['f1']:.3f} "
             f"(TP {int(r['tp'])}, FP {int(r['fp'])}, FN {int(r['fn'])})")
cols = st.columns(4)
cols[0].image(views["image"], caption="image", width="stretch")
cols[1].image(views["truth"], caption="ground truth (yellow)", width="stretch")
cols[2].image(views["prediction"], caption=f"prediction > {threshold:.2f} (cyan)", width="stretch")
cols[3].image(views["matches"], caption="TP green · FP red · FN blue", width="stretch")
