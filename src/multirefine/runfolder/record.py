"""What a run folder records about the commands that wrote it.

:func:`command_record` is one command: its command line, multirefine's version, when it
started, on which host, with which device and threads, and the Python and torch versions.
``0_refine_parms.json`` keeps them under :data:`COMMANDS`, one per command (a new run, then
each ``--continue``), beside the run's options, and under :data:`INPUT_IDENTITY` what identifies the particles it
was started on (:func:`input_identity`), which ``--continue`` checks
(:func:`check_input_identity`). :class:`RunLog` copies what the command
prints and logs into ``run.log`` (appended to, each command under a header line), so that a
run read later, by someone else or on a cluster whose job output is gone, says what ran.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Self, TextIO

import numpy as np

from multirefine.errors import InputError

__all__ = ["COMMANDS", "INPUT_IDENTITY", "LOG", "RunLog", "check_input_identity", "command_record", "input_identity"]

COMMANDS = "commands"  # the key of 0_refine_parms.json that lists the commands that wrote the run
INPUT_IDENTITY = "input_identity"  # the key of 0_refine_parms.json that identifies the particles
SAMPLE_IMAGES = 16  # images hashed by input_identity, spread evenly over the stack
LOG = "run.log"


def input_identity(stack) -> dict[str, Any]:
    """What identifies a particle stack without reading it all: its count, box and the SHA-1 of
    :data:`SAMPLE_IMAGES` of its images spread evenly over it (their pixels as float32)."""
    n = len(stack)
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_IMAGES)).round().astype(np.int64))
    pixels = np.ascontiguousarray(np.asarray(stack.read(rows, check_finite=False), dtype=np.float32))
    return {"particles": n, "box": int(stack.box_size), "sample_sha1": hashlib.sha1(pixels.tobytes()).hexdigest()}


def check_input_identity(saved: dict[str, Any] | None, stack, name: str, run: Path) -> None:
    """Raise InputError where ``stack`` (read from ``name``) is not the stack ``run`` was started
    on (``saved``: its :func:`input_identity`; None for a run written before it was kept)."""
    if saved is None:
        return
    now = input_identity(stack)
    if now == saved:
        return
    if now["particles"] == saved.get("particles") and now["box"] == saved.get("box"):
        what = f"the same count and box, other images ({SAMPLE_IMAGES} sampled differ)"
    else:
        what = f"{now['particles']} particles of box {now['box']} where the run had {saved.get('particles')} of box {saved.get('box')}"
    raise InputError(f"--continue {run}: {name} is not the stack the run was started on: {what}")


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
