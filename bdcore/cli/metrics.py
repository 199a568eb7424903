"""Commands: score."""

from __future__ import annotations

from bdcore.metrics import scoring


def register_cli(sub) -> None:
    for module in (scoring,):
        module.register_cli(sub)
