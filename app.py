"""SpaceNet building workbench: ``streamlit run app.py``.

Opens on the embedded synthetic demo AOI; the sidebar picks a downloaded AOI or any folder instead.
"""

from __future__ import annotations

import streamlit as st

from bdcore.viz.leaflet import ensure_leaflet_assets
from appkit import dataset_picker  # (app.py's folder is on sys.path under `streamlit run`)

st.set_page_config(page_title="SpaceNet building workbench", page_icon=":material/location_city:", layout="wide")


@st.cache_resource
def _assets() -> str:
    return str(ensure_leaflet_assets())


try:
    _assets()
except FileNotFoundError as exc:
    st.warning(f"Maps will not render offline: {exc}")

pages = [
    st.Page("pages/explore.py", title="Explore", icon=":material/map:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/online_prediction:"),
]
nav = st.navigation(pages)
st.sidebar.title("SpaceNet building workbench")
dataset_picker()
nav.run()
