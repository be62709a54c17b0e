"""Progress on the terminal (tqdm on stderr; silent when stderr is not a terminal or with -q)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on an interactive stderr, otherwise nothing."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="ptcl", leave=False) as bar:
        yield bar.update
