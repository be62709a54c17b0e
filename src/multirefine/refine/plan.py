"""The search plan of an iteration: the band searched and the steps in angle and shift.

The band follows the resolution (``--targetres`` fixes it; otherwise the worst model's
gold-standard FSC 0.143, :func:`next_band`, as RELION's auto-refine does), and the angular
steps follow the band and the particle radius (``--speed`` scales them). In: the box, the
pixel size, the band's resolution, the particle radius, the symmetries. Out: a
:class:`SearchPlan`, whose :meth:`SearchPlan.search` runs the global polar pass and two
local passes on a batch of particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.grids import projection_directions
from multirefine.refine.polar import (
    PolarGrid,
    PolarReferences,
    make_polar_grid,
    make_polar_references,
)
from multirefine.refine.scoring import Band, PosePrior, SearchResult, make_band, shift_grid
from multirefine.refine.search import refine_assignments

__all__ = ["SearchPlan", "angular_steps", "next_band", "plan_search", "prior_result"]


def angular_steps(band_resolution: float, radius_angstrom: float, speed: int) -> tuple[float, float]:
    """(coarse, fine) angular steps in degrees for a band and particle radius.

    The fine step moves the particle's edge by a third of the band's resolution;
    ``--speed`` 5 is that, larger is coarser. The coarse (global) step is 2.5 x fine,
    between 7.5 and 30 degrees.
    """
    fine = math.degrees(band_resolution / (3 * radius_angstrom)) * speed / 5
    fine = float(np.clip(fine, 0.5, 12.0))
    coarse = float(np.clip(2.5 * fine, 7.5, 30.0))
    return coarse, fine


@dataclass
class SearchPlan:
    """One iteration's search at one resolution: its band, steps and grids."""

    band_resolution_angstrom: float
    band_radius_px: float
    coarse_step_deg: float  # the global (polar) pass
    fine_step_deg: float  # the precision the band asks for; the last local pass goes at least this fine
    shift_step_px: float
    directions: list[torch.Tensor]  # per model's symmetry: projection directions at psi 0 (n, 3, 3)
    polar_grid: PolarGrid
    coarse_shifts_px: torch.Tensor  # (S, 2)
    shift_offsets_px: list[torch.Tensor]  # one per local pass
    band: Band  # the local passes' pixels
    radius_px: float = 0.0  # the particle's (sets a pose prior's shift SD)

    def describe(self) -> str:
        """The grid searched, in words (``-v 1``)."""
        grid = self.polar_grid
        return (f"global pass over {', '.join(str(len(d)) for d in self.directions)} directions (per model) x "
                f"{grid.n_inplane} in-plane angles x {len(self.coarse_shifts_px)} shifts, "
                f"{len(grid.radii)} radii x {grid.n_angles} angles; local passes at "
                f"{self.local_steps_deg[0]:.2f} and {self.local_steps_deg[1]:.2f} deg, shifts in steps of "
                f"{self.shift_step_px / 2:.2f} and {self.shift_step_px / 4:.2f} px")

    @property
    def local_steps_deg(self) -> tuple[float, float]:
        """The two local passes' angular steps: a third of the global step, then the fine step
        or half the first pass's, whichever is finer. (When the second pass went at the fine
        step alone, it was no finer than the first wherever the fine step is over 2.5 degrees,
        i.e. in nearly every iteration of the benchmark sets; half the first pass's step ended
        6-7 % closer to the true poses at 3.2, 4 and 6 Å for the same cost,
        ``bench/local_passes.py``.)"""
        first = self.coarse_step_deg / 3
        return first, min(self.fine_step_deg, first / 2)

    def references(self, volumes_ft: torch.Tensor) -> PolarReferences:
        """Polar references of ``volumes_ft`` ``(K, P, P, P//2+1)``, model m over ``directions[m]``."""
        return make_polar_references(volumes_ft, self.directions, self.polar_grid)

    def search(self, images_ft: torch.Tensor, ctf: torch.Tensor | None, references: PolarReferences,
               volumes_ft: torch.Tensor, score: str, top: int = 1,
               priors: tuple[torch.Tensor, torch.Tensor] | None = None,
               sigma_ang_deg: float | None = None, hypotheses: int = 0) -> SearchResult:
        """Global polar pass, then two local passes (:attr:`local_steps_deg`; each within the
        global step, then within twice its own step) around the best. With ``priors``
        (rotations ``(n, K, 3, 3)`` and shifts ``(n, K, 2)`` px: each particle's pose in every
        model, e.g. a consensus refinement's), no global pass: the local passes start there
        (RELION's local searches). With ``sigma_ang_deg`` too (``--sigma_ang``), a Gaussian
        prior centred there weights them (:class:`multirefine.refine.scoring.PosePrior`; the
        shifts' SD is the displacement of the particle's edge by that angle) and the first
        pass stays within 3 SD. With ``hypotheses`` H > 1, each model's best and the global pass's
        next H - 1 candidates are refined as tracks, one global step apart at least
        (:func:`multirefine.refine.search.refine_assignments`)."""
        first, second = self.local_steps_deg
        window, prior = self.coarse_step_deg, None
        if priors is not None and sigma_ang_deg:
            prior = PosePrior(*priors, sigma_ang_deg, max(0.5, math.radians(sigma_ang_deg) * self.radius_px))
            window = min(window, 3 * sigma_ang_deg)
            first = min(first, window / 2)
            second = min(second, first / 2)
        return refine_assignments(
            images_ft, ctf, references, volumes_ft,
            coarse_shifts_px=self.coarse_shifts_px,
            local_range_deg=[window, 2 * second],
            local_step_deg=[first, second],
            fine_shift_offsets_px=self.shift_offsets_px,
            candidates=2, band=self.band, score=score, top=top,
            previous=None if priors is None else prior_result(*priors),
            prior=prior, hypotheses=hypotheses, separation_deg=self.coarse_step_deg,
        )


