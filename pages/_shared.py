"""Streamlit glue shared by the pages: the dataset picker, the cached catalog, readable errors.

Only UI plumbing lives here; everything computed comes from bdcore.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from bdcore.atomic import atomic_write_json
from bdcore.paths import cache_dir

DEMO = "demo"
STATE_FILE = "app_state.json"
USER_ERRORS = (ValueError, OSError)  # domain errors, and disk full / permissions / missing files


def _state_path() -> Path:
    return cache_dir() / STATE_FILE


def load_app_state() -> dict:
    try:
        data = json.loads(_state_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_app_state(**updates) -> None:
    state = load_app_state()
    state.update(updates)
    try:
        atomic_write_json(_state_path(), state)
    except OSError:
        pass  # remembering the choice is a convenience, never an error


def downloaded_aois() -> list[str]:
    """AOI folders fetched by ``bdcore.data.download`` (default destination) that hold a catalog-able layout."""
    found = []
    for base in (cache_dir() / "spacenet", cache_dir() / "downloads", cache_dir() / "data"):
        if base.is_dir():
            found += [str(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return found


def current_root() -> str:
    """The dataset the user picked: ``"demo"`` or a folder path (session first, then the remembered choice)."""
    root = st.session_state.get("data_root")
    if not root:
        root = load_app_state().get("data_root") or DEMO
        st.session_state["data_root"] = root
    return root


def set_root(root: str) -> None:
    root = root.strip() or DEMO
    st.session_state["data_root"] = root
    state = load_app_state()
    recent = [r for r in state.get("recent", []) if r != root and r != DEMO]
    if root != DEMO:
        recent.insert(0, root)
    save_app_state(data_root=root, recent=recent[:8])


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
        options = [DEMO] + downloaded_aois() + list(load_app_state().get("recent", []))
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


def get_catalog(root: str | None = None):
    """The catalog of the picked dataset, or an st.error and stop."""
    root = root or current_root()
    try:
        return _catalog(root, st.session_state.get("catalog_token", 0))
    except USER_ERRORS as exc:
        st.error(f"Could not load the dataset {root_label(root)}: {exc}")
        st.stop()


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
