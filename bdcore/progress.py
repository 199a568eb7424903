"""Progress for people: the one ETA formatter and the one ``(done, total)`` progress type with its terminal bar.

Library functions that take long accept ``progress: Progress | None`` and call it with counts; the CLI passes a
``terminal_progress`` bar, the app a Streamlit progress element. Nothing here imports torch or Streamlit.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# progress(done, total): called as work advances; total may grow (e.g. windows discovered while reading).
Progress = Callable[[int, int], Any]


def format_eta(seconds: Optional[float], none: str = "—") -> str:
    """``1h05m`` / ``4m07s``; ``none`` when unknown."""
    if seconds is None:
        return none
    s = max(int(seconds), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@contextlib.contextmanager
def terminal_progress(unit: str, desc: str) -> Iterator[Progress]:
    """A tqdm bar on stderr as a ``Progress`` callback; log lines print above the bar, never onto its line."""
    bar = tqdm(total=0, unit=unit, desc=desc)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with logging_redirect_tqdm():
            yield progress
    finally:
        bar.close()
