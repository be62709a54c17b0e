"""Maps from atomic models: a Gaussian per non-H atom, weighted by its atomic number."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.fourier.fft import (
    frequency_grid_3d,
    irfftn3_centered,
    rfftn3_centered,
)

__all__ = ["AtomicModel", "map_from_atoms", "maps_from_models", "read_atomic_model"]

# Elements of biomolecules by the first letter of a PDB atom name.
_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16}


@dataclass
class AtomicModel:
    """Atom positions ``(n, 3)`` in Å (x, y, z) and their atomic numbers ``(n,)``."""

    positions_angstrom: np.ndarray
    atomic_numbers: np.ndarray
    source: str


def read_atomic_model(spec: str) -> AtomicModel:
    """Read ``path[:CHAINS]`` (PDB or mmCIF via gemmi); ``CHAINS`` like ``AB`` or ``A,B``.

    Hydrogens and waters are left out (cryo-EM maps hardly show them). Elements of standard residues
    are taken from the atom name, since many PDB files (CHARMM's among them) leave the
    element column blank or wrong.
    """
    import gemmi

    path, _, chains = spec.partition(":")
    if len(path) == 1 and chains:  # a Windows drive letter is not a chain list
        path, chains = spec, ""
    if not os.path.exists(path):
        raise InputError(f"{path}: atomic model not found")
    try:
        structure = gemmi.read_structure(path)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read atomic model ({exc})") from None
    wanted = {c for c in chains.replace(",", "")} if chains else None
    model = structure[0]
    available = [ch.name for ch in model]
    if wanted is not None and not wanted <= set(available):
        raise InputError(f"{path}: chains {sorted(wanted - set(available))} not in model (has {available})")
    positions, numbers = [], []
    for chain in model:
        if wanted is not None and chain.name not in wanted:
            continue
        for residue in chain:
            if residue.is_water():
                continue
            info = gemmi.find_tabulated_residue(residue.name)
            standard = info is not None and (info.is_amino_acid() or info.is_nucleic_acid())
            for atom in residue:
                if standard:
                    letter = atom.name.lstrip("0123456789")[:1].upper()
                    z = _ATOMIC_NUMBER.get(letter, atom.element.atomic_number)
                else:
                    z = atom.element.atomic_number
                if z <= 1:
                    continue
                positions.append(atom.pos.tolist())
                numbers.append(z)
    if not positions:
        raise InputError(f"{spec}: no atoms selected")
    return AtomicModel(np.asarray(positions), np.asarray(numbers, dtype=np.float64), spec)


def map_from_atoms(
    model: AtomicModel,
    box_size: int,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    center_angstrom: np.ndarray | None = None,
) -> np.ndarray:
    """Density ``(D, D, D)`` ``[z, y, x]``: atoms as Gaussians weighted by atomic number.

    The Gaussian width is ``sigma = 0.225 * resolution`` (Chimera's ``molmap``), applied
    exactly in Fourier space after trilinear binning of the atoms. ``center_angstrom``
    (default: the atoms' centre of mass) lands on voxel ``D // 2``.
    """
    pos = model.positions_angstrom
    weights = model.atomic_numbers
    if center_angstrom is None:
        center_angstrom = (pos * weights[:, None]).sum(0) / weights.sum()
    voxel = (pos - center_angstrom) / pixel_size_angstrom + box_size // 2
    base = np.floor(voxel).astype(np.int64)
    frac = voxel - base
    grid = np.zeros((box_size,) * 3)
    for corner in range(8):
        off = np.array([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        idx = base + off
        w = weights * np.prod(np.where(off, frac, 1 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < box_size), axis=1)
        np.add.at(grid, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), w[ok])
    if not np.all((voxel > 0) & (voxel < box_size - 1)):
        raise InputError(
            f"{model.source}: atoms reach outside a box of {box_size} px at {pixel_size_angstrom} Å/px"
        )
    sigma_px = 0.225 * resolution_angstrom / pixel_size_angstrom
    kx, ky, kz = frequency_grid_3d(box_size, dtype=torch.float64)
    k2 = (kx**2 + ky**2 + kz**2) / box_size**2
    ft = rfftn3_centered(torch.from_numpy(grid)) * torch.exp(-2 * math.pi**2 * sigma_px**2 * k2)
    return irfftn3_centered(ft, box_size).numpy().astype(np.float32)


def maps_from_models(
    models: list[AtomicModel], box_size: int, pixel_size_angstrom: float, resolution_angstrom: float
) -> list[np.ndarray]:
    """One map per model, all in the frame of the first model's centre of mass, so that
    states of one complex stay superposed as they are in the files."""
    first = models[0]
    center = (first.positions_angstrom * first.atomic_numbers[:, None]).sum(0) / first.atomic_numbers.sum()
    return [map_from_atoms(m, box_size, pixel_size_angstrom, resolution_angstrom, center) for m in models]
