"""From particle-table rows to tensors: centred image transforms, CTFs, pose matrices.

The bridge between data (:mod:`multirefine.io`, a pandas table in RELION's columns) and
physics (:mod:`multirefine.fourier`, tensors). Images are centred by their origin
(shifted by ``+rlnOriginX/YAngst / pixel size``) when ``center`` is set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.aberrations import aberration_phase_2d, odd_with_beam_tilt, shift_phases
from multirefine.fourier.ctf import calculate_ctf_2d, electron_wavelength_angstrom
from multirefine.fourier.fft import rfft2_centered
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import euler_to_matrix

__all__ = ["ParticleBatch", "aberrations_for_rows", "ctf_for_rows", "load_batch", "origins_px_for_rows", "rotations_for_rows", "sweep"]


def _column(rows: pd.DataFrame, name: str, default: float | None = None) -> torch.Tensor:
    if name not in rows.columns:
        if default is None:
            raise KeyError(name)
        return torch.full((len(rows),), float(default), dtype=torch.float64)
    return torch.tensor(rows[name].to_numpy(dtype=np.float64))


def ctf_for_rows(rows: pd.DataFrame, box_size: int, device=None, even_phase: torch.Tensor | None = None) -> torch.Tensor:
    """CTFs ``(n, D, D//2+1)`` for the rows of a particle table (RELION columns); ``even_phase``
    (the rows' even aberrations, :func:`aberrations_for_rows`) is added to their phase."""
    return calculate_ctf_2d(
        gamma_offset=even_phase,
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


def aberrations_for_rows(rows: pd.DataFrame, box_size: int, device=None, turned_deg: np.ndarray | None = None
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rows' odd and even aberration phases ``(n, D, D//2+1)`` float32 (radians), each None
    where no row has any: beam tilt (``rlnBeamTiltX/Y``) folded into ``rlnOddZernike``, and
    ``rlnEvenZernike`` (:mod:`multirefine.fourier.aberrations`). An image is multiplied by
    ``exp(i odd)``; ``even`` adds to its CTF's phase. ``turned_deg`` ``(n,)``: each row's phases
    for its image turned in its plane by that angle (class averages)."""
    from multirefine.io.columns import BEAM_TILT, ZERNIKE, relion_list

    if not (set(BEAM_TILT) | set(ZERNIKE)) & set(rows.columns):
        return None, None
    keys = [c for c in (*BEAM_TILT, *ZERNIKE, "rlnSphericalAberration", "rlnVoltage", "rlnImagePixelSize")
            if c in rows.columns]
    table = rows[keys].fillna({**dict.fromkeys(BEAM_TILT, 0.0), **dict.fromkeys(ZERNIKE, "[]")}).astype(str)
    inverse = table.groupby(keys, sort=False).ngroup().to_numpy()  # groups numbered as they first appear
    first = np.unique(inverse, return_index=True)[1]
    tilted = bool(set(BEAM_TILT) & set(keys))  # RELION folds a tilt into every group where the column is
    if turned_deg is None:  # one phase map per group, gathered for the rows
        groups = {True: [], False: []}
    out: dict[bool, torch.Tensor | None] = {True: None, False: None}
    for group, at in enumerate(first):
        row = table.iloc[at].to_dict()
        odd, even = (relion_list(row.get(name, "[]")) for name in ZERNIKE)
        if tilted:
            odd = odd_with_beam_tilt(odd, *(float(row.get(name, 0.0)) for name in BEAM_TILT),
                                     float(row["rlnSphericalAberration"]),
                                     float(electron_wavelength_angstrom(float(row["rlnVoltage"]))))
        apix = float(row["rlnImagePixelSize"])
        for is_odd, coefficients in ((True, odd), (False, even)):
            if turned_deg is None:
                groups[is_odd].append(_phase(tuple(coefficients), is_odd, box_size, apix, str(device or "cpu"))
                                      if any(coefficients) else None)
                continue
            if not any(coefficients):
                continue
            if out[is_odd] is None:
                out[is_odd] = torch.zeros((len(rows), box_size, box_size // 2 + 1), dtype=torch.float32, device=device)
            members = np.nonzero(inverse == group)[0]
            out[is_odd][torch.as_tensor(members, device=device)] = aberration_phase_2d(
                coefficients, is_odd, box_size, apix, device, torch.as_tensor(np.asarray(turned_deg)[members])).float()
    if turned_deg is None:
        index = torch.as_tensor(np.array(inverse, dtype=np.int64), device=device)
        zero = torch.zeros((box_size, box_size // 2 + 1), dtype=torch.float32, device=device)
        for is_odd, phases in groups.items():
            if any(p is not None for p in phases):
                out[is_odd] = torch.stack([zero if p is None else p for p in phases])[index]
    return out[True], out[False]


@functools.lru_cache(maxsize=256)
def _phase(coefficients: tuple[float, ...], odd: bool, box_size: int, pixel_size_angstrom: float,
           device: str) -> torch.Tensor:
    """One optics group's phase map, float32, computed once (every batch of its particles uses it)."""
    return aberration_phase_2d(list(coefficients), odd, box_size, pixel_size_angstrom, device).float()


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
    ctf = None
    if stack.has_ctf:  # the aberrations are part of the CTF's model: RELION's (ObservationModel)
        odd, even = aberrations_for_rows(rows, stack.box_size, device) if stack.aberrations else (None, None)
        ctf = ctf_for_rows(rows, stack.box_size, device=device, even_phase=even)
        if odd is not None:  # the image's odd phases taken off, as relion_reconstruct does
            images_ft = shift_phases(images_ft, -odd)
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
