"""Post-processing of the maps of one iteration: alignment to map 1 with a hand check,
mutual FSC, FSC-based filtering and normalisation by mass.

* **Alignment.** A map is rotated and translated onto map 1 (exhaustive rotation search
  on a coarse grid at low resolution, translations by FFT cross-correlation, then a
  local search), and so is its mirror image; if the mirror fits better the map had the
  wrong hand. Different states of a molecule may fit a rotated or mirrored copy of each
  other a little better than themselves at low resolution, so the driver applies an
  alignment only where it beats the map as given by a clear margin
  (:data:`ALIGNMENT_MARGIN`), and only to starting maps from different sources: maps
  refined from one stack keep the frame the particles give them.
* **Mass.** A map is scaled so that the threshold 1 encloses the molecule's volume,
  ``mass * 1.2 Å^3/Da`` (protein density 0.83 Da/Å^3), as EMAN2's ``--mass``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from multirefine.fourier.crop import resample_volume
from multirefine.fourier.fsc import fourier_shell_correlation
from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.grids import local_rotations, orientation_grid

__all__ = [
    "ALIGNMENT_MARGIN",
    "ANGSTROM3_PER_DALTON",
    "Alignment",
    "align_translation",
    "align_volume",
    "mass_threshold",
    "mutual_fsc",
    "normalize_by_mass",
    "rotate_volume",
]

log = logging.getLogger(__name__)

ANGSTROM3_PER_DALTON = 1.0 / 0.83
ALIGNMENT_MARGIN = 0.15  # correlation gain needed to move a starting map


def mass_threshold(volume: np.ndarray, mass_kda: float, pixel_size_angstrom: float) -> float:
    """The density above which the voxels of ``volume`` make up ``mass_kda`` of protein."""
    n_voxels = round(mass_kda * 1000 * ANGSTROM3_PER_DALTON / pixel_size_angstrom**3)
    flat = np.sort(np.asarray(volume).ravel())[::-1]
    if n_voxels <= 0 or n_voxels >= flat.size:
        raise ValueError(f"mass {mass_kda} kDa does not fit a box of {volume.shape[-1]} px at {pixel_size_angstrom} Å/px")
    return float(flat[n_voxels])


def normalize_by_mass(volume: np.ndarray, mass_kda: float, pixel_size_angstrom: float) -> np.ndarray:
    """Scale ``volume`` so that voxels above 1 make up ``mass_kda`` of protein."""
    threshold = mass_threshold(volume, mass_kda, pixel_size_angstrom)
    if threshold <= 0:
        return volume
    return (volume / threshold).astype(np.float32)


def rotate_volume(volume: torch.Tensor, matrices: torch.Tensor, shifts_px: torch.Tensor | None = None) -> torch.Tensor:
    """``out(x) = volume(R^T x - t)`` about the centre ``D//2`` for each ``R`` ``(n, 3, 3)``.

    ``volume`` ``(D, D, D)``; returns ``(n, D, D, D)``; trilinear, zero outside. A map
    rotated by ``R`` and then moved by ``t`` (voxels, ``(x, y, z)``).
    """
    box = volume.shape[-1]
    c = box // 2
    idx = torch.arange(box, device=volume.device, dtype=torch.float32) - c
    z, y, x = torch.meshgrid(idx, idx, idx, indexing="ij")
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)  # output coordinates
    n = len(matrices)
    src = xyz[None] if shifts_px is None else xyz[None] - shifts_px[:, None, :].to(torch.float32)
    src = src @ matrices.to(torch.float32)  # R^T (x - t) as row vectors: (x - t) @ R
    norm = (src + c) / (box - 1) * 2 - 1
    grid = norm.reshape(n, box, box, box, 3)
    out = F.grid_sample(volume[None, None].expand(n, 1, box, box, box), grid, mode="bilinear", align_corners=True)
    return out[:, 0]


@dataclass
class Alignment:
    matrix: np.ndarray  # (3, 3) rotation applied to the moving map
    shift_px: np.ndarray  # (3,) translation (x, y, z) in voxels after the rotation
    flipped: bool  # the moving map was mirrored (wrong hand) before rotation
    score: float  # correlation with the reference after alignment
    identity_score: float  # correlation as given (best translation only)


def _best_translation(ref_ft: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak of the cross-correlation of each moving map with the reference: (scores, shifts)."""
    box = moving.shape[-1]
    corr = torch.fft.irfftn(ref_ft * torch.fft.rfftn(moving, dim=(-3, -2, -1)).conj(), s=(box,) * 3, dim=(-3, -2, -1))
    flat = corr.reshape(len(moving), -1)
    best, where = flat.max(dim=1)
    z, rem = where // (box * box), where % (box * box)
    y, x = rem // box, rem % box
    shifts = torch.stack([x, y, z], -1)
    shifts = torch.where(shifts > box // 2, shifts - box, shifts)
    return best, shifts.to(torch.float32)


def align_volume(
    moving: np.ndarray,
    reference: np.ndarray,
    pixel_size_angstrom: float,
    resolution_angstrom: float = 20.0,
    step_deg: float = 15.0,
    check_hand: bool = True,
) -> tuple[np.ndarray, Alignment]:
    """Align ``moving`` onto ``reference`` (both ``(D, D, D)``); returns the aligned map."""
    box = reference.shape[-1]
    small = int(min(box, max(16, 2 * round(box * pixel_size_angstrom / resolution_angstrom))))
    small += small % 2
    ref = resample_volume(torch.from_numpy(reference).float(), small)
    ref = (ref - ref.mean()) / ref.std()
    ref_ft = torch.fft.rfftn(ref, dim=(-3, -2, -1))
    rot, tilt, psi = orientation_grid(step_deg, "C1")
    grid = torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)
    candidates = [False, True] if check_hand else [False]
    as_given = resample_volume(torch.from_numpy(moving).float(), small)
    identity_score = float(_best_translation(ref_ft, ((as_given - as_given.mean()) / as_given.std())[None])[0][0]) / small**3
    best: Alignment | None = None
    for flipped in candidates:
        mov_np = moving[::-1].copy() if flipped else moving
        mov = resample_volume(torch.from_numpy(mov_np).float(), small)
        mov = (mov - mov.mean()) / mov.std()
        scores = torch.cat([_best_translation(ref_ft, rotate_volume(mov, chunk))[0] for chunk in torch.split(grid, 256)])
        matrix = grid[int(scores.argmax())]
        # Local refinement around the best grid rotation.
        local = torch.as_tensor(local_rotations(step_deg, step_deg / 4), dtype=torch.float32) @ matrix
        s, t = _best_translation(ref_ft, rotate_volume(mov, local))
        j = int(s.argmax())
        score = float(s[j]) / small**3
        if best is None or score > best.score:
            best = Alignment(local[j].numpy(), t[j].numpy() * box / small, flipped, score, identity_score)
    assert best is not None
    mov_np = moving[::-1].copy() if best.flipped else moving
    aligned = rotate_volume(
        torch.from_numpy(mov_np).float(), torch.from_numpy(best.matrix)[None], torch.from_numpy(best.shift_px)[None]
    )[0].numpy()
    return aligned, best


