"""Map layers for Review and Predict: the tile's stretched image as an offline PNG overlay (no tile server), under
toggleable building layers coloured as scored (TP green / FP red / FN blue, the colours of ``overlays``), with a
popup per building (IoU, confidence, area).

Drawing only: the image comes in as a display RGB array (``imagery.display_overview``: decimated, never the full
raster) and the buildings as a GeoDataFrame whose status/IoU/confidence come from the scorer
(``evaluate.tile_buildings``); nothing here reads files or matches buildings."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import cv2
import folium
import geopandas as gpd
import numpy as np
from folium.raster_layers import ImageOverlay

from bdcore.data.labels import building_areas_m2
from bdcore.viz.maps import base_map
from bdcore.viz.overlays import FN_RGB, FP_RGB, PRED_RGB, TP_RGB


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


STATUS_COLORS = {"TP": _hex(TP_RGB), "FP": _hex(FP_RGB), "FN": _hex(FN_RGB), "not scored": "#9e9e9e"}
PREDICTION_COLOR = _hex(PRED_RGB)  # Predict: no truth, so no status
POPUP_FIELDS = ["status", "IoU", "confidence", "area"]


def png_data_url(rgb: np.ndarray) -> str:
    """A uint8 (H,W,3) image as a ``data:image/png;base64,...`` URL (the map page carries it: no server needed)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_data_url: expected an (H,W,3) image, got shape {rgb.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8))
    if not ok:
        raise ValueError("png_data_url: PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def image_overlay(rgb: np.ndarray, bounds: Sequence[float], name: str = "image", opacity: float = 1.0,
                  max_px: int = 2048) -> ImageOverlay:
    """The display image as a Leaflet ImageOverlay stretched over ``bounds`` = (minx, miny, maxx, maxy) in lon/lat.

    Leaflet stretches the picture linearly between the corners in Web Mercator: exact for SpaceNet's EPSG:4326
    tiles up to the (sub-pixel, over a tile) lat/Mercator difference, and close enough for any small area; a large
    projected raster is shown in its 4326 bounding box, slightly distorted. Pass a decimated image
    (``imagery.display_overview``): the PNG travels inside the page; an array longer than ``max_px`` is strided
    down to it (e.g. the Review page's full tile, when tiles are large)."""
    step = -(-max(rgb.shape[:2]) // max_px)
    rgb = rgb[::step, ::step] if step > 1 else rgb
    minx, miny, maxx, maxy = (float(v) for v in bounds)
    return ImageOverlay(png_data_url(rgb), bounds=[[miny, minx], [maxy, maxx]], name=name, opacity=opacity,
                        interactive=False, zindex=1)


def _fmt(v: float, digits: int) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def popup_table(buildings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``buildings`` (EPSG:4326) with the popup's text columns: status, IoU (matched pair, else "—"), confidence
    and area ("123 m²"; from ``area``/``area_unit`` when given, else m² from the geometry, px² without a CRS)."""
    out = gpd.GeoDataFrame(geometry=buildings.geometry.values, crs=buildings.crs)
    n = len(buildings)
    out["status"] = buildings["status"].astype(str).values if "status" in buildings else ["predicted"] * n
    out["IoU"] = [_fmt(v, 3) for v in (buildings["iou"] if "iou" in buildings else [None] * n)]
    out["confidence"] = [_fmt(v, 2) for v in (buildings["confidence"] if "confidence" in buildings else [None] * n)]
    if "area" in buildings:
        area, unit = buildings["area"].to_numpy(float), buildings.get("area_unit", "m²")
        units = list(unit) if not isinstance(unit, str) else [unit] * n
    elif buildings.crs is not None:
        area, units = building_areas_m2(buildings), ["m²"] * n
    else:
        area, units = buildings.area.to_numpy(float), ["px²"] * n
    out["area"] = [f"{_fmt(a, 0)} {u}" for a, u in zip(area, units)]
    return out


def buildings_layer(buildings: gpd.GeoDataFrame, name: str, dashed: bool = False,
                    color: str | None = None) -> folium.FeatureGroup:
    """One toggleable layer of buildings, each coloured by its ``status`` (``STATUS_COLORS``) or ``color``, with a
    popup (status, IoU, confidence, area) on click. ``dashed``: outlines only, dashed (the truth under the
    predictions)."""
    fg = folium.FeatureGroup(name=name)
    if len(buildings) == 0:
        return fg
    table = popup_table(buildings)

    def style(f: dict) -> dict:
        c = color or STATUS_COLORS.get(f["properties"]["status"], PREDICTION_COLOR)
        return {"color": c, "weight": 2, "fillColor": c, "fillOpacity": 0.08 if dashed else 0.3,
                "dashArray": "5 4" if dashed else None}

    folium.GeoJson(table.to_json(), style_function=style,
                   highlight_function=lambda f: {"weight": 4},
                   popup=folium.GeoJsonPopup(fields=POPUP_FIELDS, aliases=POPUP_FIELDS)).add_to(fg)
    return fg


def layered_map(bounds: Sequence[float], image: np.ndarray | None = None,
                layers: Sequence[folium.FeatureGroup] = (), height: int | None = None) -> folium.Map:
    """An offline map of ``bounds``: the image overlay (bottom) and the building ``layers`` in order, with a layer
    control to toggle each."""
    m = base_map(bounds, height=height)
    if image is not None:
        image_overlay(image, bounds).add_to(m)
    for layer in layers:
        layer.add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    return m


def review_map(image: np.ndarray | None, bounds: Sequence[float], buildings: gpd.GeoDataFrame,
               height: int | None = None) -> folium.Map:
    """Review: the image, the ground truth (dashed: matched green, missed blue) and the predictions (matched green,
    unmatched red); ``buildings`` as ``evaluate.tile_buildings`` makes them (``layer`` = "truth" / "prediction")."""
    truth = buildings[buildings["layer"] == "truth"]
    pred = buildings[buildings["layer"] == "prediction"]
    return layered_map(bounds, image, [buildings_layer(truth, "ground truth", dashed=True),
                                       buildings_layer(pred, "predictions")], height)


def prediction_map(image: np.ndarray | None, bounds: Sequence[float], predictions: gpd.GeoDataFrame,
                   height: int | None = None) -> folium.Map:
    """Predict: the image overview under the predicted buildings (cyan; no truth, so no TP/FP/FN)."""
    return layered_map(bounds, image, [buildings_layer(predictions, "predictions", color=PREDICTION_COLOR)], height)
