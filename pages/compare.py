"""Compare: 2-8 runs side by side: their curves overlaid, best/last metrics and only the config fields that differ."""

from __future__ import annotations

import streamlit as st

from appkit import USER_ERRORS, through_app_navigation
from bdcore.engine import runs
from bdcore.engine.compare import MAX_RUNS, MIN_RUNS, compare_runs
from bdcore.viz.figures import COMPARE_X, compare_curves_fig

through_app_navigation()
st.title("Compare")

try:
    infos = runs.list_runs()
except USER_ERRORS as exc:
    st.error(f"Could not list runs: {exc}")
    st.stop()
if len(infos) < MIN_RUNS:
    st.info(f"Compare needs at least {MIN_RUNS} runs ({len(infos)} so far): start them on the **Train** page, "
            "e.g. the same model with two learning rates.")
    st.stop()

paths = {i.run_id: i.path for i in infos}  # newest first
if "compare_runs" in st.session_state:  # a run deleted since it was picked is dropped, not an error
    st.session_state["compare_runs"] = [r for r in st.session_state["compare_runs"] if r in paths]
c1, c2 = st.columns([4, 1])
picked = c1.multiselect("Runs", list(paths), default=list(paths)[:MIN_RUNS], max_selections=MAX_RUNS,
                        key="compare_runs", help=f"{MIN_RUNS} to {MAX_RUNS} runs; the two most recent at first")
x = c2.radio("x axis", list(COMPARE_X), format_func=COMPARE_X.get, horizontal=True, key="compare_x")
if len(picked) < MIN_RUNS:
    st.info(f"Pick at least {MIN_RUNS} runs to compare.")
    st.stop()

try:
    cmp = compare_runs([paths[r] for r in picked])
except USER_ERRORS as exc:
    st.error(f"Could not compare {', '.join(picked)}: {exc}")
    st.stop()

st.plotly_chart(compare_curves_fig(cmp.curves, x=x), key="compare_curves")
if cmp.differing:
    st.caption(f"Config fields that differ: **{', '.join(cmp.differing)}** (the other {len(cmp.same)} are the "
               "same in every run). Legends name each run's values.")
else:
    st.caption(f"These runs have the same config ({len(cmp.same)} fields): they differ only by chance.")
st.dataframe(cmp.display_table(), hide_index=True, key="compare_table")
st.download_button("Download CSV", cmp.to_csv(), file_name="compare.csv", mime="text/csv", key="compare_csv")
