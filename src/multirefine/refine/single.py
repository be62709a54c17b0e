"""Each model's particles refined on their own, gold standard (docs/architecture.md).

After the multi-model iterations each model keeps its particles (``particles_model_MM.star``);
each set is then refined on its own to the resolution its data allow, as RELION's
auto-refine refines one class. The set's two half-sets (``rlnRandomSubset``, the halves of
the multi-model run) are aligned each against its own half map only, and each half map is
made from its own half only, so the FSC between them is not raised by one half's noise
aligned to the other's. The classification's maps were made from both halves, so both half
maps start from the model's final map low-passed to ``--singleres`` (default 30 Å, as
cryoSPARC's homogeneous refinement starts): beyond it the halves share nothing. The start
was chosen by measurement against the truth (FSC 0.143 of the closed-state map, whose
classification map is the worse one): conformational benchmark 4.3 Å from 15 Å, 3.8 Å from
30 Å (the classification's map: 5.3 Å); demo 8.9 Å from 15 Å, 7.0 Å from 30 Å, 16.1 Å
from 50 Å (classification: 9.0 Å). On the 1000-particle test set (500 per model, SNR 0.1)
the order reverses: from 30 Å the closed particles lost their poses (FSC 0.5 against the
truth 12.6 Å, from 15 Å 10.2 Å); few particles per model want a finer start.

Each iteration, per half: polar references of the half map and the same search as the
multi-model run (:class:`multirefine.refine.plan.SearchPlan`, one model), then the half
accumulators, the half-map FSC and the full map Wiener-filtered by it
(:func:`multirefine.refine.reconstruct.gold_standard_reconstruction`). The next references
are the half maps Wiener-filtered by a half map's own SSNR (half the full map's) and masked.
The band follows the FSC-0.143 resolution, and the angular steps follow the band. The
refinement stops when the resolution has not improved by 1 % for :data:`PATIENCE`
iterations, or after ``--singleiter``.

Each iteration and the end go to a recorder (:class:`ModelRecorder`; the command line's
writes ``model_MM/``, :class:`multirefine.runfolder.writer.ModelFolder`, whose docstring lists
the files). ``multirefine refine --continue`` keeps a model whose recorder says it was
refined before from the same particles with the same options
(:meth:`ModelRecorder.earlier`), and refines the others again after clearing what an
earlier attempt left.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.filters import lowpass_volume
from multirefine.fourier.fsc import masked_fsc_corrected, resolution_at_threshold, shell_frequencies
from multirefine.fourier.masks import flatten_solvent
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import rotation_change_deg
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.io.columns import SEARCH_SCORE
from multirefine.parallel import Executor, InProcess
from multirefine.refine.assignment import assignment_table
from multirefine.refine.batch import sweep
from multirefine.refine.driver import RefinementResult
from multirefine.refine.layers import hypothesis_weights
from multirefine.refine.noise import whitened_stacks
from multirefine.refine.options import RefineOptions, SweepSettings
from multirefine.refine.plan import SearchPlan, plan_search
from multirefine.refine.posecheck import PosesMoved, poses_moved
from multirefine.refine.reconstruct import (
    accumulate_in_shards,
    gold_standard_reconstruction,
    half_set_of_rows,
)
from multirefine.refine.scales import filtered_scale, reference_scales
from multirefine.refine.solvent import ModelMasks, per_model, sphere_radius_px, union
from multirefine.refine.start import particle_radius
from multirefine.runfolder.records import FscRecord, SingleStats

__all__ = ["ModelRecorder", "SingleResult", "consensus_refinement", "refine_each_model", "refine_single"]

log = logging.getLogger(__name__)

MIN_PARTICLES = 50  # a model with fewer is not refined on its own
PATIENCE = 2  # iterations without a 1 % better resolution before a refinement stops


@dataclass
class SingleResult:
    stats: list[SingleStats]
    resolution_0143_angstrom: float  # of the last iteration's half maps
    earlier: bool = False  # finished by an earlier attempt of the run (--continue), kept as it was
    table: pd.DataFrame | None = None  # the particles with their final poses (not kept from an earlier attempt)
    full_map: np.ndarray | None = None  # the final map (masked, in particle units)
    masked_resolution_0143_angstrom: float | None = None  # --mask: FSC 0.143 within it, solvent-corrected


class ModelRecorder:
    """Where one model's refinement on its own goes; this one keeps nothing. The command
    line's writes ``model_MM/`` (:class:`multirefine.runfolder.writer.ModelFolder`)."""

    def start(self, volume: np.ndarray) -> None:
        """The starting map (the mean of the two half-sets' when each has its own)."""

    def iteration(self, stat: SingleStats, full_map: np.ndarray, fsc: FscRecord) -> None:
        """A finished iteration: its statistics, full map and half-map FSC."""

    def finish(self, half_maps: list[np.ndarray], full_map: np.ndarray, table: pd.DataFrame,
               masked_fsc: dict | None = None) -> None:
        """The last half maps (unfiltered), the full map, the particles' final poses and, with
        ``--mask``, the half maps' masked, solvent-corrected FSC (:func:`masked_fsc_record`)."""

    def checked(self, moved: PosesMoved | None) -> None:
        """How far the particles' poses moved from the classification's (None: it gave none)."""

    def earlier(self, marker: dict) -> list[SingleStats] | None:
        """The statistics of this model's refinement as an earlier attempt of the run finished
        it from what ``marker`` describes, if there is one (``--continue``)."""
        return None

    def clear(self) -> None:
        """Forget an earlier attempt's refinement of this model."""

    def mark_finished(self, marker: dict) -> None:
        """The refinement is complete, from what ``marker`` describes."""


