"""The executor interface, and the loop run in this process (``--parallel thread:N``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from multirefine.errors import InputError

__all__ = ["Executor", "InProcess", "add_accumulators", "parse_parallel"]


class Executor(Protocol):
    """Runs ``fn(shard, *shared, advance=...)`` for each shard.

    ``advance(count)`` reports progress: in this process ``fn`` calls it as it goes; a
    cluster calls it with ``sizes[i]`` when shard ``i`` is done.
    """

    #: how many shards a loop over the particles should be cut into (1: not cut)
    parts: int

    def describe(self) -> str: ...

    def map(self, fn: Callable, shards: Sequence, *shared: Any, advance: Callable[[int], None] | None = None,
            sizes: Sequence[int] | None = None) -> list:
        """``[fn(shard, *shared) for shard in shards]``, in the order of ``shards``."""
        ...

    def sum(self, fn: Callable, shards: Sequence, *shared: Any, advance: Callable[[int], None] | None = None,
            sizes: Sequence[int] | None = None) -> list:
        """The shards' lists of accumulators added element by element (:func:`add_accumulators`)."""
        ...

    def close(self) -> None: ...


def add_accumulators(a: list, b: list) -> list:
    """``a[i] += b[i]`` for two equally long lists of accumulators; returns ``a``."""
    for x, y in zip(a, b, strict=True):
        x += y
    return a


def allowed_threads() -> int:
    """The CPU cores this process may use: ``SLURM_CPUS_PER_TASK`` where a Slurm job sets it,
    else the process's CPU affinity (``taskset``, a batch system's cpuset), else the machine's."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isascii() and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this system
        return max(1, os.cpu_count() or 1)


def parallel_spec(j: int | None, parallel: str | None) -> str:
    """The command line's ``--parallel``: as given, ``--j N`` as ``thread:N``, else
    ``thread:`` the cores allowed (:func:`allowed_threads`)."""
    if j is not None and parallel is not None:
        raise InputError(f"--j {j} and --parallel {parallel}: give one of them")
    if j is not None:
        if j < 1:
            raise InputError(f"--j {j}: expected 1 or more threads")
        return f"thread:{j}"
    return parallel or f"thread:{allowed_threads()}"


def parse_parallel(spec: str) -> tuple[str, str]:
    """``--parallel`` as ``("thread", "N")`` or ``("dask", ADDRESS)``, or a one-line error."""
    kind, _, value = spec.partition(":")
    if kind == "thread":
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise InputError(f"--parallel {spec}: expected thread:N with N a number of threads, 1 or more")
        return kind, value
    if kind == "dask":
        if not value:
            raise InputError(f"--parallel {spec}: expected dask:ADDRESS (tcp://host:8786, or a scheduler file)")
        return kind, value
    raise InputError(f"--parallel {spec}: expected thread:N or dask:ADDRESS (tcp://host:8786, or a scheduler file)")


class InProcess:
    """The loops run here, the particles in one shard; ``threads`` sets torch's threads
    (None: as they are)."""

    parts = 1

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(max(1, threads))

    def describe(self) -> str:
        threads = torch.get_num_threads()
        return f"this process, {threads} thread{'s' if threads > 1 else ''}"

    def map(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        return [fn(shard, *shared, advance=advance) for shard in shards]

    def sum(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        total = None
        for shard in shards:
            part = fn(shard, *shared, advance=advance)
            total = part if total is None else add_accumulators(total, part)
        return total

    def close(self) -> None:
        pass
