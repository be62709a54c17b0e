"""Where the particle loops run: in this process, or on the workers of a Dask cluster.

Between the references and the accumulators everything is a function of one shard of
particles and of what all shards share (docs/architecture.md): a shard's search needs
the references, its model choice the last maps' accumulators; a reconstruction is a sum of
accumulators over shards. The driver hands such loops to an executor, chosen by
``--parallel``:

- ``thread:N`` (:class:`InProcess`): here, torch on N threads, the particles in one shard
  (the command line's default: the cores the process may use, :func:`allowed_threads`);
- ``dask:ADDRESS`` (:class:`DaskCluster`): ``ADDRESS`` is a scheduler's address
  (``tcp://host:8786``) or its scheduler file (``dask scheduler --scheduler-file F``,
  dask-mpi, dask-jobqueue). Each shard is a task; what the shards share goes to every worker
  once per loop; accumulators are added on the workers and only the total comes back. The
  workers open the particle files by the paths this process uses, so they must see the same
  file system, and they need multirefine installed.

Both run the same functions (in this process on one shard of all rows): a shard's result
does not depend on where it ran, but a cluster adds the shards' accumulators in another
order, so its maps differ from this process's in the last bits.
"""

from __future__ import annotations

from multirefine.parallel.local import (
    Executor,
    InProcess,
    add_accumulators,
    allowed_threads,
    parallel_spec,
    parse_parallel,
)

__all__ = ["DaskCluster", "Executor", "InProcess", "add_accumulators", "allowed_threads", "executor_for", "parallel_spec",
           "parse_parallel"]


def __getattr__(name: str):
    if name == "DaskCluster":  # dask is optional: imported when a cluster is asked for
        from multirefine.parallel.cluster import DaskCluster

        return DaskCluster
    raise AttributeError(name)


def executor_for(spec: str) -> Executor:
    """The executor ``--parallel spec`` names (a Dask one is connected to its scheduler)."""
    kind, value = parse_parallel(spec)
    if kind == "thread":
        return InProcess(int(value))
    from multirefine.parallel.cluster import DaskCluster

    return DaskCluster(value)