@dataclass
class _Halves:
    """A model's particles and its two half maps through the iterations."""

    stack: object
    search_stack: object
    halves: np.ndarray  # (n,) 1 or 2
    operators: np.ndarray
    mask: torch.Tensor
    radius_px: float
    references: list[np.ndarray]  # per half-set

    def rows(self, half: int) -> np.ndarray:
        return np.nonzero(self.halves == half)[0]


def refine_single(
    stack,
    search_stack,
    start_map: np.ndarray,
    symmetry: str,
    opts: RefineOptions,
    recorder: ModelRecorder | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    label: str = "",
    executor: Executor | None = None,
    mask: np.ndarray | None = None,
) -> SingleResult:
    """Refine one particle set against its own two half maps from ``start_map``: one map
    ``(D, D, D)`` for both half-sets, or one per half-set ``(2, D, D, D)``.

    ``stack`` holds the set's raw particles (reconstruction), ``search_stack`` the ones
    searched (the same, or the ``--usefilt`` ones, row for row). Half-sets come from
    ``rlnRandomSubset`` (else a random half each, ``opts.seed``). From ``opts``:
    ``single_iterations`` (at most), ``single_start_resolution_angstrom``, speed, shifts,
    ``shrink``, batch size, device, score and ``m3dkeep`` (per half-set). ``executor`` runs the
    search (a shard of a half-set's rows each, :func:`_search_rows`) and the reconstruction.
    ``mask``: the solvent mask on the particles' grid (``--mask``); None: a soft sphere.
    """
    executor, recorder = executor or InProcess(), recorder or ModelRecorder()
    device, apix = torch.device(opts.device), stack.pixel_size_angstrom
    model = _start(stack, search_stack, start_map, symmetry, opts, mask)
    recorder.start((model.references[0] + model.references[1]) / 2)
    band_res, stats = opts.single_start_resolution_angstrom, []
    best, since_best = math.inf, 0
    previous_rotations = None
    for iteration in range(1, opts.single_iterations + 1):
        started = time.perf_counter()
        plan = plan_search(stack.box_size, apix, band_res, model.radius_px, opts.speed, [symmetry],
                           opts.max_shift_px, opts.shrink, device)
        scale = _scale_references(model, plan, opts, iteration, label)
        log.info("%siteration %d: search to %.1f Å, global step %.1f°, local step %.1f°", label, iteration,
                 plan.band_resolution_angstrom, plan.coarse_step_deg, plan.fine_step_deg)
        log.debug("%siteration %d: %s", label, iteration, plan.describe())
        advance = progress(f"{label}iteration {iteration}: search", len(stack)) if progress else (lambda _: None)
        poses = _search_halves(model, plan, scale, opts, advance, executor)
        rotations, scores = poses.rotations[:, 0], poses.scores[:, 0]
        tables = [assignment_table(stack.metadata, np.zeros(len(stack), dtype=np.int64), poses.rotations[:, j],
                                   poses.shifts[:, j], scores, poses.weights[:, j], model.halves, apix)
                  for j in range(poses.weights.shape[1])]
        table = tables[0]
        searched = time.perf_counter()
        result, full_map = _reconstruct_halves(model, tables, scores, poses.weights, opts, progress,
                                               f"{label}iteration {iteration}", executor)
        resolution = resolution_at_threshold(result.fsc, apix, 0.143)
        change = None
        if previous_rotations is not None:
            change = float(np.median(rotation_change_deg(previous_rotations, rotations, model.operators)))
        previous_rotations = rotations
        stat = SingleStats(iteration, time.perf_counter() - started, plan.band_resolution_angstrom,
                           plan.coarse_step_deg, plan.fine_step_deg, len(stack), resolution, change,
                           float(np.mean(scores)))
        stats.append(stat)
        recorder.iteration(stat, full_map, FscRecord.of(stack.box_size, apix, [result.fsc]))
        log.debug("%siteration %d stages: search %.1f s, reconstruction and files %.1f s", label, iteration,
                  searched - started, time.perf_counter() - searched)
        log.info("%siteration %d done in %.0f s: resolution %.2f Å (FSC 0.143, half maps), median rotation change %s",
                 label, iteration, stat.seconds, resolution, "-" if change is None else f"{change:.1f}°")
        if np.isfinite(resolution):
            band_res = resolution
        if resolution < 0.99 * best:
            best, since_best = resolution, 0
        else:
            since_best += 1
            if since_best >= PATIENCE:
                break
    masked = None if mask is None else masked_fsc_record(result.half_maps, model.mask, apix)
    recorder.finish(list(result.half_maps), full_map, table, masked)
    return SingleResult(stats, resolution, table=table, full_map=full_map,
                        masked_resolution_0143_angstrom=None if masked is None else masked["resolution_0143_angstrom"])


