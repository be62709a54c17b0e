"""From particle-table rows to tensors: centred image transforms, CTFs, pose matrices.

The bridge between data (:mod:`multirefine.io`, a pandas table in RELION's columns) and
physics (:mod:`multirefine.fourier`, tensors). Images are centred by their origin
(shifted by ``+rlnOriginX/YAngst / pixel size``) when ``center`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.ctf import calculate_ctf_2d
from multirefine.fourier.fft import rfft2_centered
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import euler_to_matrix

__all__ = ["ParticleBatch", "ctf_for_rows", "load_batch", "origins_px_for_rows", "rotations_for_rows", "sweep"]


def _column(rows: pd.DataFrame, name: str, default: float | None = None) -> torch.Tensor:
    if name not in rows.columns:
        if default is None:
            raise KeyError(name)
        return torch.full((len(rows),), float(default), dtype=torch.float64)
    return torch.tensor(rows[name].to_numpy(dtype=np.float64))


def ctf_for_rows(rows: pd.DataFrame, box_size: int, device=None) -> torch.Tensor:
    """CTFs ``(n, D, D//2+1)`` for the rows of a particle table (RELION columns)."""
    return calculate_ctf_2d(
        defocus_u_angstrom=_column(rows, "rlnDefocusU"),
        defocus_v_angstrom=_column(rows, "rlnDefocusV"),
        defocus_angle_deg=_column(rows, "rlnDefocusAngle", 0.0),
        voltage_kv=_column(rows, "rlnVoltage"),
        cs_mm=_column(rows, "rlnSphericalAberration"),
        amplitude_contrast=_column(rows, "rlnAmplitudeContrast"),
        pixel_size_angstrom=_column(rows, "rlnImagePixelSize"),
        phase_shift_deg=_column(rows, "rlnPhaseShift", 0.0),
        bfactor_angstrom2=_column(rows, "rlnCtfBfactor", 0.0),
        box_size=box_size,
        device=device,
    )


def rotations_for_rows(rows: pd.DataFrame, device=None) -> torch.Tensor:
    """Pose matrices ``(n, 3, 3)`` float32 from ``rlnAngleRot/Tilt/Psi`` (0 where absent)."""
    angles = [_column(rows, name, 0.0) for name in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    return euler_to_matrix(*angles).to(device=device, dtype=torch.float32)


def origins_px_for_rows(rows: pd.DataFrame, pixel_size_angstrom: float) -> torch.Tensor:
    """Origins ``(n, 2)`` in pixels, ``(x, y)``, from ``rlnOriginX/YAngst`` (0 where absent)."""
    ox = _column(rows, "rlnOriginXAngst", 0.0)
    oy = _column(rows, "rlnOriginYAngst", 0.0)
    return torch.stack([ox, oy], 1) / pixel_size_angstrom


@dataclass
class ParticleBatch:
    """A batch of particles as tensors (on one device)."""

    indices: np.ndarray  # (n,) rows of the stack
    images_ft: torch.Tensor  # (n, D, D//2+1) complex64, centred when loaded with center=True
    ctf: torch.Tensor | None  # (n, D, D//2+1) float32, or None for data without CTF
    rotations: torch.Tensor  # (n, 3, 3)


def load_batch(stack, indices: np.ndarray, device=None, center: bool = True) -> ParticleBatch:
    """Read rows ``indices`` of a ParticleStack into tensors on ``device`` (whitened by the
    stack's noise model, where it has one)."""
    rows = stack.metadata.iloc[indices]
    images = torch.as_tensor(np.asarray(stack[indices]), dtype=torch.float32, device=device)
    images_ft = rfft2_centered(images)
    if center:
        shift = origins_px_for_rows(rows, stack.pixel_size_angstrom).to(device)
        images_ft = shift_images_ft(images_ft, shift)
    ctf = ctf_for_rows(rows, stack.box_size, device=device) if stack.has_ctf else None
    column = getattr(stack, "intensity_column", None)
    if column is not None and column in rows.columns:  # --scale: each particle's intensity
        scale = torch.as_tensor(rows[column].to_numpy(copy=True), dtype=torch.float32, device=device)[:, None, None]
        ctf = scale * (ctf if ctf is not None else torch.ones(images_ft.shape, dtype=torch.float32, device=device))
    noise = getattr(stack, "noise", None)
    if noise is not None:  # coloured noise: image and CTF whitened (multirefine.refine.noise)
        images_ft, ctf = noise.whiten(images_ft, ctf, rows)
    return ParticleBatch(np.asarray(indices), images_ft, ctf, rotations_for_rows(rows, device))


def sweep(stack, rows: np.ndarray, batch_size: int, device=None,
          advance: Callable[[int], None] | None = None) -> Iterator[tuple[np.ndarray, ParticleBatch]]:
    """The one batched sweep over particle rows that every stage makes: the stack rows
    ``rows`` in batches of ``batch_size``, each loaded on ``device`` (not centred: the
    search finds the shifts). Yields ``(at, batch)``, ``at`` the batch's positions in
    ``rows``; ``advance`` (a progress bar's) is told each batch's size once it is done."""
    for start in range(0, len(rows), batch_size):
        at = np.arange(start, min(len(rows), start + batch_size))
        yield at, load_batch(stack, rows[at], device=device, center=False)
        if advance is not None:
            advance(len(at))
