"""Atomic output: write to a temporary name in the destination folder, then rename.

Nothing a user wrote is overwritten or lost: if writing fails, the temporary file is removed
and whatever was at ``path`` before is untouched. ``os.replace`` is atomic on POSIX when the
temporary file is on the same file system, which is why it lives in the same folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "remove_temporaries", "temporary_sibling"]

_TEMPORARY = re.compile(r"\..+\.tmp\d+_[0-9a-f]+(\.[^.]*)?")  # what temporary_sibling names


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
    except OSError as exc:
        _remove(tmp)
        if exc.filename is not None and Path(exc.filename) == tmp:  # said of the file asked for
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    """Remove a temporary file after a failed write; where that fails too (a read-only file
    system never held it), the write's own error is the one to report."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files a process killed mid-write left in ``folder`` and the
    folders under it (their names are :func:`temporary_sibling`'s); returns them. Call it only
    where no other process writes (a run folder under its lock)."""
    removed = []
    for path in Path(folder).rglob(".*.tmp*"):
        if path.is_file() and _TEMPORARY.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