def align_translation(moving: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translate ``moving`` onto ``reference`` (both ``(D, D, D)``): cross-correlation peak,
    refined to a fraction of a voxel by a parabola on each axis, applied as a Fourier phase
    shift (no interpolation blur). Returns the moved map and the shift ``(x, y, z)`` in voxels.
    """
    box = reference.shape[-1]
    mov = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float64))
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float64))
    mov_ft = torch.fft.rfftn(mov)
    corr = torch.fft.irfftn(torch.fft.rfftn(ref) * mov_ft.conj(), s=(box,) * 3)
    peak = np.unravel_index(int(corr.argmax()), corr.shape)  # (z, y, x)
    shift = []
    for axis, index in enumerate(peak):
        around = [list(peak) for _ in range(3)]
        for j, d in enumerate((-1, 0, 1)):
            around[j][axis] = (index + d) % box
        c_m, c_0, c_p = (float(corr[tuple(a)]) for a in around)
        denominator = c_m - 2 * c_0 + c_p
        frac = 0.5 * (c_m - c_p) / denominator if denominator < 0 else 0.0
        value = index + float(np.clip(frac, -0.5, 0.5))
        shift.append(value - box if value > box / 2 else value)
    dz, dy, dx = shift
    k = torch.fft.fftfreq(box, dtype=torch.float64)
    kx = torch.fft.rfftfreq(box, dtype=torch.float64)
    phase = -2 * np.pi * (k[:, None, None] * dz + k[None, :, None] * dy + kx[None, None, :] * dx)
    moved = torch.fft.irfftn(mov_ft * torch.polar(torch.ones_like(phase), phase), s=(box,) * 3)
    return moved.numpy().astype(np.float32), np.array([dx, dy, dz])


def mutual_fsc(maps: list[np.ndarray]) -> np.ndarray:
    """FSC of every pair of maps: ``(K, K, D//2+1)``."""
    k = len(maps)
    tensors = [torch.from_numpy(m) for m in maps]
    out = np.ones((k, k, maps[0].shape[-1] // 2 + 1))
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = fourier_shell_correlation(tensors[i], tensors[j]).numpy()
    return out
