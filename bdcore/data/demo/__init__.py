"""A small *synthetic* SpaceNet 2 AOI, so a fresh machine (no download, no GPU) can run the whole app.

``write_demo_aoi(dest)`` writes tiles in the ORIGINAL SpaceNet 2 release layout::

    RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img<N>.tif    650x650, uint16, 3 bands, EPSG:4326
    geojson/buildings/buildings_AOI_3_Paris_img<N>.geojson  building footprints (CRS84, 3-D like the real files)
    summaryData/AOI_3_Paris_Train_Building_Solutions.csv   ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo
    SYNTHETIC_README.txt, synthetic_demo.json               it is not real imagery

The scene is generated once for the whole AOI as vector data (``scene``) and each tile renders its window of it
(``render``), so tiles are edge to edge like a real AOI and buildings crossing a tile edge are clipped in the labels
(as SpaceNet does); ``write`` puts it on disk. ``demo_root()`` is the default demo under ``cache_dir()/demo``,
written on first use.
"""

from bdcore.data.demo.scene import grid_shape
from bdcore.data.demo.write import (
    AOI,
    DEMO_VERSION,
    MAX_TILES,
    PIXEL_DEG,
    DemoError,
    default_demo_path,
    demo_root,
    is_complete,
    write_demo_aoi,
)

__all__ = [
    "AOI", "DEMO_VERSION", "MAX_TILES", "PIXEL_DEG", "DemoError", "default_demo_path", "demo_root", "grid_shape",
    "is_complete", "write_demo_aoi",
]
