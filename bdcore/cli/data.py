"""Commands of the data layer: catalog, demo, download, stats.

``python -m bdcore`` builds every command's parser on each run (``--help`` included), so this module imports only
what the parsers need: the products table and ``data.download`` (standard library and tqdm): importing this module
takes 0.06 s. The modules a command runs are imported inside its function; their import cost (``python -X importtime``,
cold process, measured on a 2-core machine) is in the comment beside each import. With them at the top,
``python -m bdcore --help`` took 1.0 s instead of 0.47 s.
"""

from __future__ import annotations

import argparse
import json
import logging

from bdcore.data.download import AOI_ALIASES, DEFAULT_BASE_URL, DEFAULT_PRODUCTS, METHODS, download_aoi
from bdcore.data.download import PRODUCTS as DOWNLOAD_PRODUCTS
from bdcore.data.products import DEFAULT_PRODUCT, PRODUCTS

log = logging.getLogger(__name__)


def _print_catalog_summary(s: dict, from_cache: bool) -> None:
    print(f"catalog of {s['root']}{' (cached)' if from_cache else ''}")
    detail = f"{s['tiles_without_buildings']} with no buildings"
    if s["unlabelled"]:
        detail = f"{s['unlabelled']} unlabelled: no labels file, building count unknown; {detail}"
    print(f"  tiles       {s['tiles']}, {s['labelled']} labelled  ({detail})")
    print(f"  buildings   {s['buildings']}" + (" (in labelled tiles)" if s["unlabelled"] else ""))
    print(f"  bands       {', '.join(map(str, s['bands']))}   sizes {', '.join(s['sizes'])}")
    print("  products    " + ", ".join(f"{p}: {n}" for p, n in s["products"].items()))
    w, so, e, n = s["bounds"]
    print(f"  bounds      lon {w:.5f} .. {e:.5f}, lat {so:.5f} .. {n:.5f} (EPSG:4326)")
    print(f"  {'AOI':<16}{'tiles':>7}{'labelled':>10}{'buildings':>11}{'empty':>7}")
    for r in s["per_aoi"]:
        print(f"  {r['aoi']:<16}{r['tiles']:>7}{r['labelled']:>10}{r['buildings']:>11}{r['empty']:>7}")
    if s["problems"]:
        print(f"  problems    {len(s['problems'])}:")
        for path, msg in s["problems"].items():
            print(f"    {path}: {msg}")
    if s["bad_labels"]:
        print(f"  bad labels  {len(s['bad_labels'])} labels file(s) training cannot use (listed above); "
              "fix them or exclude their tiles")
    if s["scan"]:
        print(f"  skipped     {s['scan']}")


def _cmd_catalog(args: argparse.Namespace) -> int:
    from bdcore.data.catalog import load_catalog, summary  # 0.35 s (geopandas, rasterio)

    cat = load_catalog(args.dir, refresh=args.refresh)
    s = summary(cat)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
    else:
        _print_catalog_summary(s, bool(cat.attrs.get("from_cache")))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bdcore.data.demo import default_demo_path, demo_root, is_complete, write_demo_aoi  # 0.3 s (rasterio, …)
    from bdcore.progress import terminal_progress

    if not args.dest and is_complete(default_demo_path(args.tiles, args.seed)):
        print(demo_root(n_tiles=args.tiles, seed=args.seed))  # already written: nothing to do
        return 0
    with terminal_progress("step", "writing the synthetic demo AOI") as progress:
        if args.dest:
            path = write_demo_aoi(args.dest, n_tiles=args.tiles, seed=args.seed, progress=progress)
        else:
            path = demo_root(n_tiles=args.tiles, seed=args.seed, progress=progress)
    print(path)
    return 0


def _build_catalog(root) -> None:
    """The catalog of a fresh download, built now so the app opens the folder without a scan; its CatalogError makes
    the download fail (and not be marked as done)."""
    from bdcore.data.catalog import load_catalog  # 0.35 s (geopandas, rasterio)

    cat = load_catalog(root, refresh=True)
    log.info("catalog: %d tiles in %s", len(cat), root)


def _cmd_download(args: argparse.Namespace) -> int:
    root = download_aoi(args.aoi, args.products, dest=args.dest, base_url=args.base_url, method=args.method,
                        progress=not args.no_progress, keep_archive=args.keep_archive, retries=args.retries,
                        verify=_build_catalog)
    print(root)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from bdcore.data.catalog import load_catalog  # 0.35 s (geopandas, rasterio)
    from bdcore.data.imagery import band_stats  # no extra cost: catalog imports it

    cat = load_catalog(args.dir, refresh=args.refresh)
    stats = band_stats(cat, product=args.product, max_tiles=args.max_tiles, refresh=args.refresh)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return 0
    print(f"{stats.product} band statistics over {stats.n_tiles} sampled tile(s) of {len(cat)} ({args.dir})")
    print(f"{'band':>4}  {'p2':>10}  {'p98':>10}  {'mean':>10}  {'std':>10}")
    for b in range(stats.bands):
        print(f"{b:>4}  {stats.lo[b]:>10.1f}  {stats.hi[b]:>10.1f}  {stats.mean[b]:>10.1f}  {stats.std[b]:>10.1f}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("catalog", help="list the tiles of a SpaceNet 2 AOI folder (either layout)")
    p.add_argument("dir", help="AOI folder")
    p.add_argument("--refresh", action="store_true", help="rescan even if the cached catalog is current")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("demo", help="write the synthetic demo AOI (SpaceNet 2 layout, Paris coordinates)")
    p.add_argument("--dest", default=None, help="new folder to write (default: the cached demo under the cache dir)")
    p.add_argument("--tiles", type=int, default=24, help="number of 650x650 tiles (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same files)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("download", help="fetch a SpaceNet 2 AOI from the public bucket (HTTPS, resumable)")
    p.add_argument("--aoi", default="paris", help=f"{'|'.join(AOI_ALIASES)} (default paris)")
    p.add_argument("--products", default=",".join(DEFAULT_PRODUCTS), help=f"comma list of {','.join(DOWNLOAD_PRODUCTS)}")
    p.add_argument("--dest", default=None, help="destination folder (default: <cache dir>/spacenet)")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="bucket URL + key prefix of SN2_buildings")
    p.add_argument("--method", choices=METHODS, default="tarball",
                   help="one archive per AOI (all products inside) or one object per tile and product")
    p.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz after extraction")
    p.add_argument("--retries", type=int, default=5, help="retries per file on connection errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("stats", help="per-band dataset statistics (used to normalise model input)")
    p.add_argument("dir", help="AOI folder (either SpaceNet 2 layout)")
    p.add_argument("--product", default=DEFAULT_PRODUCT, choices=PRODUCTS)
    p.add_argument("--max-tiles", type=int, default=64, help="tiles sampled (default 64)")
    p.add_argument("--refresh", action="store_true", help="ignore cached catalog and stats")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_stats)
