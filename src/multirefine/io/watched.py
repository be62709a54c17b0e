"""An input file that must not change while a command reads it.

A run reads its particle stacks for hours. A stack cut short meanwhile (a copy still
being written, a disk that filled) makes a memory-mapped read fail with SIGBUS, which kills
the process without a word; a stack rewritten in place is read as if nothing happened, and
the run goes on with images that are not the ones it started with. :class:`WatchedFile`
holds the file open from the moment it is opened, and before each read compares the open
file's size and modification time with what they were then: any change is an
:class:`~multirefine.errors.InputError` that names the file, before the read that would
have failed or mixed two stacks. (A file *replaced* by another under the same name does not
count: the open one is still read, whole and unchanged; ``--continue`` checks the new one.)
"""

from __future__ import annotations

import os
from pathlib import Path

from multirefine.errors import InputError

__all__ = ["WatchedFile"]


class WatchedFile:
    """``path``, held open; :meth:`check` raises InputError once its size or time changed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        first = os.fstat(self._fd)
        self._size, self._mtime = first.st_size, first.st_mtime_ns

    def check(self) -> None:
        now = os.fstat(self._fd)
        if now.st_size < self._size:
            raise InputError(f"{self.path}: cut short while this command read it ({now.st_size} bytes, "
                             f"{self._size} when opened); stopped before reading past its end")
        if now.st_size != self._size or now.st_mtime_ns != self._mtime:
            raise InputError(f"{self.path}: rewritten while this command read it ({now.st_size} bytes, "
                             f"{self._size} when opened); stopped rather than mix two stacks")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
