"""Atomic output: write to a temporary name in the destination folder, then rename.

Nothing a user wrote is overwritten or lost: if writing fails, the temporary file is removed
and whatever was at ``path`` before is untouched. ``os.replace`` is atomic on POSIX when the
temporary file is on the same file system, which is why it lives in the same folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "temporary_sibling"]


def temporary_sibling(path: str | Path) -> Path:
    """A hidden temporary name next to ``path`` that keeps its suffix (``.x.mrc.tmp123.mrc``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}_{id(path):x}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
