"""Synthetic particle stacks with ground truth (the data of the demo, tests and benchmark).

Maps come from atomic models (:func:`map_from_atoms`) or from MRC files. Particles are
central-slice projections (:mod:`multirefine.fourier.projection`) with uniform random
orientations, random shifts, an astigmatic CTF in RELION's convention and white Gaussian
noise at a stated SNR, defined as the mean variance of the clean images over the noise
variance. Images are then divided by the noise standard deviation, so the noise has unit
variance as in particles normalised by ``relion_preprocess --norm``; the maps keep their own
units, and the refinement has to find the intensity scale between the two, as with real
data. Everything follows the conventions a RELION user has (origins in Å are minus the
particle's displacement from the box centre), so ``relion_reconstruct --ctf`` on
``truth.star`` gives back the maps.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multirefine.errors import InputError
from multirefine.fourier.ctf import calculate_ctf_2d
from multirefine.fourier.fft import (
    frequency_grid_3d,
    irfft2_centered,
    irfftn3_centered,
    rfftn3_centered,
)
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import euler_to_matrix

__all__ = [
    "AtomicModel",
    "SimulationParameters",
    "map_from_atoms",
    "maps_from_models",
    "read_atomic_model",
    "simulate_dataset",
]

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


@dataclass
class SimulationParameters:
    """Everything that defines a simulated data set (written to ``simulation.json``)."""

    n_particles: int
    snr: float
    fractions: list[float]
    pixel_size_angstrom: float
    seed: int = 0
    defocus_min_angstrom: float = 10000.0
    defocus_max_angstrom: float = 25000.0
    astigmatism_max_angstrom: float = 500.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    max_shift_px: float = 3.0
    noise_sigma: float = field(default=0.0)  # in map units; images are divided by it


def _draw_truth(params: SimulationParameters, box_size: int, rng: np.random.Generator) -> pd.DataFrame:
    """Per-particle truth: class, pose, origin, CTF, in RELION's columns."""
    n = params.n_particles
    fractions = np.asarray(params.fractions, dtype=np.float64)
    classes = rng.choice(len(fractions), size=n, p=fractions / fractions.sum()) + 1
    # Uniform rotations: rot, psi uniform, cos(tilt) uniform.
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    # Displacement uniform in a disc of radius max_shift_px; origin = -displacement.
    radius = params.max_shift_px * np.sqrt(rng.uniform(0, 1, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    displacement = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    defocus_u = rng.uniform(params.defocus_min_angstrom, params.defocus_max_angstrom, n)
    defocus_v = defocus_u - rng.uniform(0, params.astigmatism_max_angstrom, n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnDefocusU": defocus_u,
            "rlnDefocusV": defocus_v,
            "rlnDefocusAngle": rng.uniform(0, 180, n),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnVoltage": np.full(n, params.voltage_kv),
            "rlnSphericalAberration": np.full(n, params.cs_mm),
            "rlnAmplitudeContrast": np.full(n, params.amplitude_contrast),
            "rlnImagePixelSize": np.full(n, params.pixel_size_angstrom),
            "rlnClassNumber": classes,
            "rlnAngleRot": rot,
            "rlnAngleTilt": tilt,
            "rlnAnglePsi": psi,
            "rlnOriginXAngst": -displacement[:, 0] * params.pixel_size_angstrom,
            "rlnOriginYAngst": -displacement[:, 1] * params.pixel_size_angstrom,
        }
    )


def _clean_images(volumes_ft: torch.Tensor, truth: pd.DataFrame, box_size: int) -> torch.Tensor:
    """Noise-free particle images ``(n, D, D)`` for the rows of ``truth``."""
    col = lambda name: torch.tensor(truth[name].to_numpy(dtype=np.float64))
    rotations = euler_to_matrix(col("rlnAngleRot"), col("rlnAngleTilt"), col("rlnAnglePsi")).float()
    classes = truth["rlnClassNumber"].to_numpy() - 1
    ft = torch.zeros((len(truth), box_size, box_size // 2 + 1), dtype=torch.complex64)
    for k in np.unique(classes):
        sel = torch.from_numpy(np.nonzero(classes == k)[0])
        ft[sel] = extract_central_slices(volumes_ft[k], rotations[sel], box_size)
    apix = col("rlnImagePixelSize")
    displacement = -torch.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], 1) / apix[:, None]
    ft = shift_images_ft(ft, displacement)
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=col("rlnDefocusU"),
        defocus_v_angstrom=col("rlnDefocusV"),
        defocus_angle_deg=col("rlnDefocusAngle"),
        voltage_kv=col("rlnVoltage"),
        cs_mm=col("rlnSphericalAberration"),
        amplitude_contrast=col("rlnAmplitudeContrast"),
        pixel_size_angstrom=apix,
        phase_shift_deg=col("rlnPhaseShift"),
        bfactor_angstrom2=col("rlnCtfBfactor"),
        box_size=box_size,
    )
    return irfft2_centered(ft * ctf, box_size)


def simulate_dataset(
    out_dir: str | Path,
    maps: list[np.ndarray],
    params: SimulationParameters,
    batch_size: int = 1000,
    progress=None,
) -> pd.DataFrame:
    """Write a simulated data set to ``out_dir`` and return its truth table.

    Writes ``particles.mrcs``, ``particles.star`` (what a user would have: CTF, no poses
    or classes), ``truth.star`` (plus ``rlnClassNumber``, angles, origins), ``gt_NN.mrc``
    (``NN`` = class number, from 01) and ``simulation.json``. Particles are generated in
    batches, so the stack is never held in memory whole.
    """
    from multirefine.io.maps import MrcStackWriter, write_map
    from multirefine.io.star import write_particles_star

    if len(maps) != len(params.fractions):
        raise InputError(f"{len(maps)} maps but {len(params.fractions)} fractions")
    if params.snr <= 0:
        raise InputError(f"--snr {params.snr}: expected a positive signal-to-noise ratio")
    box_size = maps[0].shape[-1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(params.seed)
    volumes_ft = torch.stack([prepare_volume_ft(torch.as_tensor(m)) for m in maps])
    truth = _draw_truth(params, box_size, rng)
    # Noise level from the mean variance of clean images over a pilot sample.
    pilot = truth.sample(n=min(len(truth), 500), random_state=params.seed)
    signal_variance = float(_clean_images(volumes_ft, pilot, box_size).var(dim=(-2, -1)).mean())
    params.noise_sigma = math.sqrt(signal_variance / params.snr)
    noise_rng = torch.Generator().manual_seed(params.seed + 1)
    with MrcStackWriter(out / "particles.mrcs", len(truth), box_size, params.pixel_size_angstrom) as writer:
        for start in range(0, len(truth), batch_size):
            rows = truth.iloc[start : start + batch_size]
            images = _clean_images(volumes_ft, rows, box_size)
            images += params.noise_sigma * torch.randn(images.shape, generator=noise_rng)
            images /= params.noise_sigma  # unit noise variance, as relion_preprocess --norm
            writer.write(start, images.numpy())
            if progress is not None:
                progress(len(rows))
    user_columns = [c for c in truth.columns if not c.startswith(("rlnAngle", "rlnOrigin", "rlnClass"))]
    write_particles_star(out / "particles.star", truth[user_columns])
    write_particles_star(out / "truth.star", truth)
    for k, volume in enumerate(maps, start=1):
        write_map(out / f"gt_{k:02d}.mrc", volume, params.pixel_size_angstrom)
    (out / "simulation.json").write_text(json.dumps(asdict(params), indent=2) + "\n")
    return truth