def masked_fsc_record(half_maps, mask: torch.Tensor, apix: float) -> dict:
    """The final half maps' FSC within the user's mask, solvent-corrected
    (:func:`multirefine.fourier.fsc.masked_fsc_corrected`, relion_postprocess's), and its
    resolution at 0.143: what the map holds inside the mask."""
    corrected, masked = masked_fsc_corrected(torch.from_numpy(np.asarray(half_maps[0])),
                                             torch.from_numpy(np.asarray(half_maps[1])), mask.cpu())
    return {"shell_frequency_per_angstrom": shell_frequencies(len(half_maps[0]), apix).tolist(),
            "corrected_fsc": corrected.tolist(), "masked_fsc": masked.tolist(),
            "resolution_0143_angstrom": resolution_at_threshold(corrected, apix, 0.143)}


def _start(stack, search_stack, start_map: np.ndarray, symmetry: str, opts: RefineOptions,
           user_mask: np.ndarray | None) -> _Halves:
    """The set's half-sets, symmetry, mask and starting references (low-passed, masked)."""
    start_map = np.asarray(start_map, dtype=np.float32)
    pair = start_map if start_map.ndim == 4 else np.stack([start_map, start_map])
    radius_px = particle_radius(opts, list(pair), stack.pixel_size_angstrom)
    mask_radius_px = sphere_radius_px(radius_px, stack.box_size, opts.particle_diameter_angstrom is not None)
    mask = ModelMasks(stack.box_size, mask_radius_px, None if user_mask is None else [user_mask]).of(0)
    stack, search_stack = whitened_stacks(stack, search_stack, mask_radius_px, opts.noise_model, opts.normalise)
    references = [  # per half-set
        flatten_solvent(lowpass_volume(torch.from_numpy(m), opts.single_start_resolution_angstrom,
                                       stack.pixel_size_angstrom), mask).numpy()
        for m in pair
    ]
    return _Halves(stack, search_stack, half_set_of_rows(stack.metadata, opts.seed), symmetry_operators(symmetry),
                   mask, radius_px, references)


def _scale_references(model: _Halves, plan: SearchPlan, opts: RefineOptions, iteration: int, label: str) -> float:
    """The factor that puts the references in the search stack's units. Iteration 1: the
    starting maps, each fitted to its half-set's particles (the multi-model run's maps
    already are in their units: factors near 1; any other map need not be), then 1.
    Later, reconstructions are in the raw particles' units: 1, or the ``--usefilt`` factor."""
    device = torch.device(opts.device)
    if iteration == 1:
        scales = [
            float(reference_scales(model.search_stack.subset(model.rows(h)),
                                   plan, torch.from_numpy(model.references[h - 1]).to(device)[None],
                                   opts.batch_size)[0])
            for h in (1, 2)
        ]
        log.info("%sstarting maps scaled to the particles' intensity: x%.3g, x%.3g", label, *scales)
        model.references = [r * np.float32(a) for r, a in zip(model.references, scales)]
        return 1.0
    if model.search_stack is model.stack:
        return 1.0
    return filtered_scale(model.stack, model.search_stack, plan.band, device)


