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
