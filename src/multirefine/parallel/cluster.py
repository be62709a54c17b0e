"""The loops on a Dask cluster (``--parallel dask:ADDRESS``; ``pip install multirefine[dask]``)."""

from __future__ import annotations

from pathlib import Path

from multirefine.errors import InputError
from multirefine.parallel.local import add_accumulators

__all__ = ["DaskCluster"]

CONNECT_TIMEOUT_S = 20


class DaskCluster:
    """Shards as tasks on the workers of the Dask scheduler at ``address`` (or named by the
    scheduler file ``address``).

    What every shard shares is scattered to every worker once per loop (not once per task).
    Sums are added on the workers in a fixed tree (pairs of shards, then pairs of pairs), so
    the total does not depend on which task ended first, and only it comes back here.
    """

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise InputError(f"--parallel dask:{address}: needs dask.distributed "
                             "(pip install 'multirefine[dask]')") from None
        self.address = address
        try:
            if Path(address).is_file():
                self.client = Client(scheduler_file=address, timeout=CONNECT_TIMEOUT_S)
            else:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"--parallel dask:{address}: no Dask scheduler answered ({reason})") from None
        if not self.threads:
            self.client.close()
            raise InputError(f"--parallel dask:{address}: the scheduler has no workers")

    @property
    def threads(self) -> int:
        return int(sum(self.client.nthreads().values()))

    @property
    def parts(self) -> int:
        return 2 * self.threads  # two tasks per thread evens out unequal shards

    def describe(self) -> str:
        workers = self.client.nthreads()
        return f"Dask scheduler {self.address}: {len(workers)} workers, {sum(workers.values())} threads"

    def _submit(self, fn, shards, shared, advance, sizes) -> list:
        from distributed import as_completed

        shared_futures = [self.client.scatter([value], broadcast=True, hash=False)[0] for value in shared]
        futures = [self.client.submit(fn, shard, *shared_futures, pure=False) for shard in shards]
        if advance is not None:
            index = {future.key: i for i, future in enumerate(futures)}
            for future in as_completed(futures):
                if future.status == "error":
                    break  # gathered below, which raises the task's own error
                advance(sizes[index[future.key]] if sizes is not None else 1)
        return futures

    def map(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        return self.client.gather(self._submit(fn, shards, shared, advance, sizes))

    def sum(self, fn, shards, *shared, advance=None, sizes=None) -> list:
        futures = self._submit(fn, shards, shared, advance, sizes)
        while len(futures) > 1:
            pairs = [self.client.submit(add_accumulators, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
            futures = pairs + futures[len(pairs) * 2:]
        return futures[0].result()

    def close(self) -> None:
        self.client.close()
