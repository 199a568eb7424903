"""Explore: every tile on a map, the selected tile's image with its buildings, dataset statistics."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import streamlit as st
from streamlit_folium import st_folium

from bdcore.data import imagery, labels
from bdcore.data.catalog import describe_label_problems, product_path
from bdcore.data.catalog import summary as catalog_summary
from bdcore.data.products import DEFAULT_PRODUCT, PRODUCTS
from bdcore.data.split import run_split
from bdcore.viz import figures, maps, overlays
from appkit import USER_ERRORS, current_root, get_catalog, rerun_fragment, root_label, through_app_navigation

through_app_navigation()
st.title("Explore")
root = current_root()
catalog = get_catalog(root)
summary = catalog_summary(catalog)
st.caption(f"{root_label(root)} — {summary['headline']}")
if summary["unlabelled"]:
    st.info(f"{summary['unlabelled']:,} of {summary['tiles']:,} tiles are **{maps.UNLABELLED}** (no labels file): "
            "their building count is unknown, not zero. They can be viewed and predicted on; training and "
            "evaluation use only labelled tiles.")

c1, c2, c3, c4, c5, c6 = st.columns([1.3, 0.8, 0.8, 0.8, 0.8, 1])
color_by = c1.radio("Colour tiles by", ["building count", "train/val split"], horizontal=True, key="explore_color")
no_split = color_by != "train/val split"
# The same settings as the Train form: the colours are the split a run with them trains and is evaluated on.
split_products = [p for p in PRODUCTS if p in catalog.columns and catalog[p].notna().any()] or [DEFAULT_PRODUCT]
split_product = c2.selectbox("Product", split_products, disabled=no_split, key="explore_split_product")
val_fraction = c3.number_input("Val fraction", 0.05, 0.9, 0.2, 0.05, disabled=no_split, key="explore_val")
method = c4.selectbox("Split method", ["random", "blocked"], disabled=no_split, key="explore_split")
seed = c5.number_input("Seed", 0, 2**31 - 1, 0, disabled=no_split, key="explore_seed")
osm = c6.toggle("OpenStreetMap base map", value=False, help="Needs the internet; off by default")
every = c6.toggle("Show every building", value=False, key="explore_every",
                  help="All buildings of the AOI over the tiles: outlines, or a density grid above "
                       f"{maps.MAX_DRAWN_BUILDINGS:,} buildings")
buildings_layer = None
if every:
    try:
        with st.spinner("Reading every building (once per labels version)…"):
            aoi = labels.aoi_buildings(catalog)
        buildings_layer = maps.buildings_layer(aoi)
        (st.info if buildings_layer.mode == "density" else st.caption)(buildings_layer.message)
        if aoi.skipped:
            st.warning("Left out of the buildings layer: " + describe_label_problems(aoi.skipped))
    except USER_ERRORS as exc:
        st.error(f"Could not read the buildings: {exc}")


@st.cache_data(show_spinner=False, max_entries=8)
def _splits(root: str, n: int, product: str, val_fraction: float, method: str, seed: int) -> dict[str, str]:
    split = run_split(catalog, product, val_fraction, seed, method)  # unlabelled tiles show as "unlabelled"
    return {t: split.role(t) for t in (*split.train, *split.val, *split.buffer)}


splits = None
if color_by == "train/val split" and not summary["labelled"]:
    st.info(f"No labelled tile to split: every tile is {maps.UNLABELLED}.")
elif color_by == "train/val split":
    try:
        splits = _splits(root, len(catalog), split_product, float(val_fraction), method, int(seed))
    except USER_ERRORS as exc:
        st.error(f"Could not split the tiles: {exc}")
    else:
        roles = {r: sorted(t for t, v in splits.items() if v == r) for r in ("train", "val", "buffer")}
        with st.expander(f"Split: {len(roles['train'])} train, {len(roles['val'])} val, {len(roles['buffer'])} "
                         f"buffer tiles — what a run with these settings trains and is evaluated on"):
            st.code("val: " + ", ".join(roles["val"]), language=None, wrap_lines=True)

tile_ids = [str(t) for t in catalog.index]
if st.session_state.get("explore_tile") not in tile_ids:
    st.session_state["explore_tile"] = tile_ids[0]


def tile_preview(row, product: str, bands, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, gpd.GeoDataFrame]:
    """(display RGB with the building outlines, raw CHW array, buildings in EPSG:4326) of a catalog row."""
    path = product_path(row, product)
    arr, prof = imagery.read_image(path), imagery.read_profile(path)
    lab = row.get("labels")
    if not isinstance(lab, str):  # unlabelled tile
        return overlays.tile_preview(arr, (), bands, lo, hi, name=str(path)), arr, gpd.GeoDataFrame(geometry=[], crs=4326)
    bldg = labels.read_buildings(lab, crs=prof["crs"] or "EPSG:4326")
    outlines = labels.pixel_polygons(bldg, prof["transform"]) if len(bldg) else []
    rgb = overlays.tile_preview(arr, outlines, bands, lo, hi, name=str(path))
    return rgb, arr, bldg.to_crs(4326) if bldg.crs is not None else bldg


@st.fragment
def tile_panel() -> None:
    """Map + selected tile: a click reruns only this fragment, and the map itself is not rebuilt."""
    selected = st.session_state["explore_tile"]
    row = catalog.loc[selected]
    product_opts = [p for p in PRODUCTS if p in catalog.columns and row.get(p)]
    st.session_state.setdefault("explore_product", product_opts[0] if product_opts else DEFAULT_PRODUCT)
    if st.session_state["explore_product"] not in product_opts and product_opts:
        st.session_state["explore_product"] = product_opts[0]

    preview = err = None
    try:
        bands = st.session_state.get("explore_bands", (0, 1, 2))
        lo, hi = st.session_state.get("explore_stretch", (2.0, 98.0))
        preview = tile_preview(row, st.session_state["explore_product"], bands, lo, hi)
    except USER_ERRORS as exc:
        err = exc
    buildings = preview[2] if preview else None

    m = maps.tile_map(catalog, color_by="split" if splits is not None else "n_buildings", splits=splits, osm=osm)
    if buildings_layer is not None:
        buildings_layer.add_to(m)
    out = st_folium(
        m,
        key=f"explore_map_{root}_{color_by}_{osm}_{buildings_layer is not None}",
        height=460,
        use_container_width=True,
        feature_group_to_add=maps.selection_layer(row.geometry, buildings),
        returned_objects=["last_object_clicked", "last_object_clicked_tooltip"],
    )
    click = (out or {}).get("last_object_clicked")
    if click and click != st.session_state.get("explore_last_click"):
        st.session_state["explore_last_click"] = click
        tid = maps.tile_at(catalog, click.get("lat"), click.get("lng")) or maps.tile_from_tooltip(
            (out or {}).get("last_object_clicked_tooltip"), tile_ids)
        if tid and tid != selected:
            st.session_state["explore_tile"] = tid
            rerun_fragment()

    left, right = st.columns([3, 2])
    with right:
        st.selectbox("Tile", tile_ids, key="explore_tile")
        st.selectbox("Product", product_opts or [DEFAULT_PRODUCT], key="explore_product")
        n_bands = int(preview[1].shape[0]) if preview else int(row.get("bands") or 3)
        if n_bands > 3:
            bc = st.columns(3)
            picked = [bc[i].number_input(ch, 1, n_bands, d + 1, key=f"explore_band_{ch}") - 1
                      for i, (ch, d) in enumerate(zip("RGB", (4, 2, 1) if n_bands >= 5 else (0, 1, 2)))]
            st.session_state["explore_bands"] = tuple(picked)
        else:
            st.session_state["explore_bands"] = (0, 1, 2)
        st.slider("Stretch percentiles", 0.0, 100.0, (2.0, 98.0), 0.5, key="explore_stretch")
        st.markdown(f"**{selected}** · {row.get('image_id', '')}")
        count = maps.building_counts(catalog.loc[[selected]])[0]
        count_md = f"**{maps.UNLABELLED}** (no labels file)" if count is None else f"**{count} buildings**"
        st.markdown(f"Size: {int(row.get('width') or 0)} × {int(row.get('height') or 0)} px, "
                    f"{n_bands} band(s) · {count_md}")
        paths = {p: row.get(p) for p in (*PRODUCTS, "labels") if p in catalog.columns and row.get(p)}
        st.code("\n".join(f"{k}: {v}" for k, v in paths.items()) or "no files", language=None)
    with left:
        if err is not None:
            st.error(f"Cannot show tile {selected}: {err}")
        else:
            what = "no labels (unlabelled tile)" if count is None else "building outlines in yellow"
            st.image(preview[0], caption=f"{selected}: stretched image, {what}", width="stretch")
    if preview is not None:
        st.plotly_chart(figures.band_histogram_fig(preview[1]), key="explore_hist")


tile_panel()

st.subheader("Dataset statistics")
s1, s2 = st.columns(2)
s1.plotly_chart(figures.buildings_per_tile_fig(catalog))


@st.cache_data(show_spinner="Measuring building areas…", max_entries=4)
def _areas(root: str, n: int) -> tuple[np.ndarray, int]:
    """Building areas (m²) over a sample of the labelled tiles, and how many tiles were read."""
    paths = figures.sample_label_paths(catalog)
    parts = [figures.building_areas_m2(labels.read_buildings(p)) for p in paths]
    return (np.concatenate(parts) if parts else np.zeros(0)), len(paths)


try:
    areas, n_read = _areas(root, len(catalog))
    fig = figures.building_area_fig(areas)
    if n_read < int(catalog["labels"].notna().sum()):
        fig.update_layout(title=f"Building footprint area (sample of {n_read} tiles, n={len(areas)})")
    s2.plotly_chart(fig)
except USER_ERRORS as exc:
    s2.error(f"Could not read building labels: {exc}")