@dataclass
class _Poses:
    """Each particle's poses in one map: its best, or (``--hypotheses H``) its H best distinct
    ones, best first, with their posteriors (``n`` particles, ``T`` poses)."""

    rotations: np.ndarray  # (n, T, 3, 3)
    shifts: np.ndarray  # (n, T, 2) px
    scores: np.ndarray  # (n, T), -inf where a hypothesis is missing
    weights: np.ndarray  # (n, T), summing to 1 per particle

    @classmethod
    def empty(cls, n: int, t: int) -> _Poses:
        return cls(np.zeros((n, t, 3, 3)), np.zeros((n, t, 2)), np.full((n, t), -np.inf), np.zeros((n, t)))


def _search_halves(model: _Halves, plan: SearchPlan, scale: float, opts: RefineOptions, advance,
                   executor: Executor) -> _Poses:
    """Each half-set searched against its own half map."""
    settings = SweepSettings.of(opts)
    poses = _Poses.empty(len(model.stack), max(1, settings.hypotheses))
    for h in (1, 2):
        volume_ft = prepare_volume_ft(torch.from_numpy(model.references[h - 1]).to(opts.device) * scale)[None]
        polar = plan.references(volume_ft)
        rows_h = model.rows(h)
        shards = [part for part in np.array_split(rows_h, max(1, min(executor.parts, len(rows_h)))) if len(part)]
        parts = executor.map(_search_rows, shards, model.search_stack, plan, polar, volume_ft,
                             settings, advance=advance, sizes=[len(part) for part in shards])
        for rows, part in zip(shards, parts):
            for name in ("rotations", "shifts", "scores", "weights"):
                getattr(poses, name)[rows] = getattr(part, name)
    return poses


def _reconstruct_halves(model: _Halves, tables: list[pd.DataFrame], scores: np.ndarray, weights: np.ndarray,
                        opts: RefineOptions, progress, label: str, executor: Executor):
    """The half maps from each half-set's best ``m3dkeep`` (by ``scores``, each particle's
    best), their FSC and the full map; the next references are the half maps Wiener-filtered
    by a half map's own SSNR and masked. ``tables``: the particles at each of their poses
    (one: the best; ``--hypotheses``: each hypothesis, weighted by ``weights`` ``(n, T)``)."""
    groups = []
    for h in (1, 2):
        rows_h = model.rows(h)
        cut = np.quantile(scores[rows_h], 1 - opts.m3dkeep) if len(rows_h) and opts.m3dkeep < 1 else -np.inf
        groups.append(rows_h[scores[rows_h] >= cut])
    device = torch.device(opts.device)
    if len(tables) == 1:
        advance = progress(f"{label}: reconstruct", sum(len(g) for g in groups)) if progress else None
        acc1, acc2 = accumulate_in_shards(executor, model.stack.with_metadata(tables[0]), groups, 256, device, advance)
    else:  # every pose of a kept particle that holds 1 % of its weight or more
        entries = [(rows[weights[rows, j] >= 0.01], j) for rows in groups for j in range(len(tables))]
        advance = progress(f"{label}: reconstruct", sum(len(r) for r, _ in entries)) if progress else None
        acc1, acc2 = accumulate_in_shards(executor, model.stack, [r for r, _ in entries], 256, device, advance,
                                          [weights[r, j] for r, j in entries],
                                          [model.stack.with_metadata(tables[j]) for _, j in entries],
                                          [h for h in (0, 1) for _ in tables])  # one accumulator per half
    ops = torch.as_tensor(model.operators, dtype=torch.float32)
    result = gold_standard_reconstruction(acc1, acc2, ops)
    # A half map holds half the particles: half the full map's SSNR, twice its 1 / SSNR.
    model.references = [flatten_solvent(acc.reconstruct(ops, 2 * result.inverse_ssnr).cpu(), model.mask).numpy()
                        for acc in (acc1, acc2)]
    return result, flatten_solvent(torch.from_numpy(result.full_map), model.mask).numpy()


def _search_rows(rows: np.ndarray, search_stack, plan, polar, volume_ft: torch.Tensor, settings: SweepSettings,
                 advance: Callable[[int], None] | None = None) -> _Poses:
    """The poses of the stack rows ``rows`` against one half map (its polar references
    ``polar`` and transform ``volume_ft``), in batches of ``settings.batch_size``: the best,
    or the ``settings.hypotheses`` best distinct ones weighted by their posteriors
    (:func:`multirefine.refine.layers.hypothesis_weights`)."""
    hypotheses, n_pixels = settings.hypotheses, float(plan.band.weight.sum())
    poses = _Poses.empty(len(rows), max(1, hypotheses))
    for at, batch in sweep(search_stack, rows, settings.batch_size, volume_ft.device, advance):
        found = plan.search(batch.images_ft, batch.ctf, polar, volume_ft, settings.score, hypotheses=hypotheses)
        if hypotheses:
            rotations, shifts, scores = found.rotations, found.shift_px, found.score
            power = plan.band.power(batch.images_ft).cpu().numpy()
            poses.weights[at] = hypothesis_weights(scores.cpu().numpy(), power, n_pixels)
        else:
            rotations, shifts, scores = found.model_rotations, found.model_shift_px, found.model_scores
            poses.weights[at] = 1.0
        poses.rotations[at] = rotations.cpu().double().numpy()
        poses.shifts[at] = shifts.cpu().double().numpy()
        poses.scores[at] = scores.cpu().numpy()
    return poses


