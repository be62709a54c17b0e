"""The loops on a Dask cluster (``--parallel dask:ADDRESS``; ``pip install multirefine[dask]``)."""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from multirefine.errors import ClusterError, InputError

__all__ = ["DaskCluster"]

CONNECT_TIMEOUT_S = 20  # for the scheduler to answer
WORKERS_TIMEOUT_S = 120  # for a first worker to join (batch systems start them late)


def _multirefine_version() -> str:
    """Run on every worker: the multirefine it imports."""
    import multirefine

    return getattr(multirefine, "__version__", "unknown")


def _scheduler_address(path: str) -> str | None:
    """The address a Dask scheduler file holds; None where it is missing, empty or not one."""
    try:
        address = json.loads(Path(path).read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    return address if isinstance(address, str) and address else None


def _sum_of(a: list, b: list) -> list:
    """Two shards' accumulators added into new ones (a task's inputs stay as they were, so a
    task that Dask runs again adds the same)."""
    return [x + y for x, y in zip(a, b, strict=True)]


class DaskCluster:
    """Shards as tasks on the workers of the Dask scheduler at ``address`` (or named by the
    scheduler file ``address``).

    What every shard shares is scattered to every worker once per loop (not once per task).
    Sums are added on the workers in a fixed tree (pairs of shards, then pairs of pairs),
    submitted with the shards so that partial sums free their inputs as they go; only the
    total comes back.
    """

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
            from distributed import (
                TimeoutError as DaskTimeoutError,  # asyncio's: not the builtin before 3.11
            )
        except ImportError:
            raise InputError(f"--parallel dask:{address}: needs dask.distributed "
                             "(pip install 'multirefine[dask]')") from None
        self.address = address
        where = os.path.expanduser(address)
        if Path(where).is_file() or where.endswith(".json"):  # a file dask-mpi may not have written yet
            connect = {"scheduler_file": where}
        elif "://" in where or re.fullmatch(r"([\w.-]+|\[[0-9a-fA-F:.]+\]):\d+", where):
            connect = {"address": where}
        else:
            raise InputError(f"--parallel dask:{address}: neither a scheduler's address (tcp://host:8786) "
                             "nor a scheduler file")
        if "scheduler_file" in connect:  # distributed waits for the file without a limit: not so long
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while not _scheduler_address(where):  # missing, or still being written
                if time.monotonic() > deadline:
                    state = "not a scheduler file (JSON with an address)" if Path(where).is_file() else "no scheduler file there"
                    raise InputError(f"--parallel dask:{address}: {state} after {CONNECT_TIMEOUT_S:g} s "
                                     "(is the scheduler started?)")
                time.sleep(0.2)
        try:
            self.client = Client(**connect, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, DaskTimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"--parallel dask:{address}: no Dask scheduler answered ({reason})") from None
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            versions = set(self.client.run(_multirefine_version).values())
        except Exception as exc:  # noqa: BLE001 - a timeout, or workers that cannot import multirefine
            self.client.close()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"--parallel dask:{address}: no worker of this scheduler can run multirefine "
                             f"({type(exc).__name__}: {reason})") from None
        if versions != {_multirefine_version()}:
            self.client.close()
            raise InputError(f"--parallel dask:{address}: the workers run multirefine {', '.join(sorted(versions))}, "
                             f"this process {_multirefine_version()}")

    @property
    def threads(self) -> int:
        with self._failures():
            return int(sum(self.client.nthreads().values()))

    @property
    def parts(self) -> int:
        threads = self.threads
        if not threads:
            raise ClusterError(f"--parallel dask:{self.address}: the cluster has no workers left")
        return 2 * threads  # two tasks per thread evens out unequal shards

    def describe(self) -> str:
        with self._failures():
            workers = self.client.nthreads()
        return f"Dask scheduler {self.address}: {len(workers)} workers, {sum(workers.values())} threads"

    @contextmanager
    def _failures(self):
        """A cluster that fails under the run (a worker lost, the scheduler gone) as one line."""
        from distributed import CancelledError, KilledWorker
        from distributed import TimeoutError as DaskTimeoutError
        from distributed.comm.core import CommClosedError

        try:
            yield
        except (KilledWorker, CancelledError, CommClosedError, TimeoutError, DaskTimeoutError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise ClusterError(f"--parallel dask:{self.address}: the cluster failed under the run "
                               f"({type(exc).__name__}: {reason}); a run with a finished iteration can be "
                               "taken up with --continue") from None

    def _submit(self, fn, shards, shared) -> tuple[list, list]:
        """The shards' futures, and the shared data's: keep those until the results are back
        (scattered data cannot be made again, so a worker lost meanwhile could not be
        recovered from)."""
        shared_futures = [self.client.scatter([value], broadcast=True, hash=False)[0] for value in shared]
        return [self.client.submit(fn, shard, *shared_futures, pure=False) for shard in shards], shared_futures

    def _report(self, futures: list, advance, sizes) -> None:
        """``advance`` for each shard of ``futures`` as it ends (stops at the first failure,
        raised later); empties ``futures``."""
        from distributed import as_completed

        index = {future.key: i for i, future in enumerate(futures)}
        pending = as_completed(futures) if advance is not None else ()
        futures.clear()  # the caller's list: as each ends, nothing here holds it any more
        for future in pending:
            if future.status == "error":
                break
            advance(sizes[index[future.key]] if sizes is not None else 1)

    def map(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        with self._failures():
            futures, kept = self._submit(fn, shards, shared)
            self._report(list(futures), advance, sizes)
            results = self.client.gather(futures)
            del kept
            return results

    def sum(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        with self._failures():
            leaves, kept = self._submit(fn, shards, shared)
            level = list(leaves)
            while len(level) > 1:
                pairs = [self.client.submit(_sum_of, a, b, pure=False) for a, b in zip(level[::2], level[1::2])]
                level = pairs + level[len(pairs) * 2:]
            total = level[0]
            del level
            self._report(leaves, advance, sizes)  # empties leaves: a shard is dropped once added
            result = total.result()
            del kept
            return result

    def close(self) -> None:
        self.client.close()
