"""Focused classification (``--focusmask``): the model choice judged on one region.

Poses come from the whole maps, as without a focus. The model choice then compares models on
the region of the focus mask ``F`` only: each model's map is split into its part inside,
``V_k F``, and outside, ``V_k (1 - F)``; the outsides are replaced by one common outside, the
mean of the models' weighted by their particles, ``V_out``, which is subtracted from every
particle at its pose in each model (partial signal subtraction on the fly, what
``relion_particle_subtract`` does before RELION's focused classification), and the rest is
scored against the model's inside:

    ls_k = Re sum w c (X_k - c P_out(A_k)) conj(P_in,k(A_k)) - 1/2 sum w c^2 |P_in,k(A_k)|^2

with ``A_k`` the particle's pose in model k and ``X_k`` the particle shifted by its shift there
(both the same in every model: :func:`shared_pose`), ``c`` its CTF and ``w`` the band's weights:
the least-squares score of the subtracted particle against the region alone. It differs from the
whole-particle score against the *composite* map ``V_out + V_k F`` only by the outside's own
score, the same in every model at one pose; the composite's is what is computed, so that it can
be summed over poses. Differences between the models outside the region (another part that
moves, a map's noise) then do not move a particle from one model to another.

The score is summed over the poses around the particle's (:func:`local_poses`: rotations within
:data:`MARGINAL_RADIUS` fine steps of the band on a lattice :data:`MARGINAL_REACH` steps deep,
shifts half the search's shift step), as
likelihoods under the noise the model choice assumes (``splitmerge.log_likelihoods``: white,
variance per pixel the particle's mean power in the band), and returned on the search's scale:
``sigma^2 / 2 log sum_j exp(2 ls_kj / sigma^2)``. The pose of a particle at low SNR is off by
several degrees, and the subunit's signal with it: at one pose the choice then follows that
pose's errors. Measured on ``bench/focused.py``'s sets (BENCHMARKS.md, "The focused choice summed
over each particle's local poses"): at SNR 0.05 94.2-94.8 % over three seeds where one pose gave
91.7-94.5 %, at SNR 0.1 99.1-99.2 % where it gave 98.8 % (one seed; true-pose limits 98.0 and 99.8 %). The
reach and the shifts matter, not a fine lattice: 33 rotations within 12° gain what 257 do.

One pose per particle, the same in every model (:func:`shared_pose`: its pose in the model its
whole-map search scored best), as RELION's focused classification keeps the consensus poses
(``--skip_align``): with each model's own pose, a particle whose outside fits one model's map
better is posed better there, and its score on the region follows that model (measured on
``bench/focused.py``'s set, where the outside varies: with each model's pose the run split the
distractor more than the subunit, 57 % after 4 iterations).

In: the particles, the K composite maps (transforms ready for projection), each particle's pose
per model. Out: scores ``(n, K)`` on the scale of the search's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.fourier.aberrations import shift_phases
from multirefine.fourier.fft import irfft2_centered
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.grids import local_rotations
from multirefine.refine.batch import (
    aberrations_for_rows,
    ctf_for_rows,
    origins_px_for_rows,
    rotations_for_rows,
)
from multirefine.refine.scoring import (
    SLICE_POINTS,
    Band,
    band_phase_ramp,
    band_slices,
    particle_terms,
    shift_grid,
)

__all__ = ["MARGINAL_RADIUS", "MARGINAL_REACH", "LocalPoses", "common_outside", "focused_scores", "local_poses",
           "outside_weights", "shared_pose", "subtracted_images"]

# The focused score is summed over the poses within this many of the band's fine steps of the
# particle's (MARGINAL_RADIUS), on a lattice of MARGINAL_REACH steps to that radius.
MARGINAL_RADIUS, MARGINAL_REACH = 4.0, 2


def _shares(weights: np.ndarray) -> np.ndarray:
    """Weights ``(K,)`` as shares summing to 1; equal where all are 0."""
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


def outside_weights(entries: list, n_models: int) -> np.ndarray:
    """``(K,)``: each model's share of the common outside, the weights of the particles its
    last map was made from (``LastReconstruction.entries``); equal where none are known."""
    weights = np.zeros(n_models)
    for model, _, _, w in entries:
        weights[model] += float(np.sum(w))
    return _shares(weights)


def shared_pose(rotations: np.ndarray, shifts: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's pose in the model it scores best in, ``scores`` ``(n, K)``, given to every
    model: ``rotations`` ``(n, K, 3, 3)`` and ``shifts`` ``(n, K, 2)`` with every model's entry that one."""
    best = np.argmax(scores, axis=1)
    rows, k = np.arange(len(best)), scores.shape[1]
    return (np.repeat(rotations[rows, best][:, None], k, axis=1), np.repeat(shifts[rows, best][:, None], k, axis=1))


@dataclass(frozen=True)
class LocalPoses:
    """The poses around a particle's pose over which its focused score is summed: rotations
    ``(J, 3, 3)`` (each right-multiplied into the pose) and shifts ``(S, 2)`` px (added)."""

    rotations: np.ndarray
    shifts_px: np.ndarray

    @classmethod
    def one(cls) -> LocalPoses:
        """The pose alone."""
        return cls(np.eye(3)[None], np.zeros((1, 2)))


