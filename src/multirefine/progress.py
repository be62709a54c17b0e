"""Progress of each stage: a bar on the terminal (tqdm on stderr); where stderr is not a
terminal (a cluster job's log), a line when the stage ends, or with ``-v 2`` a line per batch.

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


class _Counted:
    """``advance(n)`` that counts and logs one line (the stage, its particles, its time) once
    the total is reached, or at :meth:`done` if it was not."""

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description, self.count, self.started = total, description, 0, time.perf_counter()
        self.logged = False

    def __call__(self, n: int) -> None:
        self.count += n
        if self.count >= self.total:
            self.done()

    def done(self) -> None:
        if self.count and not self.logged:
            self.logged = True
            seconds = time.perf_counter() - self.started
            if self.count >= self.total:
                log.info("%s: %d particles in %.1f s", self.description, self.total, seconds)
            else:  # stopped before the end
                log.info("%s: %d of %d particles in %.1f s", self.description, self.count, self.total, seconds)


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
    stderr, else a line once the stage is done."""
    if log.isEnabledFor(BATCH):
        yield _logged(total, description)
        return
    if not sys.stderr.isatty():
        counted = _Counted(total, description)
        yield counted
        counted.done()
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, desc=description, unit="ptcl", leave=False) as bar, logging_redirect_tqdm():
        yield bar.update


class StageProgress:
    """``progress(label, total) -> advance(n)``: one bar per stage, each closing the last. While
    a bar is open, log lines go through tqdm (``logging_redirect_tqdm``): each is written on a
    line of its own above the bar, never glued onto it."""

    def __init__(self) -> None:
        self._bar = None
        self._redirect = None
        self._counted: _Counted | None = None

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        self.close()
        if log.isEnabledFor(BATCH):
            return _logged(total, label)
        if not sys.stderr.isatty():
            self._counted = _Counted(total, label)
            return self._counted
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._bar = tqdm(total=total, desc=label, unit="ptcl", leave=False)
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self._bar.update

    def close(self) -> None:
        if self._counted is not None:
            counted, self._counted = self._counted, None
            counted.done()
        if self._bar is not None:
            bar, redirect, self._bar, self._redirect = self._bar, self._redirect, None, None
            redirect.__exit__(None, None, None)
            bar.close()
