"""Fixtures of the app tests: one Chromium per test module (the Chromium tests' helpers are in browser_kit)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        from browser_kit import ARGS, CHROMIUM

        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
