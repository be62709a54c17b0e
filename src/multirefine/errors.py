"""The project's exception for bad user input.

Raise :class:`InputError` for anything a user gave us that we cannot use (a missing
file, a STAR table without a required column, a map with NaN, an unknown symmetry).
The message is one line naming the file or value and what was expected; the CLI
prints it without a traceback and exits with status 2. :class:`ClusterError` is a Dask
cluster that failed under a run (a worker lost, the scheduler gone): one line, status 3.
"""

from __future__ import annotations

__all__ = ["ClusterError", "InputError"]


class InputError(ValueError):
    """Bad user input: the message names the file/field and what was expected."""


class ClusterError(RuntimeError):
    """The Dask cluster failed during a run (not the user's input): the message says how."""