def refine_each_model(
    opts: RefineOptions,
    stack,
    search_stack,
    multi: RefinementResult,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    executor: Executor | None = None,
    recorders: Callable[[int], ModelRecorder] | None = None,
    after: Callable[[], None] | None = None,
    masks: list[np.ndarray] | None = None,
) -> list[SingleResult | None]:
    """Refine each model's particles of ``multi`` on their own; ``recorders(m)`` (m from 1)
    gives model m's recorder, ``after`` is called when a model is done (the command line:
    the report). A model with fewer than :data:`MIN_PARTICLES` particles is left out (None).
    ``masks``: the solvent masks, one or one per model (None: spheres)."""
    masks = per_model(masks, opts.n_models)
    classes = multi.table["rlnClassNumber"].to_numpy()
    results: list[SingleResult | None] = []
    for m_index, volume in enumerate(multi.maps):
        rows = np.nonzero(classes == m_index + 1)[0]
        recorder = recorders(m_index + 1) if recorders else ModelRecorder()
        if len(rows) < MIN_PARTICLES:
            log.warning("model %d holds %d particles (< %d): not refined on its own", m_index + 1, len(rows), MIN_PARTICLES)
            recorder.clear()  # a refinement from an earlier classification of the run is no longer this model's
            results.append(None)
            continue
        marker = {"after_iteration": multi.stats[-1].iteration if multi.stats else 0, "particles": len(rows),
                  "single_iterations": opts.single_iterations,
                  "single_start_resolution_angstrom": opts.single_start_resolution_angstrom}
        done = recorder.earlier(marker)
        if done is not None:
            log.info("model %d: refined on its own before, kept", m_index + 1)
            results.append(SingleResult(done, done[-1].resolution_0143_angstrom, earlier=True))
            continue
        recorder.clear()
        log.info("model %d: %d particles refined on their own (gold standard)", m_index + 1, len(rows))
        subset = stack.with_metadata(multi.table).subset(rows)
        search_subset = subset if search_stack is stack else search_stack.subset(rows)
        result = refine_single(subset, search_subset, volume, opts.symmetries[m_index], opts, recorder,
                               progress, f"model {m_index + 1}, ", executor, None if masks is None else masks[m_index])
        moved = poses_moved(subset.metadata, result.table, symmetry_operators(opts.symmetries[m_index]))
        if moved is not None:
            (log.warning if moved.caution else log.info)("model %d: %s", m_index + 1, moved.describe())
        recorder.checked(moved)
        results.append(result)
        recorder.mark_finished(marker)
        if after is not None:
            after()
    return results


def consensus_refinement(opts: RefineOptions, stack, search_stack, start_map: np.ndarray,
                         recorder: ModelRecorder | None = None, progress=None, executor: Executor | None = None,
                         masks: list[np.ndarray] | None = None):
    """All particles refined against one map first, gold standard (what a careful user does
    when the starting map is too featureless to fix the poses: ``--consensus``), from
    ``start_map`` low-passed to ``--singleres``, with the first model's symmetry. Returns the
    stacks with the consensus poses and half-sets in their tables (where the multi-model
    iterations start their local searches) and the consensus map. ``masks``: the models'
    solvent masks (their union is the consensus map's; None: a sphere)."""
    log.info("consensus: %d particles refined against one map (gold standard) before the %d models",
             len(stack), opts.n_models)
    result = refine_single(stack, search_stack, start_map, opts.symmetries[0], opts, recorder, progress,
                           "consensus, ", executor, union(masks))
    log.info("consensus: %d iterations, resolution %.1f Å (FSC 0.143, independent half maps)", len(result.stats),
             result.resolution_0143_angstrom)
    table = result.table.drop(columns=["rlnClassNumber", "rlnMaxValueProbDistribution", SEARCH_SCORE])
    posed = stack.with_metadata(table)
    return posed, (posed if search_stack is stack else search_stack.with_metadata(table)), result.full_map
