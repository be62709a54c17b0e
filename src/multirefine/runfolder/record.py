"""What a run folder records about the commands that wrote it.

:func:`command_record` is one command: its command line, multirefine's version, when it
started, on which host, with which device and threads, and the Python and torch versions.
``0_refine_parms.json`` keeps them under :data:`COMMANDS`, one per command (a new run, then
each ``--continue``), beside the run's options. :class:`RunLog` copies what the command
prints and logs into ``run.log`` (appended to, each command under a header line), so that a
run read later, by someone else or on a cluster whose job output is gone, says what ran.
"""

from __future__ import annotations

import logging
import platform
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Self, TextIO

__all__ = ["COMMANDS", "LOG", "RunLog", "command_record"]

COMMANDS = "commands"  # the key of 0_refine_parms.json that lists the commands that wrote the run
LOG = "run.log"


def command_record(argv: list[str], device: str, parallel: str) -> dict[str, Any]:
    """One command that wrote a run: what ran, where, when and with what (``parallel``: the
    ``--parallel`` it ran with; ``threads``: torch's threads in this process)."""
    import torch

    from multirefine import __version__

    return {
        "command_line": shlex.join(["multirefine", *argv]),
        "version": __version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": socket.gethostname(),
        "device": device,
        "parallel": parallel,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


class _Tee:
    """A text stream that writes to ``stream`` and to ``copy``."""

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno: the stream's
        return getattr(self._stream, name)


class RunLog:
    """``with RunLog(folder, header, earlier):`` stdout and the log records (INFO and above)
    go to ``folder/run.log`` too; ``header`` and ``earlier`` (what was printed before the
    folder existed) open this command's part of it. Progress bars (stderr) are not copied."""

    def __init__(self, folder: str | Path, header: str, earlier: str = "") -> None:
        self.path = Path(folder) / LOG
        self._header, self._earlier = header, earlier

    def __enter__(self) -> Self:
        self._file = open(self.path, "a", encoding="utf-8")  # closed in __exit__
        self._file.write(f"==== {self._header}\n{self._earlier}")
        self._stdout, sys.stdout = sys.stdout, _Tee(sys.stdout, self._file)
        self._handler = logging.StreamHandler(self._file)
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self._handler)
        sys.stdout = self._stdout
        try:
            self._file.close()
        except OSError:
            pass
