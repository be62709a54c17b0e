"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_atoms_map(box: int = 32, n_atoms: int = 300, seed: int = 0, spread_px: float = 4.0) -> np.ndarray:
    """A protein-like test map: ``n_atoms`` carbon-like atoms, 1 Å/px, 2 Å resolution."""
    from multirefine.simulate import AtomicModel, map_from_atoms

    rng = np.random.default_rng(seed)
    positions = rng.normal(0, spread_px, (n_atoms, 3))
    model = AtomicModel(positions, np.full(n_atoms, 6.0), "random atoms")
    return map_from_atoms(model, box, 1.0, 2.0, center_angstrom=np.zeros(3))


def relion_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install relion); .ci/run installs it")
    return path
