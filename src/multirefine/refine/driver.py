"""The multi-model refinement loop (DESIGN.md, "The iteration").

Each iteration:

1. references: every model's central slices over the projection directions of its own
   symmetry's asymmetric unit, on a polar grid within the search band
   (:mod:`multirefine.refine.polar`: every in-plane angle comes from one FFT);
2. search (:mod:`multirefine.refine.search`): every particle of the search stack
   (``--usefilt`` or ``--input``) against model x orientation x in-plane angle x shift,
   coarse (polar) then local (Cartesian band pixels), CTF on the particle side;
3. model choice: each particle is scored again at its pose in every model against the
   models' last maps rebuilt without it (without its fold, a twelfth of the particles)
   and goes to the best;
4. reconstruction: per model and half-set, the raw particles (``--input``) at their new
   poses, each particle in its best model (``--soft``: in every model, weighted by its
   posterior), the best ``--m3dkeep`` of each model, symmetry imposed; gold-standard
   half-map FSC and the full map Wiener-filtered by it;
   split and merge (three or more models, hard assignment; iteration 3 and every other one
   after it, not in the last two; ``--nosplitmerge``: never): the most redundant model is
   merged into the others and re-seeded from half of the largest, and that is kept if,
   after three rounds of classification at fixed poses for it and for the iteration's own
   assignment alike, its cross-validated likelihood is higher
   (:mod:`multirefine.refine.splitmerge`, :func:`_split_and_merge`);
5. post-processing: a soft spherical mask (solvent flattening), mutual FSC,
   normalisation by ``--mass`` of the maps written (starting maps from different files are first aligned to
   map 1 with a hand check, :mod:`multirefine.refine.postprocess`);
6. the run folder gets ``threed_II_MM.mrc``, ``particles_II.star``, class averages
   (``classes_II.mrcs``), FSC curves and figures, the convergence statistics
   (:mod:`multirefine.refine.runfolder`) and ``state.npz``, from which ``--continue``
   goes on (:mod:`multirefine.refine.state`).

The search band follows the resolution: ``--targetres`` fixes it; otherwise it starts at
the resolution the starting maps hold and follows the gold-standard FSC (0.143) of the
worst model, as RELION's auto-refine does. Steps in angle follow from the band and the
particle radius (``--speed`` scales them).

Intensity scale. The least-squares score compares particles with references in the same
units. Starting maps come in any units and particles are normalised (noise variance 1), so
before the first search each starting map is scaled to the particles by least squares
(:func:`multirefine.refine.search.scale_terms`, poses by ``cc`` from the polar global pass
on a sample); after that the
references are the reconstructions, which are in the units of the raw particles by
construction (``--mass`` rescales only the maps written). With ``--usefilt`` the references
are also put in the filtered stack's units (a regression of filtered on raw images).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
from multirefine.fourier.masks import flatten_solvent, soft_sphere_mask, solvent_level
from multirefine.fourier.projection import pad_volume_ft, prepare_volume_ft
from multirefine.fourier.reconstruction import FourierAccumulator
from multirefine.geometry.euler import euler_to_matrix, matrix_to_euler, rotation_change_deg
from multirefine.geometry.grids import projection_directions
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.io.atomic import atomic_path
from multirefine.io.maps import write_map, write_stack
from multirefine.io.star import write_particles_star
from multirefine.parallel import Executor, InProcess
from multirefine.refine import runfolder
from multirefine.refine.batch import load_batch
from multirefine.refine.classes import class_averages
from multirefine.refine.polar import (
    PolarGrid,
    PolarReferences,
    make_polar_grid,
    make_polar_references,
    search_global_polar,
)
from multirefine.refine.postprocess import (
    ALIGNMENT_MARGIN,
    align_volume,
    mutual_fsc,
    normalize_by_mass,
)
from multirefine.refine.reconstruct import (
    accumulate_in_shards,
    gold_standard_reconstruction,
    half_set_of_rows,
    insert_rows,
)
from multirefine.refine.search import (
    Band,
    SearchResult,
    make_band,
    refine_assignments,
    scale_terms,
    search_local,
    shift_grid,
)
from multirefine.refine.seeding import particle_radius_px
from multirefine.refine.splitmerge import (
    MIN_MODELS,
    classification_log_likelihood,
    log_likelihoods,
    removal_costs,
    trial_assignment,
)
from multirefine.refine.state import Layer, RunState, load_state, save_state
from multirefine.report.html import write_report
from multirefine.report.plots import plot_convergence, plot_fsc

__all__ = [
    "IterationStats",
    "RefineOptions",
    "RefinementResult",
    "SearchPlan",
    "assignment_table",
    "filtered_scale",
    "plan_search",
    "run_refinement",
    "write_report_safely",
]

log = logging.getLogger(__name__)


@dataclass
class RefineOptions:
    """Every resolved option of a run (written to ``0_refine_parms.json``)."""

    input: str
    path: str
    symmetries: list[str]
    iterations: int = 5
    usefilt: str | None = None
    targetres: float | None = None
    speed: int = 5
    sep: int = 1
    classiter: int = 0
    m3dkeep: float = 0.9
    classkeep: float = 0.85
    mass_kda: list[float] | None = None
    max_shift_px: float = 5.0
    shrink: int = 1
    batch_size: int = 500
    device: str = "cpu"
    align_maps: bool = True
    seed: int = 0
    score: str = "ls"
    soft: bool = False
    start_maps: list[str] = field(default_factory=list)
    seeding: str = "models"
    apix: float | None = None  # --apix: the pixel size given, over the particle file's
    single: bool = True  # each model's particles refined on their own afterwards (--nosingle: not)
    single_iterations: int = 8
    single_start_resolution_angstrom: float = 30.0
    split_merge: bool = True  # --nosplitmerge: not (multirefine.refine.splitmerge)


@dataclass
class IterationStats:
    iteration: int
    seconds: float
    band_resolution_angstrom: float
    coarse_step_deg: float
    fine_step_deg: float
    particles_per_model: list[int]
    fraction_changed_model: float | None
    resolution_0143_angstrom: list[float]
    fsc_to_previous_0143_angstrom: list[float] | None
    mean_score: float
    # The particles each map was made from (weights summed) after the --m3dkeep cut; None in
    # convergence.json files written before this field existed.
    particles_in_maps: list[float] | None = None
    # The split and merge trial of this iteration (models from 1): dissolved, split, gain
    # (cross-validated log-likelihood), kept; None where none was tried.
    split_merge: dict | None = None


@dataclass
class RefinementResult:
    """A finished run: its statistics and where it ended."""

    stats: list[IterationStats]
    table: pd.DataFrame  # the last assignment, one row per input particle (RELION columns)
    maps: list[np.ndarray]  # the last maps, in particle units (masked; not normalised by --mass)


def _angular_steps(band_resolution: float, radius_angstrom: float, speed: int) -> tuple[float, float]:
    """(coarse, fine) angular steps in degrees for a band and particle radius.

    The fine step moves the particle's edge by a third of the band's resolution;
    ``--speed`` 5 is that, larger is coarser. The coarse (global) step is 2.5 x fine,
    between 7.5 and 30 degrees.
    """
    fine = math.degrees(band_resolution / (3 * radius_angstrom)) * speed / 5
    fine = float(np.clip(fine, 0.5, 12.0))
    coarse = float(np.clip(2.5 * fine, 7.5, 30.0))
    return coarse, fine


def assignment_table(
    metadata: pd.DataFrame, model: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray,
    score: np.ndarray, posterior: np.ndarray, halves: np.ndarray, pixel_size: float,
) -> pd.DataFrame:
    """The input table with this iteration's assignment in RELION's columns."""
    rot, tilt, psi = matrix_to_euler(rotations)
    table = metadata.copy()
    table["rlnClassNumber"] = model + 1
    table["rlnAngleRot"] = rot
    table["rlnAngleTilt"] = tilt
    table["rlnAnglePsi"] = psi
    table["rlnOriginXAngst"] = shifts_px[:, 0] * pixel_size
    table["rlnOriginYAngst"] = shifts_px[:, 1] * pixel_size
    table["rlnMaxValueProbDistribution"] = posterior
    table["rlnLogLikeliContribution"] = score
    table["rlnRandomSubset"] = halves
    return table


def _posteriors(model_scores: np.ndarray, image_power: np.ndarray, n_pixels: float, score: str) -> np.ndarray:
    """Posterior of each model per particle ``(n, K)`` from its best score for each model
    (:func:`multirefine.refine.splitmerge.log_likelihoods`)."""
    return _normalised(log_likelihoods(model_scores, image_power, n_pixels, score))


def _normalised(log_likelihood: np.ndarray) -> np.ndarray:
    """Per row of ``(n, K)`` log-likelihoods, the probabilities they give (equal priors)."""
    z = log_likelihood - log_likelihood.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


SCALE_SAMPLE = 500  # particles used to estimate intensity scales


def _sample_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE)).round().astype(np.int64))


def _reference_scales(search_stack, plan: SearchPlan, volumes_ft: torch.Tensor, batch_size: int,
                      device) -> np.ndarray:
    """Per model of ``volumes_ft``, the least-squares factor from reference to particle units ``(K,)``.

    Particles of a sample are given to the model, pose and shift they correlate with best
    (``cc``, the polar global pass of ``plan``); a model chosen by fewer than 50 (or with a
    non-positive fit) gets the factor fitted over all of them.
    """
    k = volumes_ft.shape[0]
    references = plan.references(volumes_ft)
    models, crosses, powers = [], [], []
    for chunk in np.array_split(_sample_rows(len(search_stack)), max(1, math.ceil(SCALE_SAMPLE / batch_size))):
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
    rows = _sample_rows(len(stack))
    raw = band.gather(load_batch(stack, rows, device=device, center=False).images_ft)
    filtered = band.gather(load_batch(search_stack, rows, device=device, center=False).images_ft)
    w = band.weight.to(raw.device)
    numerator = float((w * (filtered * raw.conj()).real).sum())
    denominator = float((w * raw.abs() ** 2).sum())
    return numerator / denominator if denominator > 0 and numerator > 0 else 1.0


# Split and merge (:func:`_split_and_merge`) is tried in iteration SPLIT_MERGE_FIRST (the maps
# of the first iterations come from seeds) and every SPLIT_MERGE_EVERY-th after it, not in the
# last SPLIT_MERGE_SETTLE iterations, so that a trial kept has iterations to settle in; and not
# while fewer than SPLIT_MERGE_MOVED of the particles have changed model since a trial that
# was not kept (the same trial would be tried on nearly the same assignment). A trial costs
# about half an iteration (three-state benchmark set at 7 Å: 115 s against 82 s for the rest).
SPLIT_MERGE_FIRST = 3
SPLIT_MERGE_EVERY = 2
SPLIT_MERGE_SETTLE = 2
SPLIT_MERGE_MOVED = 0.05
# A trial is kept only if it gains more than this per particle (cross-validated log-likelihood):
# from an assignment that is right, the rounds at fixed poses can bring the trial back to
# where it started, and then the two differ by noise (+0.001 per particle in
# tests/refine/test_splitmerge.py); the trials kept on the three-state set gained 0.66-0.81.
SPLIT_MERGE_MIN_GAIN = 0.02
SPLIT_MERGE_ROUNDS = 3  # rounds of classification at fixed poses given to a trial and to what it competes with

# Folds of the model choice: each particle's model is chosen against maps rebuilt without its
# fold, so each such map keeps 11/12 of its particles. More folds cost one reconstruction per
# fold and model per iteration.
CHOICE_FOLDS = 12


@dataclass
class _LastReconstruction:
    """What went into each model's last map, so that a fold of particles can be taken out."""

    totals: list[FourierAccumulator | None]  # per model, both half-sets; None: the map was kept as it was
    inverse_ssnr: list[np.ndarray | None]  # the full map's Wiener filter, per model
    maps: list[np.ndarray]  # the maps as made (masked, in particle units)
    entries: list[tuple[int, object, np.ndarray, np.ndarray]]  # (model, stack with the poses, rows, weights)


