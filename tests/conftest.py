"""Shared fixtures: small synthetic maps, devices, the real test files in ../shared/testdata."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import DEVICES, random_atoms_map


def pytest_configure(config):
    """Under pytest-xdist (``make test``: ``-n 2``) each worker takes its share of the cores
    for torch's threads (1 each on 2 cores), not all of them: with torch's default (2 each)
    the tests not marked slow took 534-624 s on 2 cores against 112-219 s (busy machine)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(workers)))


@pytest.fixture(autouse=True)
def _torch_threads():
    """``--parallel thread:N`` sets torch's threads for the whole process: put them back after
    each test, so that no test runs with the threads an earlier one chose."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def atoms_map() -> np.ndarray:
    return random_atoms_map()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def dask_scheduler() -> str:
    """The address of a local Dask cluster: two worker processes of one thread each."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (multirefine[dask])")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address
