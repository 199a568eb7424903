"""Commands: ``weights pull ENCODER…`` (pre-fetch encoder weights for offline use), ``weights list``."""

from __future__ import annotations

import argparse

from bdcore.engine.weights import (
    cached_file, cached_weights, download, hub_cache_dir, hub_file, probe_hub, verify_cached,
)


def _cmd_pull(args: argparse.Namespace) -> int:
    failed = 0
    for encoder in args.encoders:
        hf = hub_file(encoder, args.weights)
        if hf is None:
            print(f"{encoder}: no {args.weights!r} weights on the hub for this encoder")
            failed += 1
            continue
        path = cached_file(hf)
        if path is not None:
            verify_cached(path)
            print(f"{encoder}: already cached ({path})")
            continue
        reason = probe_hub(hf)
        if reason is not None:
            print(f"{encoder}: cannot download: {reason}")
            failed += 1
            continue
        path = download(hf)
        print(f"{encoder}: downloaded {hf.label} ({path.stat().st_size / 1e6:.1f} MB) to {path}")
    return 1 if failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = cached_weights()
    if not rows:
        print(f"no encoder weights cached in {hub_cache_dir()}")
        return 0
    print(f"{'REPO':<40} {'REV':<9} {'MB':>7}  ENCODERS")
    for r in rows:
        print(f"{r['repo']:<40} {r['revision']:<9} {r['mb']:>7.1f}  {r['encoders']}")
    print(f"cache: {hub_cache_dir()}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("weights", help="pretrained encoder weights: pull (pre-fetch) or list the cached ones")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    q = wsub.add_parser("pull", help="download encoder weights into the Hugging Face cache (for later offline use)")
    q.add_argument("encoders", nargs="+", metavar="ENCODER", help="e.g. resnet34 efficientnet-b3 tu-convnext_tiny")
    q.add_argument("--weights", default="imagenet", help="weights tag (default imagenet)")
    q.set_defaults(func=_cmd_pull)
    q = wsub.add_parser("list", help="encoder weights in the Hugging Face cache")
    q.set_defaults(func=_cmd_list)
