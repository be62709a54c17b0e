"""Progress of each stage: a bar on the terminal (tqdm on stderr), or with ``-v 2`` a log
line per batch (for a cluster job's log, where there is no terminal); otherwise silent.

``-v N`` (EMAN2's ``--verbose``): 0, the default, logs what was resolved, a line per
iteration and warnings; 1 adds each iteration's search grid and the time of each stage
(DEBUG); 2 and more add a line per batch (``BATCH``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["BATCH", "StageProgress", "logging_level", "progress_bar"]

BATCH = 5  # below DEBUG: a log line per batch of particles
logging.addLevelName(BATCH, "BATCH")
log = logging.getLogger(__name__)


def logging_level(verbose: int) -> int:
    """The logging level for ``-v verbose``."""
    return logging.INFO if verbose <= 0 else logging.DEBUG if verbose == 1 else BATCH


def _logged(total: int, description: str) -> Callable[[int], None]:
    """``advance(n)`` that logs the particles done so far and the time since the stage began."""
    done, started = 0, time.perf_counter()

    def advance(n: int) -> None:
        nonlocal done
        done += n
        log.log(BATCH, "%s: %d of %d particles, %.1f s", description, done, total, time.perf_counter() - started)

    return advance


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a log line per call at ``-v 2``, else a bar on an interactive
    stderr, else nothing."""
    if log.isEnabledFor(BATCH):
        yield _logged(total, description)
        return
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="ptcl", leave=False) as bar:
        yield bar.update


class StageProgress(logging.Filter):
    """``progress(label, total) -> advance(n)``: one bar per stage, each closing the last. A
    bar also ends before any log line is written (a filter on the root logger's handlers while
    it is open), so a line never follows a bar's text on the same line."""

    def __init__(self) -> None:
        super().__init__()
        self._bar = None

    def filter(self, record: logging.LogRecord) -> bool:
        self.close()
        return True

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        self.close()
        if log.isEnabledFor(BATCH):
            return _logged(total, label)
        if not sys.stderr.isatty():
            return lambda n: None
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=label, unit="ptcl", leave=False)
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self)
