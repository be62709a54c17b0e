"""Progress on the terminal (tqdm on stderr; silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar", "StageProgress"]


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on an interactive stderr, otherwise nothing."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="ptcl", leave=False) as bar:
        yield bar.update


class StageProgress:
    """``progress(label, total) -> advance(n)``: one bar per stage, each closing the last."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        self.close()
        if not sys.stderr.isatty():
            return lambda n: None
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=label, unit="ptcl", leave=False)
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
