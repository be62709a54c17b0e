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


ADK_APIX, ADK_BOX = 2.4, 40  # the simulated adenylate kinase sets of the end-to-end tests


def simulate_adk(folder: Path, n: int, fractions: list[float], seed: int, half_way: bool = False,
                 lowpass_angstrom: float | None = None) -> list[np.ndarray]:
    """``n`` particles of adenylate kinase open and closed (with ``half_way``: open, the state
    half-way and closed), box 40, 2.4 Å/px, SNR 0.1, CTF, simulated into ``folder``
    (``particles.star``, ``truth.star``, ``gt_NN.mrc``); with ``lowpass_angstrom``, the true
    maps low-passed to it beside ``folder`` as ``lp_K.mrc``. Returns the true maps. Skips
    where mdanalysistests, which holds the atomic models, is not installed."""
    pytest.importorskip("MDAnalysisTests", reason="the adenylate kinase models come from mdanalysistests")
    from multirefine.cli.demo import adenylate_kinase_models
    from multirefine.fourier.filters import lowpass_volume
    from multirefine.io.maps import write_map
    from multirefine.simulate import (
        AtomicModel,
        SimulationParameters,
        maps_from_models,
        read_atomic_model,
        simulate_dataset,
    )

    models = [read_atomic_model(p) for p in adenylate_kinase_models()]
    if half_way:
        adk_open, adk_closed = models
        models = [adk_open, AtomicModel((adk_open.positions_angstrom + adk_closed.positions_angstrom) / 2,
                                        adk_open.atomic_numbers, "half-way"), adk_closed]
    maps = maps_from_models(models, ADK_BOX, ADK_APIX, 2 * ADK_APIX)
    simulate_dataset(folder, maps, SimulationParameters(n_particles=n, snr=0.1, fractions=fractions,
                                                        pixel_size_angstrom=ADK_APIX, seed=seed))
    if lowpass_angstrom is not None:
        for k, volume in enumerate(maps, 1):
            write_map(folder.parent / f"lp_{k}.mrc",
                      lowpass_volume(torch.from_numpy(volume), lowpass_angstrom, ADK_APIX).numpy(), ADK_APIX)
    return maps
