"""Intensity scales: references put in the units of the particles they are compared with.

The least-squares score compares particles with references in the same units. Starting
maps come in any units and particles are normalised (noise variance 1), so before the
first search each starting map is scaled to the particles by least squares
(:func:`reference_scales`: poses by ``cc`` from the polar global pass on a sample, then
:func:`multirefine.refine.scoring.scale_terms`); after that the references are the
reconstructions, which are in the units of the raw particles by construction. With
``--usefilt`` the references are put in the filtered stack's units (:func:`filtered_scale`,
a regression of filtered on raw images).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.refine.batch import load_batch
from multirefine.refine.plan import SearchPlan
from multirefine.refine.polar import PolarReferences, search_global_polar
from multirefine.refine.scoring import Band, scale_terms

__all__ = [
    "SCALE_SAMPLE",
    "ScaledReferences",
    "filtered_scale",
    "iteration_scales",
    "reference_scales",
    "sample_rows",
    "scaled_references",
]

log = logging.getLogger(__name__)

SCALE_SAMPLE = 500  # particles used to estimate intensity scales


def sample_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE)).round().astype(np.int64))


def reference_scales(search_stack, plan: SearchPlan, volumes: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per map of ``volumes`` ``(K, D, D, D)``, the least-squares factor from reference to
    particle units ``(K,)``.

    Particles of a sample are given to the model, pose and shift they correlate with best
    (``cc``, the polar global pass of ``plan``); a model chosen by fewer than 50 (or with a
    non-positive fit) gets the factor fitted over all of them.
    """
    device = volumes.device
    volumes_ft = torch.stack([prepare_volume_ft(v) for v in volumes])
    k = volumes_ft.shape[0]
    references = plan.references(volumes_ft)
    models, crosses, powers = [], [], []
    for chunk in np.array_split(sample_rows(len(search_stack)), max(1, math.ceil(SCALE_SAMPLE / batch_size))):
        batch = load_batch(search_stack, chunk, device=device, center=False)
        found = search_global_polar(batch.images_ft, batch.ctf, references, plan.coarse_shifts_px, score="cc")
        m = found.model[:, 0]
        c, p = scale_terms(batch.images_ft, batch.ctf, volumes_ft, plan.band, m, found.rotations[:, 0],
                           found.shift_px[:, 0])
        models.append(m.cpu().numpy())
        crosses.append(c.double().cpu().numpy())
        powers.append(p.double().cpu().numpy())
    model, cross, power = (np.concatenate(x) for x in (models, crosses, powers))
    overall = cross.sum() / max(power.sum(), 1e-300)
    if not overall > 0:
        log.warning("the starting maps do not correlate with the particles; their intensity is kept")
        return np.ones(k)
    scales = np.full(k, overall)
    for m_index in range(k):
        own = model == m_index
        if own.sum() >= 50 and cross[own].sum() > 0:
            scales[m_index] = cross[own].sum() / power[own].sum()
    return scales


def filtered_scale(stack, search_stack, band: Band, device) -> float:
    """Least-squares factor from raw to ``--usefilt`` images within the search band."""
    rows = sample_rows(len(stack))
    raw = band.gather(load_batch(stack, rows, device=device, center=False).images_ft)
    filtered = band.gather(load_batch(search_stack, rows, device=device, center=False).images_ft)
    w = band.weight.to(raw.device)
    numerator = float((w * (filtered * raw.conj()).real).sum())
    denominator = float((w * raw.abs() ** 2).sum())
    return numerator / denominator if denominator > 0 and numerator > 0 else 1.0


def iteration_scales(iteration: int, stack, search_stack, plan: SearchPlan, volumes: torch.Tensor,
                     batch_size: int) -> np.ndarray:
    """The factor per model ``(K,)`` that puts this iteration's references ``volumes``
    ``(K, D, D, D)`` in the units of the particles searched: the starting maps' least-squares
    fit in iteration 1, the ``--usefilt`` regression after it, else 1."""
    k = len(volumes)
    if iteration == 1:
        scales = reference_scales(search_stack, plan, volumes, batch_size)
        log.info("starting maps scaled to the particles' intensity: %s", ", ".join(f"x{a:.3g}" for a in scales))
        return scales
    if search_stack is not stack:
        scales = np.full(k, filtered_scale(stack, search_stack, plan.band, volumes.device))
        log.debug("references scaled to the --usefilt stack: x%.3g", scales[0])
        return scales
    return np.ones(k)


@dataclass
class ScaledReferences:
    """One iteration's references: the maps' transforms, their polar slices, their scales."""

    volumes_ft: torch.Tensor  # (K, P, P, P//2+1)
    polar: PolarReferences
    scales: np.ndarray  # (K,)
    maps: list[np.ndarray]  # the maps searched (iteration 1: the starting maps in particle units)


def scaled_references(stack, search_stack, plan: SearchPlan, maps: list[np.ndarray], iteration: int,
                      batch_size: int, device: torch.device) -> ScaledReferences:
    """The references of ``maps`` for an iteration of ``plan``, in the search stack's units
    (:func:`iteration_scales`)."""
    volumes = torch.stack([torch.from_numpy(m) for m in maps]).to(device)
    scales = iteration_scales(iteration, stack, search_stack, plan, volumes, batch_size)
    if not np.allclose(scales, 1.0):
        volumes = volumes * torch.as_tensor(scales, dtype=torch.float32, device=device)[:, None, None, None]
        if iteration == 1:  # a model left empty keeps its map, now in particle units
            maps = [m * np.float32(a) for m, a in zip(maps, scales)]
    volumes_ft = torch.stack([prepare_volume_ft(v) for v in volumes])
    return ScaledReferences(volumes_ft, plan.references(volumes_ft), scales, maps)