def local_poses(radius_deg: float, shift_step_px: float, reach: int = MARGINAL_REACH) -> LocalPoses:
    """The local search's lattices around the pose: rotations within ``radius_deg``, ``reach``
    steps to it (:func:`~multirefine.geometry.grids.local_rotations`: 33 for a reach of 2, 123
    for 3), and the 3 x 3 shifts ``shift_step_px`` apart (the shift alone where 0)."""
    shifts = (shift_grid(math.sqrt(2) * shift_step_px, shift_step_px) if shift_step_px > 0 else torch.zeros(1, 2))
    return LocalPoses(local_rotations(radius_deg, radius_deg / reach), shifts.double().numpy())


def focused_scores(images_ft: torch.Tensor, ctf: torch.Tensor | None, composite_ft: torch.Tensor, rotations: np.ndarray,
                   shifts: np.ndarray, band: Band, local: LocalPoses | None = None, pad: int = 2) -> np.ndarray:
    """Each particle's score in every model ``(n, K)`` on the focus region (module docstring):
    ``composite_ft`` ``(K, P, P, P//2+1)`` each model's inside plus the common outside,
    ``rotations`` ``(n, K, 3, 3)`` and ``shifts`` ``(n, K, 2)`` px the particle's pose in each
    model, summed over the ``local`` poses around it (the pose alone where None)."""
    local = local or LocalPoses.one()
    device = composite_ft.device
    band = band.to(device)
    x, wc, wc2, power = particle_terms(images_ft.to(device), None if ctf is None else ctf.to(device), band)
    sigma2 = (power.double() / float(band.weight.sum())).clamp_min(1e-30)  # splitmerge.log_likelihoods' noise
    rot = torch.as_tensor(rotations, dtype=torch.float32, device=device)
    shift = torch.as_tensor(shifts, dtype=torch.float32, device=device)
    offsets = torch.as_tensor(local.rotations, dtype=torch.float32, device=device)
    shift_offsets = torch.as_tensor(local.shifts_px, dtype=torch.float32, device=device)
    k, m = composite_ft.shape[0], x.shape[1]
    rows = max(1, SLICE_POINTS // (len(shift_offsets) * m))  # particles at a time: their shifted copies
    out = np.empty((x.shape[0], k))
    for first in range(0, x.shape[0], rows):
        at = slice(first, first + rows)
        out[at] = _summed_rows(x[at], wc[at], wc2[at], sigma2[at], composite_ft, rot[at], shift[at], offsets,
                               shift_offsets, band, pad)
    return out


def _summed_rows(x, wc, wc2, sigma2, composite_ft, rot, shift, offsets, shift_offsets, band, pad) -> np.ndarray:
    """:func:`focused_scores` for a few particles, from their in-band terms (``particle_terms``)."""
    n, k, m = x.shape[0], composite_ft.shape[0], x.shape[1]
    chunk = max(1, SLICE_POINTS // max(1, n * m))  # local rotations per interpolation call
    out = np.empty((n, k))
    for model in range(k):
        moved = x[:, None] * band_phase_ramp(shift[:, model, None] + shift_offsets, band) * wc[:, None]  # (n, S, M)
        total = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, len(offsets), chunk):
            p = band_slices(composite_ft[model], rot[:, model, None] @ offsets[start : start + chunk], band, pad)
            half = 0.5 * (wc2[:, None] * (p.real**2 + p.imag**2)).sum(-1)  # (n, J)
            ls = torch.einsum("nsm,njm->nsj", moved, p.conj()).real - half[:, None]
            total = torch.logaddexp(total, torch.logsumexp((2 * ls.double() / sigma2[:, None, None]).reshape(n, -1), 1))
        out[:, model] = (0.5 * sigma2 * total).cpu().numpy()
    return out


def common_outside(maps: list[np.ndarray], focus: np.ndarray, particles_per_model) -> np.ndarray:
    """The models' common outside (module docstring) ``(D, D, D)``: each map times ``1 - focus``,
    averaged with the weights of their particles (equal where there are none)."""
    weights = _shares(np.asarray(particles_per_model, dtype=np.float64))
    outside = sum(w * np.asarray(m, dtype=np.float64) for w, m in zip(weights, maps)) * (1 - focus)
    return outside.astype(np.float32)


def subtracted_images(stack, table, outside: np.ndarray, rows: np.ndarray, intensity_column: str | None = None
                      ) -> np.ndarray:
    """The images of stack rows ``rows`` ``(n, D, D)`` less the projection of ``outside`` (in the
    particles' units) at each one's pose and origin in ``table``, times its CTF and, where
    ``intensity_column`` names one (``--scale``), its intensity scale: what is left is the focus
    region's signal and the noise (relion_particle_subtract's output)."""
    meta = table.iloc[rows]
    box, apix = stack.box_size, stack.pixel_size_angstrom
    ft = extract_central_slices(prepare_volume_ft(torch.from_numpy(outside)), rotations_for_rows(meta), box)
    ft = shift_images_ft(ft, -origins_px_for_rows(meta, apix))  # to where the particle lies in its image
    if stack.has_ctf:  # as the images hold it: the even aberrations in the CTF, the odd ones' phase
        odd, even = aberrations_for_rows(meta, box) if stack.aberrations else (None, None)
        ft = ft * ctf_for_rows(meta, box, even_phase=even)
        if odd is not None:
            ft = shift_phases(ft, odd)
    if intensity_column is not None and intensity_column in meta.columns:
        ft = ft * torch.as_tensor(meta[intensity_column].to_numpy(copy=True), dtype=torch.float32)[:, None, None]
    images = torch.as_tensor(np.asarray(stack[rows]), dtype=torch.float32)
    return (images - irfft2_centered(ft, box)).numpy()