def _fold_edges(n: int, folds: int) -> np.ndarray:
    """Row boundaries of ``folds`` contiguous folds of ``n`` particles."""
    return np.linspace(0, n, min(folds, n) + 1).round().astype(np.int64)


def _leave_out_volumes(
    last: _LastReconstruction, start: int, stop: int, operators: list[torch.Tensor], mask_radius_px: float,
    band_radius: float, scales: np.ndarray, device,
) -> torch.Tensor:
    """The models' last maps rebuilt without stack rows ``[start, stop)`` (the same Wiener
    filter, mask and scale), ready for projection ``(K, P, P, P//2+1)``, within the search
    band: each is rebuilt on the smallest box that holds the band (the Fourier samples are
    the same, the pixel coarser) and its transform padded back with zeros. With no row left
    out and the whole box kept, each is the model's map exactly: reconstructions are linear
    in the accumulators."""
    out = []
    removed = None  # one buffer for the fold's contribution, reused by every model
    for m_index, total in enumerate(last.totals):
        box, pad = len(last.maps[m_index]), 2 if total is None else total.pad
        if total is None:
            volume_ft = prepare_volume_ft(torch.from_numpy(last.maps[m_index]).to(device), pad)
        else:
            small = min(box, 2 * math.ceil(band_radius + 2))
            rest = total.cropped(small)
            pieces = [
                (source, rows[inside], weights[inside])
                for model, source, rows, weights in last.entries
                if model == m_index and (inside := (rows >= start) & (rows < stop)).any()
            ]
            if pieces:
                if removed is None:
                    removed = FourierAccumulator.zeros(box, pad, device=total.data.device)
                else:
                    removed.data.zero_()
                    removed.weight.zero_()
                for source, rows, weights in pieces:
                    # Pixels beyond small / 2 + 1 reach no voxel of the small box's sphere.
                    insert_rows(removed, source, rows, weights, 256, device, max_radius=small / 2 + 1)
                taken = removed.cropped(small)
                rest = rest - taken
            inverse_ssnr = last.inverse_ssnr[m_index][: small // 2 + 1]
            mask = soft_sphere_mask(small, mask_radius_px * small / box, 3.0 * small / box, device=rest.data.device)
            volume_ft = prepare_volume_ft(flatten_solvent(rest.reconstruct(operators[m_index], inverse_ssnr), mask), pad)
        out.append(pad_volume_ft(volume_ft.to(device) * float(scales[m_index]), pad * box))
    return torch.stack(out)


def _choice_scores(images_ft: torch.Tensor, ctf: torch.Tensor | None, volumes_ft: torch.Tensor, rotations: np.ndarray,
                   shifts: np.ndarray, band: Band, score: str) -> np.ndarray:
    """Each particle's score for every model at its pose there ``(n, K)`` against ``volumes_ft``."""
    n, k = rotations.shape[:2]
    result = search_local(
        images_ft, ctf, volumes_ft, band,
        torch.as_tensor(rotations, dtype=torch.float32), torch.as_tensor(shifts, dtype=torch.float32),
        torch.arange(k).expand(n, -1), torch.eye(3)[None], torch.zeros(1, 2), score=score,
    )
    return result.model_scores.cpu().numpy()


class _FoldChooser:
    """Scores particles at given poses in every model against the models' last maps rebuilt
    without each particle's fold (:data:`CHOICE_FOLDS` folds of the stack's rows). Rows come
    in order, so each fold's maps are made once."""

    def __init__(self, last: _LastReconstruction, plan: SearchPlan, fold_maps: _FoldMaps, n: int,
                 score: str) -> None:
        self.last, self.plan, self.fold_maps, self.score = last, plan, fold_maps, score
        self.edges = _fold_edges(n, CHOICE_FOLDS)
        self.fold_of = np.searchsorted(self.edges, np.arange(n), side="right") - 1
        self.fold, self.volumes_ft = -1, None

    def scores(self, batch, rows: np.ndarray, rotations: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """``(len(rows), K)`` scores of a loaded batch of stack rows ``rows`` at poses
        ``rotations`` ``(len(rows), K, 3, 3)`` and ``shifts`` ``(len(rows), K, 2)``."""
        out = np.zeros((len(rows), len(self.last.maps)))
        for fold in np.unique(self.fold_of[rows]):
            if fold != self.fold:
                self.volumes_ft = _leave_out_volumes(
                    self.last, self.edges[fold], self.edges[fold + 1], self.fold_maps.operators,
                    self.fold_maps.mask_radius_px, self.plan.band_radius_px, self.fold_maps.scales,
                    batch.images_ft.device,
                )
                self.fold = fold
            sel = np.nonzero(self.fold_of[rows] == fold)[0]
            index = torch.as_tensor(sel, device=batch.images_ft.device)
            out[sel] = _choice_scores(
                batch.images_ft[index], None if batch.ctf is None else batch.ctf[index], self.volumes_ft,
                rotations[sel], shifts[sel], self.plan.band, self.score,
            )
        return out


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

    def intensity_scales(self, search_stack, volumes: torch.Tensor, batch_size: int) -> np.ndarray:
        """Per map of ``volumes`` ``(K, D, D, D)``, the least-squares factor to the units of the
        particles of ``search_stack`` ``(K,)`` (:func:`_reference_scales`)."""
        volumes_ft = torch.stack([prepare_volume_ft(v) for v in volumes])
        return _reference_scales(search_stack, self, volumes_ft, batch_size, volumes.device)

    def search(self, images_ft: torch.Tensor, ctf: torch.Tensor | None, references: PolarReferences,
               volumes_ft: torch.Tensor, score: str, top: int = 1) -> SearchResult:
        """Global polar pass, then two local passes (:attr:`local_steps_deg`; each within the
        global step, then within twice its own step) around the best."""
        first, second = self.local_steps_deg
        return refine_assignments(
            images_ft, ctf, references, volumes_ft,
            coarse_shifts_px=self.coarse_shifts_px,
            local_range_deg=[self.coarse_step_deg, 2 * second],
            local_step_deg=[first, second],
            fine_shift_offsets_px=self.shift_offsets_px,
            candidates=2, band=self.band, score=score, top=top,
        )


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
    coarse, fine = _angular_steps(band_res, radius_px * apix, speed)
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
    )


def _next_band(band_res: float, resolutions: list[float], targetres: float | None) -> float:
    """The next iteration's search resolution: ``--targetres``, or the worst model's FSC 0.143."""
    finite = [r for r in resolutions if np.isfinite(r)]
    return band_res if targetres is not None or not finite else max(finite)


def _layer_stacks(stack, layers: list[Layer], halves: np.ndarray, apix: float) -> tuple[list[pd.DataFrame], list]:
    """Each layer's poses as a RELION table, and the stack with that table."""
    tables = [assignment_table(stack.metadata, lm, lr, ls, lsc, lw, halves, apix) for lm, lr, ls, lsc, lw in layers]
    return tables, [stack.with_metadata(t) for t in tables]


@dataclass
class _Reconstruction:
    maps: list[np.ndarray]  # masked, in particle units
    fsc_curves: list[np.ndarray]  # half-map FSC per model
    resolutions: list[float]  # FSC 0.143 per model (inf: the map was kept)
    last: _LastReconstruction
    particles_in_maps: list[float]  # weights summed over what each map was made from


def _reconstruct_models(
    stack, layers: list[Layer], layer_stacks: list, halves: np.ndarray, maps: list[np.ndarray],
    operators: list[torch.Tensor], mask: torch.Tensor, m3dkeep: float, device, progress, label: str,
    executor: Executor | None = None,
) -> _Reconstruction:
    """Each model's gold-standard map from its entries in ``layers`` (the best ``m3dkeep`` of
    them by score); a model with fewer than 10 particles keeps its map from ``maps``. The
    accumulators are filled by ``executor``, a range of stack rows each (:func:`accumulate_in_shards`)."""
    k, box, apix = len(maps), stack.box_size, stack.pixel_size_angstrom
    groups, weights, stacks, group_model = [], [], [], []
    for m_index in range(k):
        entries = [(i, np.nonzero((lm == m_index) & (lw >= 0.01))[0]) for i, (lm, _, _, _, lw) in enumerate(layers)]
        own = np.concatenate([layers[i][3][rows] for i, rows in entries])
        cut = np.quantile(own, 1 - m3dkeep) if len(own) and m3dkeep < 1 else -np.inf
        for i, rows in entries:
            rows = rows[layers[i][3][rows] >= cut]
            for h in (1, 2):
                half_rows = rows[halves[rows] == h]
                groups.append(half_rows)
                weights.append(layers[i][4][half_rows])
                stacks.append(layer_stacks[i])
                group_model.append((m_index, h))
    advance = progress(label, int(sum(len(g) for g in groups))) if progress else None
    parts = accumulate_in_shards(executor or InProcess(), stack, groups, 256, device, advance, weights, stacks)
    accumulators, effective_of = {}, np.zeros(k)
    for key, acc, w in zip(group_model, parts, weights):
        if key in accumulators:
            accumulators[key] += acc
        else:
            accumulators[key] = acc
        effective_of[key[0]] += float(w.sum())
    new_maps, fsc_curves, resolutions = [], [], []
    totals: list[FourierAccumulator | None] = []
    inverse_ssnr: list[np.ndarray | None] = []
    for m_index in range(k):
        acc1, acc2 = accumulators[(m_index, 1)], accumulators[(m_index, 2)]
        effective = effective_of[m_index]
        if effective < 10:
            log.warning("model %d holds %.0f particles; its map is kept as it was", m_index + 1, effective)
            new_maps.append(maps[m_index])
            totals.append(None)
            inverse_ssnr.append(None)
            fsc_curves.append(np.zeros(box // 2 + 1))
            resolutions.append(float("inf"))
            continue
        result = gold_standard_reconstruction(acc1, acc2, operators[m_index])
        new_maps.append(flatten_solvent(torch.from_numpy(result.full_map), mask).numpy())
        acc1 += acc2  # both half-sets: what the full map was made from
        totals.append(acc1)
        inverse_ssnr.append(result.inverse_ssnr)
        fsc_curves.append(result.fsc)
        resolutions.append(resolution_at_threshold(result.fsc, apix, 0.143))
    entries = [(m_index, s, g, w) for (m_index, _), s, g, w in zip(group_model, stacks, groups, weights)]
    last = _LastReconstruction(totals, inverse_ssnr, new_maps, entries)
    return _Reconstruction(new_maps, fsc_curves, resolutions, last, effective_of.tolist())


@dataclass
class _FoldMaps:
    """How the models' maps are rebuilt without a fold (:func:`_leave_out_volumes`)."""

    operators: list[torch.Tensor]
    mask_radius_px: float
    scales: np.ndarray  # the references' intensity scale per model


@dataclass
class _Searched:
    """Every particle's search result (``n`` particles, ``K`` models, ``T`` best poses)."""

    model_scores: np.ndarray  # (n, K): the best score in each model
    model_rotations: np.ndarray  # (n, K, 3, 3): the best pose in each model
    model_shifts: np.ndarray  # (n, K, 2) px
    choice_scores: np.ndarray  # (n, K): the score that picks the model (without the particle's fold)
    image_power: np.ndarray  # (n,): the particle's power within the band
    top_model: np.ndarray | None = None  # (n, T): --sep, the best poses over all models
    top_rotations: np.ndarray | None = None
    top_shifts: np.ndarray | None = None
    top_scores: np.ndarray | None = None

    @classmethod
    def joined(cls, parts: list[_Searched]) -> _Searched:
        """The results of consecutive shards of rows as one."""
        if len(parts) == 1:
            return parts[0]
        return cls(**{f.name: None if getattr(parts[0], f.name) is None
                      else np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


def _search_shards(n: int, parts: int, batch_size: int) -> list[np.ndarray]:
    """Stack rows cut into about ``parts`` shards along the model choice's folds; one shard
    when ``parts`` is 1. Each shard rebuilds its fold's maps without the fold (inserting the
    fold's particles again, about a sixtieth of searching them at 5 Å), so a fold is cut
    into pieces of a batch at least: the rebuild then costs at most a fold's insertions per
    batch searched."""
    if parts <= 1:
        return [np.arange(n)]
    edges = _fold_edges(n, CHOICE_FOLDS)
    folds = len(edges) - 1
    per_fold = max(1, min(math.ceil(parts / folds), (n // folds) // max(1, batch_size)))
    return [piece for a, b in itertools.pairwise(edges) for piece in np.array_split(np.arange(a, b), per_fold)
            if len(piece)]


def _search_particles(search_stack, plan: SearchPlan, references: PolarReferences, volumes_ft: torch.Tensor, opts,
                      last: _LastReconstruction | None, fold_maps: _FoldMaps, advance=None,
                      executor: Executor | None = None) -> _Searched:
    """Search every particle against every model, and score its model choice.

    The model choice. A particle took part in its model's last reconstruction, so that map
    holds its own noise and its score there is biased up: a random split of one state's
    particles then stays as it was (measured: 600 adk particles of one state, 2 models from
    a random split, 18 % and 4 % changed model in iterations 2-3 against the full maps).
    Each particle is therefore scored again, at its pose in every model, against the maps
    rebuilt without its fold (:data:`CHOICE_FOLDS`), and that score picks its model. Its
    poses still come from the full maps. (Against the other half-set's maps the choice also
    stopped sticking, but those hold half the particles: 76.2 % right on the three-state
    benchmark after 12 iterations, against 98.7 % now and 94.6 % with the full maps;
    BENCHMARKS.md.) With no last reconstruction (the first iteration) the search's own
    scores pick the model.

    The rows go to ``executor`` in shards (:func:`_search_shards`), each searched by
    :func:`_search_rows`.
    """
    executor = executor or InProcess()
    shards = _search_shards(len(search_stack), executor.parts, opts.batch_size)
    parts = executor.map(_search_rows, shards, search_stack, plan, references, volumes_ft, opts, last, fold_maps,
                         advance=advance, sizes=[len(rows) for rows in shards])
    return _Searched.joined(parts)


def _search_rows(rows: np.ndarray, search_stack, plan: SearchPlan, references: PolarReferences,
                 volumes_ft: torch.Tensor, opts, last: _LastReconstruction | None, fold_maps: _FoldMaps,
                 advance=None) -> _Searched:
    """:func:`_search_particles` for the stack rows ``rows``, in batches of ``opts.batch_size``."""
    n, k, device = len(rows), len(volumes_ft), volumes_ft.device
    top = opts.sep * k  # --sep: the best poses overall, of which those in the chosen model are kept
    found = _Searched(np.zeros((n, k)), np.zeros((n, k, 3, 3)), np.zeros((n, k, 2)), np.zeros((n, k)), np.zeros(n))
    if opts.sep > 1:
        found.top_model = np.zeros((n, top), dtype=np.int64)
        found.top_rotations, found.top_shifts, found.top_scores = np.zeros((n, top, 3, 3)), np.zeros((n, top, 2)), np.zeros((n, top))
    if last is None:
        found.choice_scores = found.model_scores
    band = plan.band
    chooser = None if last is None else _FoldChooser(last, plan, fold_maps, len(search_stack), opts.score)
    for start in range(0, n, opts.batch_size):
        at = np.arange(start, min(n, start + opts.batch_size))  # positions in this shard
        batch = load_batch(search_stack, rows[at], device=device, center=False)
        result = plan.search(batch.images_ft, batch.ctf, references, volumes_ft, opts.score, top)
        if opts.sep > 1:
            found.top_model[at] = result.model.cpu().numpy()
            found.top_rotations[at] = result.rotations.cpu().double().numpy()
            found.top_shifts[at] = result.shift_px.cpu().double().numpy()
            found.top_scores[at] = result.score.cpu().numpy()
        found.model_scores[at] = result.model_scores.cpu().numpy()
        found.model_rotations[at] = result.model_rotations.cpu().double().numpy()
        found.model_shifts[at] = result.model_shift_px.cpu().double().numpy()
        if chooser is not None:
            found.choice_scores[at] = chooser.scores(batch, rows[at], found.model_rotations[at],
                                                     found.model_shifts[at])
        x = band.gather(batch.images_ft)
        found.image_power[at] = (band.weight * x.abs() ** 2).sum(-1).cpu().numpy()
        if advance is not None:
            advance(len(at))
    return found


def _layers(found: _Searched, model: np.ndarray, posteriors: np.ndarray, sep: int) -> list[Layer]:
    """What each model's map is made from, as layers of one pose per particle.

    ``sep`` 1: per model, every particle at its best pose in that model, weighted by its
    posterior for it (hard assignment: 1 for its model, 0 elsewhere). ``sep`` S > 1
    (``--sep``): every particle at each of its S best poses within its chosen model, weight
    1/S; a pose missing there is filled by that model's best one.
    """
    n, k = found.model_scores.shape
    rows = np.arange(n)
    if sep == 1:
        return [
            (np.full(n, m), found.model_rotations[:, m], found.model_shifts[:, m], found.model_scores[:, m],
             posteriors[:, m])
            for m in range(k)
        ]
    in_model = found.top_model == model[:, None]
    pick = np.argsort(~in_model, axis=1, kind="stable")[:, :sep]
    present = np.take_along_axis(in_model, pick, 1)
    layers = []
    for j in range(sep):
        p, f = pick[:, j], present[:, j]
        layers.append((
            model,
            np.where(f[:, None, None], found.top_rotations[rows, p], found.model_rotations[rows, model]),
            np.where(f[:, None], found.top_shifts[rows, p], found.model_shifts[rows, model]),
            np.where(f, found.top_scores[rows, p], found.model_scores[rows, model]),
            np.full(n, 1 / sep),
        ))
    return layers


def _cross_validated(search_stack, plan: SearchPlan, last: _LastReconstruction, found: _Searched,
                     fold_maps: _FoldMaps, opts: RefineOptions, executor: Executor | None = None) -> np.ndarray:
    """Each particle's log-likelihood in every model ``(n, K)`` at its pose there, against the
    maps of ``last`` rebuilt without its fold (``executor``: a shard of rows each)."""
    executor = executor or InProcess()
    shards = _search_shards(len(search_stack), executor.parts, opts.batch_size)
    parts = executor.map(_choice_rows, shards, search_stack, plan, last, found.model_rotations, found.model_shifts,
                         fold_maps, opts)
    return log_likelihoods(np.concatenate(parts), found.image_power, float(plan.band.weight.sum()), opts.score)


def _choice_rows(rows: np.ndarray, search_stack, plan: SearchPlan, last: _LastReconstruction, rotations: np.ndarray,
                 shifts: np.ndarray, fold_maps: _FoldMaps, opts: RefineOptions, advance=None) -> np.ndarray:
    """The scores of stack rows ``rows`` ``(len(rows), K)`` at the poses ``rotations[rows]``,
    ``shifts[rows]``, against the maps of ``last`` rebuilt without each row's fold."""
    chooser = _FoldChooser(last, plan, fold_maps, len(search_stack), opts.score)
    scores = np.zeros((len(rows), rotations.shape[1]))
    device = torch.device(opts.device)
    for start in range(0, len(rows), opts.batch_size):
        at = np.arange(start, min(len(rows), start + opts.batch_size))
        batch = load_batch(search_stack, rows[at], device=device, center=False)
        scores[at] = chooser.scores(batch, rows[at], rotations[rows[at]], shifts[rows[at]])
        if advance is not None:
            advance(len(at))
    return scores


def _split_merge_due(iteration: int, iterations: int, stats: list[IterationStats], changed: float | None) -> bool:
    """Whether split and merge is tried in this iteration of ``iterations``, after the
    iterations of ``stats``, where ``changed`` is the fraction of particles this iteration
    moved to another model."""
    if not (SPLIT_MERGE_FIRST <= iteration <= iterations - SPLIT_MERGE_SETTLE
            and (iteration - SPLIT_MERGE_FIRST) % SPLIT_MERGE_EVERY == 0):
        return False
    tried = [i for i, s in enumerate(stats) if s.split_merge is not None]
    if not tried or stats[tried[-1]].split_merge["kept"]:
        return True
    moved = sum(s.fraction_changed_model or 0.0 for s in stats[tried[-1] + 1:]) + (changed or 0.0)
    return moved >= SPLIT_MERGE_MOVED


@dataclass
class _Classified:
    """An assignment at fixed poses, the maps made from it and its cross-validated scores."""

    model: np.ndarray
    found: _Searched  # the poses (a dissolved model's are those of the model split)
    layers: list[Layer]
    made: _Reconstruction
    log_likelihood: np.ndarray  # (n, K) against the maps of ``made`` rebuilt without each particle's fold

    @property
    def objective(self) -> float:
        return classification_log_likelihood(self.log_likelihood)


def _settle(stack, search_stack, plan: SearchPlan, start: _Classified, halves: np.ndarray, maps: list[np.ndarray],
            operators: list[torch.Tensor], mask: torch.Tensor, fold_maps: _FoldMaps, opts: RefineOptions,
            executor: Executor | None, rounds: int) -> _Classified:
    """``rounds`` rounds of hard classification at fixed poses from ``start`` (each particle to
    its best model by cross-validated score, then the maps made again), fewer if nothing
    moves; a round costs one reconstruction and one scoring of every particle, no search."""
    current = start
    for _ in range(rounds):
        model = current.log_likelihood.argmax(axis=1)
        if np.array_equal(model, current.model):
            break
        current = _classified(stack, search_stack, plan, model, current.found, halves, maps, operators, mask,
                              fold_maps, opts, executor)
    return current


def _classified(stack, search_stack, plan: SearchPlan, model: np.ndarray, found: _Searched, halves: np.ndarray,
                maps: list[np.ndarray], operators: list[torch.Tensor], mask: torch.Tensor, fold_maps: _FoldMaps,
                opts: RefineOptions, executor: Executor | None = None, made: _Reconstruction | None = None,
                layers: list[Layer] | None = None) -> _Classified:
    """The maps of an assignment at fixed poses (or ``made`` from ``layers``), and its scores."""
    k, apix = len(maps), stack.pixel_size_angstrom
    if made is None:
        layers = _layers(found, model, np.eye(k)[model], 1)
        _, layer_stacks = _layer_stacks(stack, layers, halves, apix)
        made = _reconstruct_models(stack, layers, layer_stacks, halves, maps, operators, mask, opts.m3dkeep,
                                   torch.device(opts.device), None, "", executor)
    log_likelihood = _cross_validated(search_stack, plan, made.last, found, fold_maps, opts, executor)
    return _Classified(model, found, layers, made, log_likelihood)


def _split_and_merge(
    stack, search_stack, plan: SearchPlan, found: _Searched, model: np.ndarray, layers: list[Layer],
    made: _Reconstruction, halves: np.ndarray, maps: list[np.ndarray], operators: list[torch.Tensor],
    mask: torch.Tensor, fold_maps: _FoldMaps, opts: RefineOptions, iteration: int, executor: Executor | None = None,
) -> tuple[_Classified, dict | None]:
    """A split and merge trial (:mod:`multirefine.refine.splitmerge`) against this iteration's
    own assignment: the model whose particles lose least by going to their next best model is
    dissolved, and half of the largest other model re-seeds it. Both get
    :data:`SPLIT_MERGE_ROUNDS` rounds of classification at fixed poses (:func:`_settle`);
    then their cross-validated classification log-likelihoods are compared, and the trial
    wins if it gains over :data:`SPLIT_MERGE_MIN_GAIN` per particle. Returns the winner and
    what was tried (None: nothing, the largest other model holds fewer than 40 particles)."""
    k = len(maps)
    args = (halves, maps, operators, mask, fold_maps, opts, executor)
    own = _classified(stack, search_stack, plan, model, found, *args, made=made, layers=layers)
    costs = removal_costs(own.log_likelihood, model)
    dissolved = int(np.argmin(costs))
    counts = np.bincount(model, minlength=k)
    log.debug("iteration %d: cross-validated log-likelihood each model's particles lose without it, per particle: %s",
              iteration, ", ".join(f"{c / max(n, 1):.2f}" for c, n in zip(costs, counts)))
    split = int(np.argmax(np.where(np.arange(k) == dissolved, -1, counts)))
    if counts[split] < 40:
        return own, None
    trial_model = trial_assignment(own.log_likelihood, model, dissolved, split)
    rotations, shifts, scores = found.model_rotations.copy(), found.model_shifts.copy(), found.model_scores.copy()
    rotations[:, dissolved], shifts[:, dissolved], scores[:, dissolved] = (
        rotations[:, split], shifts[:, split], scores[:, split])
    trial_found = replace(found, model_rotations=rotations, model_shifts=shifts, model_scores=scores)
    trial = _classified(stack, search_stack, plan, trial_model, trial_found, *args)
    own = _settle(stack, search_stack, plan, own, *args, SPLIT_MERGE_ROUNDS)
    trial = _settle(stack, search_stack, plan, trial, *args, SPLIT_MERGE_ROUNDS)
    gain = trial.objective - own.objective
    kept = gain > SPLIT_MERGE_MIN_GAIN * len(model)
    log.info(
        "iteration %d: split and merge: model %d (%d particles) merged into the others, half of model %d (%d) "
        "re-seeds it; after %d rounds at fixed poses, cross-validated log-likelihood %+.1f (%+.3f per particle): "
        "%s, particles per model %s",
        iteration, dissolved + 1, counts[dissolved], split + 1, counts[split], SPLIT_MERGE_ROUNDS, gain,
        gain / len(model), "kept" if kept else "not kept", np.bincount((trial if kept else own).model, minlength=k).tolist(),
    )
    record = {"dissolved": dissolved + 1, "split": split + 1, "gain": float(gain), "kept": bool(kept)}
    return (trial if kept else own), record


def _align_to_first(maps: list[np.ndarray], apix: float, band_res: float) -> list[np.ndarray]:
    """Starting maps from different files, each aligned to map 1 (with a hand check) where
    that fits clearly better (:data:`ALIGNMENT_MARGIN`)."""
    out = list(maps)
    for m_index in range(1, len(maps)):
        aligned, alignment = align_volume(maps[m_index], maps[0], apix, max(band_res, 15.0), 15.0, True)
        if alignment.score > alignment.identity_score + ALIGNMENT_MARGIN:
            angle = float(rotation_change_deg(np.eye(3)[None], alignment.matrix[None], np.eye(3)[None])[0])
            log.info(
                "starting map %d aligned to map 1: rotated %.0f°%s (correlation %.2f -> %.2f)",
                m_index + 1, angle, ", hand flipped" if alignment.flipped else "",
                alignment.identity_score, alignment.score,
            )
            out[m_index] = aligned
    return out


def write_report_safely(run: Path) -> None:
    """Rebuild the run's ``index.html``; a failure is logged, and the run goes on."""
    try:
        write_report(run)
    except Exception as exc:  # noqa: BLE001 -- the report must never cost a run its results
        log.warning("the report %s could not be written: %s", run / "index.html", exc)


def run_refinement(
    opts: RefineOptions,
    stack,
    search_stack,
    start_maps: np.ndarray,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    initial_assignment: np.ndarray | None = None,
    resume: bool = False,
    executor: Executor | None = None,
) -> RefinementResult:
    """Run ``opts.iterations`` iterations from ``start_maps`` ``(K, D, D, D)``.

    ``stack`` holds the raw particles (reconstruction), ``search_stack`` the ones searched
    (the same stack, or the ``--usefilt`` one). ``initial_assignment`` (``(N,)`` model
    indices) is ``--randclassify``: the first reconstruction uses it instead of the search's
    model choice. ``resume`` continues the run in ``opts.path`` after the last iteration its
    state file holds (``start_maps`` is then not used); the result is the one an
    uninterrupted run gives.
    """
    out = Path(opts.path)
    device = torch.device(opts.device)
    box, apix = stack.box_size, stack.pixel_size_angstrom
    halves = half_set_of_rows(stack.metadata, opts.seed)
    n = len(stack)
    state = load_state(out / runfolder.STATE, n, box) if resume else None
    maps = [np.asarray(m, dtype=np.float32) for m in (state.maps if state else start_maps)]
    if state is None:  # a map on a level would project as a slab, and its radius would be the box's
        corners = soft_sphere_mask(box, box / 2 - 4, 3.0)  # off beyond the box's inscribed sphere
        maps = [m - solvent_level(torch.from_numpy(m), corners).item() for m in maps]
    k = len(maps)
    operators = [torch.as_tensor(symmetry_operators(s), dtype=torch.float32) for s in opts.symmetries]
    radius_px = state.radius_px if state else max(particle_radius_px(m) for m in maps)
    mask_radius_px = min(radius_px + 3, box / 2 - 2)
    mask = soft_sphere_mask(box, mask_radius_px, 3.0)
    stats: list[IterationStats] = []
    previous_model: np.ndarray | None = None
    last: _LastReconstruction | None = None
    if state is not None:
        done = json.loads((out / runfolder.CONVERGENCE).read_text())[: state.iteration]
        stats = [IterationStats(**s) for s in done]
        table = assignment_table(stack.metadata, *state.table_poses, halves, apix)
        previous_model = state.table_poses[0]
        band_res = _next_band(stats[-1].band_resolution_angstrom, stats[-1].resolution_0143_angstrom, opts.targetres)
        if state.iteration < opts.iterations:  # the last maps' accumulators, for the next model choice
            _, layer_stacks = _layer_stacks(stack, state.layers, halves, apix)
            last = _reconstruct_models(stack, state.layers, layer_stacks, halves, maps, operators, mask, opts.m3dkeep,
                                       device, progress, f"iteration {state.iteration}: rebuilt", executor).last
        log.debug("continuing %s after iteration %d of %d", out, state.iteration, opts.iterations)
    elif opts.targetres is not None:
        band_res = opts.targetres
    else:
        from multirefine.refine.seeding import power_limit_angstrom

        band_res = max(min(power_limit_angstrom(m, apix) for m in maps), 2.5 * apix)
    if state is None:
        if opts.align_maps and opts.seeding == "models":
            maps = _align_to_first(maps, apix, band_res)
        maps = [flatten_solvent(torch.from_numpy(m), mask).numpy() for m in maps]  # as every later reference
        for m_index, volume in enumerate(maps, start=1):
            write_map(out / runfolder.map_name(0, m_index), volume, apix)
    for iteration in range(len(stats) + 1, opts.iterations + 1):
        started = time.perf_counter()
        plan = plan_search(box, apix, band_res, radius_px, opts.speed, opts.symmetries, opts.max_shift_px,
                           opts.shrink, device)
        band_res, band_radius = plan.band_resolution_angstrom, plan.band_radius_px
        coarse, fine = plan.coarse_step_deg, plan.fine_step_deg
        shift_step_px, fine_band = plan.shift_step_px, plan.band
        volumes = torch.stack([torch.from_numpy(m) for m in maps]).to(device)
        log.info(
            "iteration %d: search to %.1f Å (band %.1f px), global step %.1f°, local step %.1f°",
            iteration, band_res, band_radius, coarse, fine,
        )
        log.debug("iteration %d: %s", iteration, plan.describe())
        if iteration == 1:
            scales = plan.intensity_scales(search_stack, volumes, opts.batch_size)
            log.info("starting maps scaled to the particles' intensity: %s",
                     ", ".join(f"x{a:.3g}" for a in scales))
        elif search_stack is not stack:
            scales = np.full(k, filtered_scale(stack, search_stack, fine_band, device))
            log.debug("references scaled to the --usefilt stack: x%.3g", scales[0])
        else:
            scales = np.ones(k)
        if not np.allclose(scales, 1.0):
            volumes = volumes * torch.as_tensor(scales, dtype=torch.float32, device=device)[:, None, None, None]
            if iteration == 1:  # a model left empty keeps its map, now in particle units
                maps = [m * np.float32(a) for m, a in zip(maps, scales)]
        volumes_ft = torch.stack([prepare_volume_ft(v) for v in volumes])
        references = plan.references(volumes_ft)
        advance = progress(f"iteration {iteration}: search", n) if progress else None
        found = _search_particles(search_stack, plan, references, volumes_ft, opts, last,
                                  _FoldMaps(operators, mask_radius_px, scales), advance, executor)
        last = None  # the last maps' accumulators are not needed again
        searched = time.perf_counter()
        posteriors = _posteriors(found.choice_scores, found.image_power, float(fine_band.weight.sum()), opts.score)
        model = np.argmax(found.choice_scores, axis=1)
        confidence = posteriors  # the table's rlnMaxValueProbDistribution, hard assignment or not
        tried = None
        if initial_assignment is not None and iteration == 1:
            model = np.asarray(initial_assignment, dtype=np.int64)
            posteriors = np.eye(k)[model]
        if not opts.soft:
            posteriors = np.eye(k)[model]
        spread = opts.sep > 1 and not (initial_assignment is not None and iteration == 1)  # --randclassify first
        layers = _layers(found, model, posteriors, opts.sep if spread else 1)
        layer_tables, layer_stacks = _layer_stacks(stack, layers, halves, apix)
        made = _reconstruct_models(stack, layers, layer_stacks, halves, maps, operators, mask, opts.m3dkeep, device,
                                   progress, f"iteration {iteration}: reconstruct", executor)
        moved = None if previous_model is None else float(np.mean(previous_model != model))  # by the search
        if (opts.split_merge and not opts.soft and not spread and k >= MIN_MODELS
                and _split_merge_due(iteration, opts.iterations, stats, moved)):
            chosen, tried = _split_and_merge(stack, search_stack, plan, found, model, layers, made, halves, maps,
                                             operators, mask, _FoldMaps(operators, mask_radius_px, scales), opts,
                                             iteration, executor)
            model, found, layers, made = chosen.model, chosen.found, chosen.layers, chosen.made
            posteriors = np.eye(k)[model]
            confidence = _normalised(chosen.log_likelihood)
        rows_n = np.arange(n)
        score = found.model_scores[rows_n, model]
        table_poses = (model, found.model_rotations[rows_n, model], found.model_shifts[rows_n, model], score,
                       confidence[rows_n, model])
        table = assignment_table(stack.metadata, *table_poses, halves, apix)
        new_maps, fsc_curves, resolutions = made.maps, made.fsc_curves, made.resolutions
        reconstructed = time.perf_counter()
        counts = np.bincount(model, minlength=k).tolist()
        changed = None if previous_model is None else float(np.mean(previous_model != model))
        to_previous = None
        if iteration > 1:  # this iteration's maps against its references, the last iteration's maps
            to_previous = [
                resolution_at_threshold(
                    fourier_shell_correlation(torch.from_numpy(a), torch.from_numpy(b)).numpy(), apix, 0.143
                )
                for a, b in zip(new_maps, maps)
            ]
        written = new_maps
        if opts.mass_kda:
            written = [normalize_by_mass(v, mass, apix) for v, mass in zip(new_maps, opts.mass_kda)]
        for m_index, volume in enumerate(written, start=1):
            write_map(out / runfolder.map_name(iteration, m_index), volume, apix)
        write_particles_star(out / runfolder.particles_name(iteration), table, stack.optics)
        directions = [projection_directions(coarse, sym) for sym in opts.symmetries]
        # Class-average entries indexed by the particle's row in the stack.
        entries, entry_weights = table.reset_index(drop=True), None
        if spread:
            entries = pd.concat([t.reset_index(drop=True) for t in layer_tables])
            entry_weights = np.full(len(entries), 1 / opts.sep)
        averages, class_table = class_averages(
            stack, entries, [d[0] for d in directions], [d[1] for d in directions], opts.classkeep,
            classiter=opts.classiter, psi_range_deg=fine, max_shift_px=shift_step_px, weights=entry_weights,
        )
        averaged = time.perf_counter()
        write_stack(out / runfolder.classes_name(iteration), averages, apix)
        with atomic_path(out / runfolder.classes_table_name(iteration)) as tmp:
            starfile.write({"classes": class_table}, tmp, overwrite=True)
        fsc = {
            "pixel_size_angstrom": apix,
            "shell_frequency_per_angstrom": (np.arange(box // 2 + 1) / (box * apix)).tolist(),
            "half_map_fsc": [c.tolist() for c in fsc_curves],
            "mutual_fsc": mutual_fsc(new_maps).tolist(),
        }
        runfolder.write_json(out / runfolder.fsc_name(iteration), fsc)
        stat = IterationStats(
            iteration, time.perf_counter() - started, band_res, coarse, fine, counts, changed,
            resolutions, to_previous, float(np.mean(score)), made.particles_in_maps, tried,
        )
        stats.append(stat)
        runfolder.write_json(out / runfolder.CONVERGENCE, [asdict(s) for s in stats])
        plot_convergence([asdict(s) for s in stats], out / runfolder.CONVERGENCE_FIGURE)
        plot_fsc(fsc, out / runfolder.fsc_figure_name(iteration), f"iteration {iteration}")
        write_report_safely(out)
        log.debug(
            "iteration %d stages: search %.1f s, reconstruction %.1f s, class averages %.1f s, files and report %.1f s",
            iteration, searched - started, reconstructed - searched, averaged - reconstructed,
            time.perf_counter() - averaged,
        )
        log.info(
            "iteration %d done in %.0f s: particles per model %s, changed model %s, resolution %s",
            iteration, stat.seconds, counts, "-" if changed is None else f"{100 * changed:.1f} %",
            ", ".join(f"{r:.1f} Å" for r in resolutions),
        )
        save_state(out / runfolder.STATE, RunState(iteration, radius_px, new_maps, table_poses, layers))
        last = made.last
        previous_model, maps = model, new_maps
        band_res = _next_band(band_res, resolutions, opts.targetres)
    for m_index in range(k):
        rows = table["rlnClassNumber"].to_numpy() == m_index + 1
        write_particles_star(out / runfolder.model_particles_name(m_index + 1), table[rows], stack.optics)
    return RefinementResult(stats, table, maps)
