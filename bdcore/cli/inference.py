"""Commands: evaluate, predict."""

from __future__ import annotations

from bdcore.inference import evaluate, predict


def register_cli(sub) -> None:
    for module in (evaluate, predict):
        module.register_cli(sub)
