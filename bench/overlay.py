"""Benchmark: the Predict map's image layer of a large GeoTIFF (``imagery.display_overview`` → PNG data URL). Prints
JSON.

The input is the real Vegas tile of tests/data tiled ``--repeat-tile`` × ``--repeat-tile`` times into one deflate
GeoTIFF (6,500 × 6,500 px by default: real-looking texture, so the PNG size is realistic), without overviews.
For each ``max_side``: seconds to read decimated + stretch (``read_s``), to encode the PNG (``png_s``), the data
URL's size (what the map page carries) and the growth of peak RSS (never the full raster: its uint16 size is
``raster_mb``).

Usage: python bench/overlay.py [--repeat-tile 10] [--max-side 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

from bdcore.data import imagery
from bdcore.viz import layers

ROOT = Path(__file__).resolve().parent.parent
TILE = ROOT / "tests" / "data" / "spacenet2_vegas" / "PS-RGB" / "RGB-PanSharpen_AOI_2_Vegas_img1265.tif"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_big(path: Path, k: int) -> tuple[int, int]:
    """The Vegas tile repeated k × k times (written window by window: the big array never exists here)."""
    with rasterio.open(TILE) as src:
        tile, prof = src.read(), src.profile
    h, w = tile.shape[1:]
    prof.update(width=w * k, height=h * k, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                BIGTIFF="YES")
    with rasterio.open(path, "w", **prof) as dst:
        for r in range(k):
            for c in range(k):
                dst.write(tile, window=Window(c * w, r * h, w, h))
    return w * k, h * k


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat-tile", type=int, default=10)
    ap.add_argument("--max-side", type=int, nargs="+", default=[1024, 2048])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.tif"
        width, height = write_big(big, args.repeat_tile)
        out = {"width": width, "height": height, "raster_mb": round(width * height * 3 * 2 / 2**20, 1),
               "file_mb": round(big.stat().st_size / 2**20, 1), "runs": []}
        base = _peak_mb()
        for side in args.max_side:
            t0 = time.perf_counter()
            rgb = imagery.display_overview(big, max_side=side)
            t1 = time.perf_counter()
            url = layers.png_data_url(rgb)
            t2 = time.perf_counter()
            out["runs"].append({"max_side": side, "shape": list(rgb.shape[:2]), "read_s": round(t1 - t0, 3),
                                "png_s": round(t2 - t1, 3), "data_url_mb": round(len(url) / 2**20, 2),
                                "peak_rss_growth_mb": round(_peak_mb() - base, 1)})
    out["ok"] = all(max(r["shape"]) <= r["max_side"] and r["peak_rss_growth_mb"] < out["raster_mb"] / 4
                    for r in out["runs"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
