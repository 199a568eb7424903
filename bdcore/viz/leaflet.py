"""Leaflet for offline maps: the app serves leaflet.js/css from its ``static/leaflet/`` folder, copied here from the
installed ``django-js-lib-leaflet`` package (folium's CDN links would leave the streamlit-folium iframe blank
offline)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from bdcore.paths import PROJECT_ROOT

STATIC_DIR = PROJECT_ROOT / "static"
LEAFLET_JS_URL = "/app/static/leaflet/leaflet.js"
LEAFLET_CSS_URL = "/app/static/leaflet/leaflet.css"


def leaflet_source_dir() -> Path:
    """The ``static/js_lib_leaflet`` folder of the installed ``django-js-lib-leaflet`` package."""
    spec = importlib.util.find_spec("js_lib_leaflet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Leaflet assets not found: the package 'django-js-lib-leaflet' is not installed. "
            "Fix: pip install -r requirements.txt"
        )
    src = Path(list(spec.submodule_search_locations)[0]) / "static" / "js_lib_leaflet"
    if not (src / "leaflet.js").is_file():
        raise FileNotFoundError(f"{src / 'leaflet.js'} is missing; reinstall django-js-lib-leaflet")
    return src


def ensure_leaflet_assets(static_dir: str | Path | None = None) -> Path:
    """Copy leaflet.js, leaflet.css and images/ into ``<static_dir>/leaflet`` (idempotent). Returns that folder."""
    dest = Path(static_dir or STATIC_DIR) / "leaflet"
    src = leaflet_source_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("leaflet.js", "leaflet.css"):
        s, d = src / name, dest / name
        if not d.is_file() or d.stat().st_size != s.stat().st_size:
            tmp = d.with_name(f".{name}.tmp")
            shutil.copyfile(s, tmp)
            tmp.replace(d)
    (dest / "images").mkdir(exist_ok=True)
    for img in (src / "images").glob("*.png"):
        d = dest / "images" / img.name
        if not d.is_file() or d.stat().st_size != img.stat().st_size:
            shutil.copyfile(img, d)
    return dest
