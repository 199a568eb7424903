"""Commands: weights pull, weights list."""

from __future__ import annotations

from bdcore.engine import weights


def register_cli(sub) -> None:
    for module in (weights,):
        module.register_cli(sub)
