"""Commands: catalog, demo, download, stats."""

from __future__ import annotations

from bdcore.data import catalog, demo, download, imagery


def register_cli(sub) -> None:
    for module in (catalog, demo, download, imagery):
        module.register_cli(sub)
