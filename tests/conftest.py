"""Shared fixtures: small synthetic maps, devices, the real test files in ../shared/testdata."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DEVICES, random_atoms_map


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
