"""``python -m bdcore <command>``: thin argparse front door.

Each concept module that offers commands exposes ``register_cli(subparsers)``, which adds its
sub-parsers and sets ``func`` on them; this file only collects them, so the logic stays in the
module that owns the concept.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

# Modules that contribute commands, in --help order.
COMMAND_MODULES = [
    "bdcore.cli.data",       # catalog, demo, download, stats
    "bdcore.cli.train",      # train, resume, runs, stop, compare
    "bdcore.cli.weights",    # weights pull, weights list
    "bdcore.cli.inference",  # evaluate, predict, export
    "bdcore.cli.metrics",    # score
]


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2, no traceback."""


_OS_FIXES = {
    errno.ENOSPC: "free disk space (or point BDCORE_RUNS_DIR / BDCORE_CACHE_DIR / --out at another disk) and retry",
    errno.EDQUOT: "free space within your disk quota and retry",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EACCES: "check the folder's permissions or write somewhere else",
    errno.EPERM: "check the folder's permissions or write somewhere else",
    errno.EEXIST: "a file is in the way of a folder: move it or choose another path",
    errno.ENOTDIR: "a file is in the way of a folder: move it or choose another path",
    errno.EISDIR: "a folder was given where a file is expected: pass the file's path",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do (existing files are left as they were)."""
    if exc.errno is None:  # raised by bdcore with its own message (which says what to do)
        return str(exc)
    fix = _OS_FIXES.get(exc.errno, "check the path and retry")
    return f"{exc}; {fix}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bdcore", description="SpaceNet building-footprint workbench")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # GDAL's own error lines repeat what the one-line error below says
        logging.getLogger("rasterio._err").setLevel(logging.CRITICAL)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing file, disk full, permission denied, a file where a folder should be, ...
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)
