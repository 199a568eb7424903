"""The one table of SpaceNet 2 image products: names, bands, folder and file names in both published layouts.

Every other module asks this table (the catalog's file patterns, the run config's allowed products, band counts
for models and inference, the download's folders, the app's product pickers), so a product is spelled once.

Band orders are the sensor's: WorldView-3 multispectral is coastal, blue, green, yellow, red, red edge, NIR1, NIR2,
so the natural-colour bands of PS-MS/MS are 4, 2, 1 (``rgb``), also where RGB ImageNet filters seed an 8-band conv.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    name: str                 # bucket name: PS-RGB, PS-MS, MS, PAN
    bands: int
    release_folder: str       # original release folder and file prefix (RGB-PanSharpen/RGB-PanSharpen_AOI_…)
    rgb: tuple[int, int, int]  # 0-based band indices of red, green, blue (natural colour; PAN repeats its band)
    description: str


PRODUCT_TABLE: tuple[Product, ...] = (
    Product("PS-RGB", 3, "RGB-PanSharpen", (0, 1, 2), "pan-sharpened RGB, 0.3 m"),
    Product("PS-MS", 8, "MUL-PanSharpen", (4, 2, 1), "pan-sharpened 8-band multispectral, 0.3 m"),
    Product("MS", 8, "MUL", (4, 2, 1), "8-band multispectral, 1.2 m"),
    Product("PAN", 1, "PAN", (0, 0, 0), "panchromatic, 0.3 m"),
)
PRODUCTS: tuple[str, ...] = tuple(p.name for p in PRODUCT_TABLE)
PRODUCT_BANDS: dict[str, int] = {p.name: p.bands for p in PRODUCT_TABLE}
DEFAULT_PRODUCT = "PS-RGB"
# The label "product" of the bucket layout (folder geojson_buildings/), downloadable beside the images.
LABELS_PRODUCT = "geojson_buildings"
LABELS_RELEASE_FOLDER = "geojson/buildings"


class ProductError(ValueError):
    """An unknown product name."""


def product(name: str) -> Product:
    """The table row of ``name`` (case-insensitive); a clear error listing the products otherwise."""
    for p in PRODUCT_TABLE:
        if p.name.upper() == str(name).upper():
            return p
    raise ProductError(f"unknown product {name!r}; SpaceNet 2 products are {', '.join(PRODUCTS)}")


def products_with_bands(count: int) -> list[str]:
    """Products whose images have ``count`` bands (to name the likely product of an input file)."""
    return [p.name for p in PRODUCT_TABLE if p.bands == count]
