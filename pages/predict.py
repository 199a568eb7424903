"""Predict: run a checkpoint on an uploaded GeoTIFF or a catalog tile; map and download the buildings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import streamlit as st
from streamlit_folium import st_folium

from bdcore.atomic import atomic_write_bytes
from bdcore.data import imagery
from bdcore.data.products import PRODUCTS
from bdcore.metrics.polygons import DEFAULT_OUTLINE, OUTLINES
from bdcore.paths import cache_dir
from bdcore.viz import layers, maps
from appkit import USER_ERRORS, checkpoint_choices, current_root, get_catalog, through_app_navigation

through_app_navigation()
st.title("Predict")

choices = checkpoint_choices()
if not choices:
    st.info("No checkpoints yet: train a model on the **Train** page first (a run writes best.pt / last.pt).")
    st.stop()

c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
label = c1.selectbox("Checkpoint", list(choices), key="predict_ckpt")
threshold = c2.slider("Threshold", 0.05, 0.95, 0.5, 0.05, key="predict_threshold")
tta = c3.checkbox("Test-time augmentation", key="predict_tta", help="flips; ~4× slower")
device = c4.selectbox("Device", ["auto", "cpu", "cuda"], key="predict_device")
checkpoint = choices[label]
NORMALIZE_LABELS = {"checkpoint": "Training statistics (checkpoint)", "image": "Per-image 2–98 % stretch"}
normalize = st.radio(
    "Normalisation", list(NORMALIZE_LABELS), format_func=NORMALIZE_LABELS.get, horizontal=True, key="predict_normalize",
    help="How pixels are scaled for the model. Keep the training statistics unless the image is unlike the training "
         "data (e.g. an 8-bit export): then stretch each image by its own 2–98 % percentiles.",
)
outline = st.selectbox(
    "Outlines", OUTLINES, index=OUTLINES.index(DEFAULT_OUTLINE), key="predict_outline",
    help="none: exact pixel edges; simplify: Douglas-Peucker (0.5 px); orthogonal: right angles along each building's "
         f"dominant directions. Default {DEFAULT_OUTLINE}: the best SpaceNet F1 measured (docs/performance.md).",
)
APP_FIX = f'try Normalisation "{NORMALIZE_LABELS["image"]}"'

source = st.radio("Input", ["Upload a GeoTIFF", "Catalog tile"], horizontal=True, key="predict_source")
input_path: Path | None = None
if source == "Upload a GeoTIFF":
    up = st.file_uploader("GeoTIFF (same bands as the model was trained on)", type=["tif", "tiff"], key="predict_upload")
    if up is not None:
        data = up.getvalue()
        digest = hashlib.sha256(data).hexdigest()[:16]
        input_path = cache_dir() / "uploads" / f"{Path(up.name).stem[:60]}-{digest}.tif"
        if not input_path.exists():
            try:
                atomic_write_bytes(input_path, data)
            except USER_ERRORS as exc:  # e.g. disk full: nothing half-written is left behind
                st.error(f"Cannot store the upload {up.name}: {exc}")
                input_path = None
else:
    catalog = get_catalog(current_root())
    tid = st.selectbox("Tile", [str(t) for t in catalog.index], key="predict_tile")
    row = catalog.loc[tid]
    product = next((p for p in PRODUCTS if p in catalog.columns and row.get(p)), None)
    input_path = Path(row[product]) if product else None

# Set while a prediction runs and cleared when it ends; still set on the next run means that run was stopped mid-way:
# a click (Cancel, or any other widget) makes Streamlit stop the script at its next st call (the progress bar), and
# predict_geotiff removes its temporary files on the way out.
RUNNING = "predict_running"
if st.session_state.pop(RUNNING, False):
    st.info("Prediction cancelled: nothing was saved.")
# The app keeps imagery.MAX_PIXELS (the CLI's --max-pixels can raise it): say how to predict a bigger image anyway.
BUDGET_FIX = ("crop it (e.g. gdal_translate -srcwin) or predict it from the command line with "
              "bdcore predict --max-pixels {pixels}")

if input_path is not None and st.button("Run prediction", type="primary", key="predict_go"):
    # torch + segmentation_models_pytorch: 2.1-2.4 s to import (measured on 2 CPU cores); the page opens without them
    from bdcore.inference.predict import predict_geotiff

    out_dir = cache_dir() / "predictions" / hashlib.sha256(f"{checkpoint}|{input_path}|{normalize}|{outline}".encode()).hexdigest()[:16]
    st.session_state.pop("predict_result", None)
    st.session_state[RUNNING] = True
    cancel = st.empty()
    cancel.button("Cancel", key="predict_cancel", help="stop the prediction; nothing is saved")
    bar = st.progress(0.0, text="Predicting…")
    name = getattr(st.session_state.get("predict_upload"), "name", None) or input_path.name
    try:
        imagery.read_profile(input_path)  # a clear error for a file that is not a raster
        result = predict_geotiff(
            checkpoint, input_path, out_dir, tta=tta, threshold=float(threshold), device=device, normalize=normalize,
            outline=outline,
            progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Predicting… window {done}/{total}"),
        )
        bar.progress(1.0, text=f"Done in {result.get('seconds', 0):.1f} s")
        st.session_state["predict_result"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
        st.session_state["predict_result"]["input"] = str(input_path)
    except imagery.PixelBudgetError as exc:
        bar.empty()
        st.error(f"Cannot predict on {name}: {exc.message(fix=BUDGET_FIX)}")
    except USER_ERRORS as exc:
        bar.empty()
        st.error(f"Cannot predict on {name}: {exc}")
    cancel.empty()
    st.session_state.pop(RUNNING, None)

result = st.session_state.get("predict_result")
if result:
    check = result.get("input_check")
    if check is not None and not check.ok:
        st.warning(check.message(fix=APP_FIX))
    st.success(f"{result.get('n_buildings', 0)} buildings found in {result.get('image_id')} "
               f"({result.get('width')}×{result.get('height')} px, {result.get('windows')} window(s)).")
    try:
        gdf = gpd.read_file(result["geojson"])
        bounds = maps.bounds_4326(imagery.read_profile(result["mask"]))
        if bounds is None:  # no CRS: the polygons in pixel-like units, no image
            m = maps.polygons_map(gdf)
        else:  # the image as a decimated overview (longest side <= 2048 px, read once), never the full raster
            if result.get("input") and "overview" not in result:
                result["overview"] = imagery.display_overview(result["input"])
            m = layers.prediction_map(result.get("overview"), bounds, gdf, height=460)
        st_folium(m, key=f"predict_map_{result['geojson']}", height=460, use_container_width=True, returned_objects=[])
    except USER_ERRORS as exc:
        st.error(f"Cannot show the predicted polygons: {exc}")
    d = st.columns(3)
    for col, key, label, mime in ((d[0], "geojson", "Download GeoJSON", "application/geo+json"),
                                  (d[1], "mask", "Download mask GeoTIFF", "image/tiff"),
                                  (d[2], "csv", "Download SpaceNet CSV", "text/csv")):
        p = Path(result.get(key) or "")
        if p.is_file():
            col.download_button(label, p.read_bytes(), file_name=p.name, mime=mime, key=f"dl_{key}", on_click="ignore")
