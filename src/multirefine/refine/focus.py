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
the least-squares score of the subtracted particle against the region alone.
Differences between the models outside the region (another part that moves, a map's noise)
then do not move a particle from one model to another.

One pose per particle, the same in every model (:func:`shared_pose`: its pose in the model its
whole-map search scored best), as RELION's focused classification keeps the consensus poses
(``--skip_align``): with each model's own pose, a particle whose outside fits one model's map
better is posed better there, and its score on the region follows that model (measured on
``bench/focused.py``'s set, where the outside varies: with each model's pose the run split the
distractor more than the subunit, 57 % after 4 iterations).

In: the particles, one common outside and K insides (transforms ready for projection), each
particle's pose per model. Out: scores ``(n, K)`` on the scale of the search's.
"""

from __future__ import annotations

import numpy as np
import torch

from multirefine.fourier.aberrations import shift_phases
from multirefine.fourier.fft import irfft2_centered
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.shift import shift_images_ft
from multirefine.refine.batch import (
    aberrations_for_rows,
    ctf_for_rows,
    origins_px_for_rows,
    rotations_for_rows,
)
from multirefine.refine.scoring import Band, band_phase_ramp, band_slices, particle_terms

__all__ = ["common_outside", "focused_scores", "outside_weights", "shared_pose", "subtracted_images"]


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


def focused_scores(images_ft: torch.Tensor, ctf: torch.Tensor | None, inside_ft: torch.Tensor, outside_ft: torch.Tensor,
                   rotations: np.ndarray, shifts: np.ndarray, band: Band, pad: int = 2) -> np.ndarray:
    """Each particle's score in every model ``(n, K)`` on the focus region (module docstring):
    ``inside_ft`` ``(K, P, P, P//2+1)`` the models' insides, ``outside_ft`` ``(P, P, P//2+1)``
    the common outside, ``rotations`` ``(n, K, 3, 3)`` and ``shifts`` ``(n, K, 2)`` px the
    particle's pose in each model."""
    device = inside_ft.device
    band = band.to(device)
    x, wc, wc2, _ = particle_terms(images_ft.to(device), None if ctf is None else ctf.to(device), band)
    rot = torch.as_tensor(rotations, dtype=torch.float32, device=device)
    shift = torch.as_tensor(shifts, dtype=torch.float32, device=device)
    out = torch.empty((x.shape[0], inside_ft.shape[0]), dtype=torch.float32, device=device)
    for k in range(inside_ft.shape[0]):
        inside = band_slices(inside_ft[k], rot[:, k], band, pad)  # (n, M)
        subtracted = x * band_phase_ramp(shift[:, k], band) * wc - wc2 * band_slices(outside_ft, rot[:, k], band, pad)
        out[:, k] = (subtracted * inside.conj()).real.sum(-1) - 0.5 * (wc2 * (inside.real**2 + inside.imag**2)).sum(-1)
    return out.cpu().numpy()


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
