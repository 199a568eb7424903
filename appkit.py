"""Streamlit glue shared by app.py and the pages: the dataset picker, the cached catalog, readable errors, and the
guard that sends every URL through app.py's ``st.navigation``.

Only UI plumbing lives here; everything computed comes from bdcore. It sits beside app.py, not in pages/, so that
Streamlit never offers it as a page.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from bdcore.paths import cache_dir

DEMO = "demo"
USER_ERRORS = (ValueError, OSError)  # domain errors, and disk full / permissions / missing files
URL_PARAM = "data"  # the picked dataset, in the page URL: a reload or bookmark in this browser keeps it


def downloaded_aois() -> list[str]:
    """AOI folders fetched by ``bdcore.data.download`` (default destination) that hold a catalog-able layout."""
    found = []
    for base in (cache_dir() / "spacenet", cache_dir() / "downloads", cache_dir() / "data"):
        if base.is_dir():
            found += [str(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return found


def current_root() -> str:
    """The dataset this browser session picked: ``"demo"`` or a folder path.

    The choice belongs to the session (one visitor's folder never becomes another's default); it is mirrored in
    the page URL (``?data=…``) so that a reload or a bookmark in the same browser keeps it."""
    root = st.session_state.get("data_root")
    if not root:
        root = st.query_params.get(URL_PARAM) or DEMO
        st.session_state["data_root"] = root
    _show_in_url(root)
    return root


def _show_in_url(root: str) -> None:
    if root == DEMO:
        st.query_params.pop(URL_PARAM, None)
    elif st.query_params.get(URL_PARAM) != root:
        st.query_params[URL_PARAM] = root


def set_root(root: str) -> None:
    root = root.strip() or DEMO
    st.session_state["data_root"] = root
    recent = [r for r in st.session_state.get("recent_roots", []) if r not in (root, DEMO)]
    st.session_state["recent_roots"] = ([root] if root != DEMO else []) + recent[:7]
    _show_in_url(root)


def resolve_root(root: str) -> Path:
    if root in ("", DEMO):
        from bdcore.data.demo import demo_root

        return Path(demo_root())
    p = Path(os.path.expanduser(root))
    if not p.is_dir():
        raise FileNotFoundError(f"dataset folder {p} does not exist. Fix: pick another folder in the sidebar.")
    return p


def root_label(root: str) -> str:
    return "Demo AOI (synthetic)" if root in ("", DEMO) else root


def dataset_picker() -> None:
    """Sidebar: the demo, a downloaded AOI, a recent folder, or any folder path. Shared by all pages."""
    with st.sidebar:
        st.markdown("### Dataset")
        choice_box = st.container()
        with st.form("dataset_folder", border=False):
            path = st.text_input("Folder path", placeholder="/data/AOI_3_Paris_Train",
                                 help="A SpaceNet 2 AOI folder (original or bucket layout)")
            if st.form_submit_button("Use folder") and path.strip():
                p = Path(os.path.expanduser(path.strip()))
                if not p.is_dir():
                    st.error(f"{p} is not a folder. Fix: give the path of a downloaded SpaceNet AOI.")
                else:
                    set_root(str(p))
        # drawn after the form (so a submitted folder shows at once), displayed above it
        current = current_root()
        options = [DEMO] + downloaded_aois() + list(st.session_state.get("recent_roots", []))
        options = list(dict.fromkeys(options))
        if current not in options:
            options.append(current)
        st.session_state["dataset_choice"] = current  # follow choices made elsewhere (the form, another tab)
        choice_box.selectbox("Dataset", options, format_func=root_label, label_visibility="collapsed",
                             key="dataset_choice", on_change=lambda: set_root(st.session_state["dataset_choice"]))


@st.cache_resource(show_spinner="Reading the tile catalog…", max_entries=4)
def _catalog(root: str, _token: int):
    from bdcore.data.catalog import load_catalog

    return load_catalog(resolve_root(root))


def _write_demo_with_progress() -> None:
    """On a fresh machine the demo AOI is written on first use (a few seconds): show a progress bar meanwhile.
    Outside the cached catalog function, so the bar is not replayed on later runs."""
    from bdcore.data.demo import default_demo_path, demo_root, is_complete

    if is_complete(default_demo_path()):
        return
    bar = st.progress(0.0, text="First start: writing the synthetic demo AOI…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"First start: writing the synthetic demo AOI ({done}/{total})…")

    try:
        demo_root(progress=progress)
    finally:
        bar.empty()


def get_catalog(root: str | None = None):
    """The catalog of the picked dataset, or an st.error and stop."""
    root = root or current_root()
    if root in ("", DEMO):
        _write_demo_with_progress()
    try:
        cat = _catalog(root, st.session_state.get("catalog_token", 0))
    except USER_ERRORS as exc:
        st.error(f"Could not load the dataset {root_label(root)}: {exc}")
        st.stop()
    if cat.attrs.get("scan"):  # the folder walk was bounded: say what it left out
        st.warning(f"Dataset {root_label(root)} only partly scanned: {cat.attrs['scan']}")
    return cat


def show_error(exc: BaseException, what: str) -> None:
    st.error(f"{what}: {exc}")


def checkpoint_choices() -> dict[str, Path]:
    """``"<run> · best.pt"`` → path, for every run that has a checkpoint (newest run first)."""
    from bdcore.engine import runs
    from bdcore.inference.evaluate import checkpoints_of

    try:
        return checkpoints_of(i.path for i in runs.list_runs())
    except USER_ERRORS as exc:
        st.error(f"Could not list runs: {exc}")
        return {}


def rerun_fragment() -> None:
    """Rerun only the current fragment when inside a fragment rerun; else the whole page."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


def through_app_navigation() -> None:
    """Call first in every page. A deep link (``/review``) opened before anyone opened ``/`` after a server start
    runs Streamlit's legacy ``pages/``-folder mode (Streamlit 1.67 sets ``PagesManager.uses_pages_directory`` when a
    ``pages/`` folder sits beside the entry script, until ``st.navigation`` first runs): the page would run without
    app.py's navigation and sidebar. Leave that mode and rerun: app.py then runs and its ``st.navigation`` resolves
    the same URL to this page."""
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
