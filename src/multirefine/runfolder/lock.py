"""One run folder, one process: an exclusive lock held while a command writes the folder.

:class:`FolderLock` takes an advisory lock (``flock``) on ``.multirefine.lock`` in the run
folder and writes its holder (host, process id, start time) into it. A second ``multirefine
refine`` on the same folder, a new run or ``--continue``, fails at once with a one-line error
naming the holder. The operating system drops the lock when its process ends however it ends
(a kill -9 too), so a lock is never stale; the file is removed when the holder lets go. A lock
file left by a killed process is therefore only a file: the next holder takes it over.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Self

from multirefine.errors import InputError

__all__ = ["LOCK_NAME", "FolderLock", "refuse_if_held"]

LOCK_NAME = ".multirefine.lock"


def _in_use(folder: Path, fd: int) -> InputError:
    """The error for a folder whose lock file ``fd`` another process holds, naming it."""
    holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
    return InputError(f"{folder}: in use by {holder}; one run folder takes one multirefine refine at a time")


def refuse_if_held(folder: str | Path) -> None:
    """Raise the one-line InputError :class:`FolderLock` raises where another process holds
    ``folder`` now; creates nothing (a folder about to be refused for other reasons)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(folder), fd) from None
    finally:
        os.close(fd)  # closing lets go of a lock taken here


class FolderLock:
    """``with FolderLock(folder):`` the folder is this process's until the block ends.
    Raises InputError where another process holds it."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> Self:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = _in_use(self.path.parent, fd)
                os.close(fd)
                raise error from None
            # The holder before may have removed the file between our open and our lock: then
            # the lock is on a file nobody else sees, and a new one must be taken.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (since {stamp})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before letting go: nobody locks a file on its way out
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