def prior_result(rotations: torch.Tensor, shifts_px: torch.Tensor) -> SearchResult:
    """A search result that holds given poses (``(n, K, 3, 3)``, shifts ``(n, K, 2)`` px) as
    each particle's best in every model, scores 0: where local passes start from priors."""
    n, k = rotations.shape[:2]
    rotations, shifts_px = rotations.to(torch.float32), shifts_px.to(torch.float32)
    zeros = torch.zeros((n, 1), dtype=torch.int64, device=rotations.device)
    return SearchResult(zeros, zeros, rotations[:, :1], shifts_px[:, :1], torch.zeros((n, 1), device=rotations.device),
                        torch.zeros((n, k), device=rotations.device), rotations, shifts_px)


def plan_search(
    box: int, apix: float, band_res: float, radius_px: float, speed: int, symmetries: list[str],
    max_shift_px: float, shrink: int = 1, device: torch.device | str = "cpu",
) -> SearchPlan:
    """The search for a band of resolution ``band_res`` (Å; kept short of Nyquist, and of
    the Nyquist of a box shrunk by ``shrink``) and a particle of radius ``radius_px``.

    The global pass runs on a polar grid (:mod:`multirefine.refine.polar`): each model's
    projection directions over its asymmetric unit, every in-plane angle from one FFT.
    Global and local passes use the full band. (A global pass at a band matched to its
    coarse step, 1.25 x coarser, was 1.6 x faster at 8 Å and classified as well on 1000
    particles, 90.9 vs 91.2 %; on the 6000-particle conformational set it ended at 81.5 %,
    the full band at 82.3 %, runs there spread by ~10 points, so it is left out until several
    seeds can rank it.) Shifts in steps of a quarter of the band's resolution.
    """
    band_res = max(band_res, 2 * apix * max(shrink, 1) * 1.05)
    band_radius = min(box * apix / band_res, box / 2 - 1)
    coarse, fine = angular_steps(band_res, radius_px * apix, speed)
    directions = []
    for sym in symmetries:
        rot, tilt = projection_directions(coarse, sym)
        directions.append(torch.as_tensor(
            euler_to_matrix(rot, tilt, np.zeros_like(rot)), dtype=torch.float32, device=device
        ))
    shift_step_px = max(1.0, band_res / apix / 4)
    return SearchPlan(
        band_resolution_angstrom=band_res,
        band_radius_px=band_radius,
        coarse_step_deg=coarse,
        fine_step_deg=fine,
        shift_step_px=shift_step_px,
        directions=directions,
        polar_grid=make_polar_grid(box, band_radius, coarse, device=device),
        coarse_shifts_px=shift_grid(max_shift_px, shift_step_px, device=device),
        shift_offsets_px=[
            shift_grid(shift_step_px, shift_step_px / 2, device=device),
            shift_grid(shift_step_px / 2, shift_step_px / 4, device=device),
        ],
        band=make_band(box, band_radius, device=device),
        radius_px=radius_px,
    )


def next_band(band_res: float, resolutions: list[float], targetres: float | None) -> float:
    """The next iteration's search resolution: ``--targetres``, or the worst model's FSC 0.143."""
    finite = [r for r in resolutions if np.isfinite(r)]
    return band_res if targetres is not None or not finite else max(finite)
