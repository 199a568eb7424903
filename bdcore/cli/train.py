"""Commands: train, resume, runs, stop."""

from __future__ import annotations

from bdcore.engine import runs


def register_cli(sub) -> None:
    for module in (runs,):
        module.register_cli(sub)
