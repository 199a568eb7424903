"""Vector outputs of a prediction: buildings as GeoJSON (EPSG:4326, with confidence) and as a SpaceNet proposal CSV
(``ImageId,BuildingId,PolygonWKT_Pix,Confidence``), plus the SpaceNet ImageId of an input file."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import geopandas as gpd
from affine import Affine
from shapely.geometry import Polygon

from bdcore.atomic import atomic_write
from bdcore.metrics.polygons import polygons_to_geo
from bdcore.metrics.scoring import write_spacenet_csv

log = logging.getLogger(__name__)

_IMAGE_ID_RE = re.compile(r"(AOI_\d+_[A-Za-z]+_img\d+)")
_BUCKET_NAME_RE = re.compile(r"(AOI_\d+_[A-Za-z]+)_.*?(img\d+)$")  # SN2_buildings_train_AOI_2_Vegas_PS-RGB_img1


def image_id_for(path: str | os.PathLike) -> str:
    """SpaceNet ImageId from a file name (``RGB-PanSharpen_AOI_2_Vegas_img1265.tif`` → ``AOI_2_Vegas_img1265``);
    else the file stem."""
    stem = Path(path).stem
    m = _IMAGE_ID_RE.search(stem)
    if m:
        return m.group(1)
    m = _BUCKET_NAME_RE.search(stem)
    return f"{m.group(1)}_{m.group(2)}" if m else stem


def write_vectors(polys: list[tuple[Polygon, float]], transform: Affine, crs, image_id: str, geojson_path: Path,
                  csv_path: Path) -> None:
    """Pixel-coordinate ``(polygon, confidence)`` pairs → GeoJSON (reprojected to EPSG:4326 when the raster has a CRS)
    and SpaceNet CSV (one ``POLYGON EMPTY`` row with BuildingId -1 when there are none, as SpaceNet expects)."""
    gdf = gpd.GeoDataFrame(
        {"building_id": list(range(len(polys))), "confidence": [round(c, 4) for _, c in polys],
         "area_px": [round(p.area, 1) for p, _ in polys]},
        geometry=polygons_to_geo(polys, transform), crs=crs,
    )
    if crs is not None:
        gdf = gdf.to_crs("EPSG:4326")
    else:
        log.warning("input has no CRS: GeoJSON coordinates are in the image's transform units, not EPSG:4326")
    text = gdf.to_json(drop_id=True) if len(gdf) else json.dumps({"type": "FeatureCollection", "features": []})
    atomic_write(geojson_path, lambda f: f.write(text), "w")
    rows = [{"ImageId": image_id, "BuildingId": i, "PolygonWKT_Pix": p.wkt, "Confidence": round(c, 4)}
            for i, (p, c) in enumerate(polys)]
    write_spacenet_csv(csv_path, rows or [{"ImageId": image_id, "BuildingId": -1, "PolygonWKT_Pix": "POLYGON EMPTY",
                                           "Confidence": 1}])
