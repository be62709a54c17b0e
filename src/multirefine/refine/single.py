"""Each model's particles refined on their own, gold standard (DESIGN.md, "What it is for").

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
multi-model run (:class:`multirefine.refine.driver.SearchPlan`, one model), then the half
accumulators, the half-map FSC and the full map Wiener-filtered by it
(:func:`multirefine.refine.reconstruct.gold_standard_reconstruction`). The next references
are the half maps Wiener-filtered by a half map's own SSNR (half the full map's) and masked.
The band follows the FSC-0.143 resolution, and the angular steps follow the band. The
refinement stops when the resolution has not improved by 1 % for :data:`PATIENCE`
iterations, or after ``--singleiter``.

Files, in ``model_MM/`` of the run folder (a contract, documented in the README):
``threed_00.mrc`` the starting map (low-passed; the mean of the two when each half-set
has its own), ``threed_II.mrc`` the full map after iteration ``II``, ``fsc_II.json``,
``convergence.json``; at the end ``threed_final.mrc`` (the full map, FSC-weighted and
masked), ``half1_unfil.mrc`` / ``half2_unfil.mrc`` (the last half maps, neither filtered
nor masked: for ``relion_postprocess`` or any other sharpening) and
``particles_final.star`` (the set with its final poses), and last ``finished.json``: after
which multi-model iteration, with how many particles and which ``--singleiter`` and
``--singleres`` the model was refined. With ``--mass`` the full maps written are
normalised by it, as every map of the run is.

``multirefine refine --continue`` keeps a model whose ``finished.json`` matches the run
(the same last iteration, number of particles and options) and refines the others again,
after removing what an earlier attempt wrote in their folders: an interrupted one, or a
finished one made from an earlier classification or with another ``--singleiter`` or
``--singleres``. Files of other names in a model's folder are left alone.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from multirefine.fourier.filters import lowpass_volume
from multirefine.fourier.fsc import resolution_at_threshold
from multirefine.fourier.masks import flatten_solvent, soft_sphere_mask
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import rotation_change_deg
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.io.maps import write_map
from multirefine.io.star import write_particles_star
from multirefine.parallel import Executor, InProcess
from multirefine.refine import runfolder
from multirefine.refine.batch import load_batch
from multirefine.refine.driver import (
    RefinementResult,
    RefineOptions,
    assignment_table,
    filtered_scale,
    plan_search,
    write_report_safely,
)
from multirefine.refine.postprocess import normalize_by_mass
from multirefine.refine.reconstruct import (
    accumulate_in_shards,
    gold_standard_reconstruction,
    half_set_of_rows,
)
from multirefine.refine.seeding import particle_radius_px

__all__ = ["SingleResult", "SingleStats", "refine_each_model", "refine_single"]

log = logging.getLogger(__name__)

MIN_PARTICLES = 50  # a model with fewer is not refined on its own
PATIENCE = 2  # iterations without a 1 % better resolution before a refinement stops
FINISHED = runfolder.MODEL_FINISHED  # written last: the model's own refinement is complete
# What refine_single writes into its folder (and nothing else there): FINISHED first, so that
# a folder cleared only in part is never taken for a finished one.
_OUTPUTS = re.compile(r"threed_\d+\.mrc|fsc_\d+\.json|convergence\.json|threed_final\.mrc|half[12]_unfil\.mrc"
                      r"|particles_final\.star")


@dataclass
class SingleStats:
    iteration: int
    seconds: float
    band_resolution_angstrom: float
    coarse_step_deg: float
    fine_step_deg: float
    particles: int
    resolution_0143_angstrom: float
    median_rotation_change_deg: float | None  # from the previous iteration, symmetry mates counted as one
    mean_score: float


@dataclass
class SingleResult:
    stats: list[SingleStats]
    resolution_0143_angstrom: float  # of the last iteration's half maps
    earlier: bool = False  # finished by an earlier attempt of the run (--continue), kept as it was


def refine_single(
    stack,
    search_stack,
    start_map: np.ndarray,
    symmetry: str,
    out: str | Path,
    opts: RefineOptions,
    mass_kda: float | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    label: str = "",
    executor: Executor | None = None,
) -> SingleResult:
    """Refine one particle set against its own two half maps from ``start_map``: one map
    ``(D, D, D)`` for both half-sets, or one per half-set ``(2, D, D, D)``.

    ``stack`` holds the set's raw particles (reconstruction), ``search_stack`` the ones
    searched (the same, or the ``--usefilt`` ones, row for row). Half-sets come from
    ``rlnRandomSubset`` (else a random half each, ``opts.seed``). From ``opts``:
    ``single_iterations`` (at most), ``single_start_resolution_angstrom``, speed, shifts,
    ``shrink``, batch size, device, score and ``m3dkeep`` (per half-set). ``executor`` runs the
    search (a shard of a half-set's rows each, :func:`_search_rows`) and the reconstruction.
    """
    executor = executor or InProcess()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(opts.device)
    box, apix, n = stack.box_size, stack.pixel_size_angstrom, len(stack)
    halves = half_set_of_rows(stack.metadata, opts.seed)
    operators = symmetry_operators(symmetry)
    ops = torch.as_tensor(operators, dtype=torch.float32)
    start_map = np.asarray(start_map, dtype=np.float32)
    pair = start_map if start_map.ndim == 4 else np.stack([start_map, start_map])
    radius_px = max(particle_radius_px(m) for m in pair)
    mask = soft_sphere_mask(box, min(radius_px + 3, box / 2 - 2), 3.0)
    references = [  # per half-set
        flatten_solvent(lowpass_volume(torch.from_numpy(m), opts.single_start_resolution_angstrom, apix), mask).numpy()
        for m in pair
    ]
    write_map(out / "threed_00.mrc", (references[0] + references[1]) / 2, apix)
    band_res = opts.single_start_resolution_angstrom
    stats: list[SingleStats] = []
    best, since_best = math.inf, 0
    previous_rotations = None
    for iteration in range(1, opts.single_iterations + 1):
        started = time.perf_counter()
        plan = plan_search(box, apix, band_res, radius_px, opts.speed, [symmetry], opts.max_shift_px, opts.shrink, device)
        if iteration == 1:
            # The starting maps in the units of each half-set's particles (the multi-model
            # run's maps already are: factors near 1; any other map need not be).
            scales = [
                float(plan.intensity_scales(
                    search_stack.subset(np.nonzero(halves == h)[0]),
                    torch.from_numpy(references[h - 1]).to(device)[None], opts.batch_size,
                )[0])
                for h in (1, 2)
            ]
            log.info("%sstarting maps scaled to the particles' intensity: x%.3g, x%.3g", label, *scales)
            references = [r * np.float32(a) for r, a in zip(references, scales)]
            scale = 1.0  # now in the search stack's units
        else:  # reconstructions: in the raw particles' units
            scale = 1.0 if search_stack is stack else filtered_scale(stack, search_stack, plan.band, device)
        log.info(
            "%siteration %d: search to %.1f Å, global step %.1f°, local step %.1f°",
            label, iteration, plan.band_resolution_angstrom, plan.coarse_step_deg, plan.fine_step_deg,
        )
        log.debug("%siteration %d: %s", label, iteration, plan.describe())
        rotations, shifts, scores = np.zeros((n, 3, 3)), np.zeros((n, 2)), np.zeros(n)
        advance = progress(f"{label}iteration {iteration}: search", n) if progress else (lambda _: None)
        for h in (1, 2):
            volume_ft = prepare_volume_ft(torch.from_numpy(references[h - 1]).to(device) * scale)[None]
            polar = plan.references(volume_ft)
            rows_h = np.nonzero(halves == h)[0]
            shards = [part for part in np.array_split(rows_h, max(1, min(executor.parts, len(rows_h)))) if len(part)]
            parts = executor.map(_search_rows, shards, search_stack, plan, polar, volume_ft, opts, advance=advance,
                                 sizes=[len(part) for part in shards])
            for rows, (shard_rotations, shard_shifts, shard_scores) in zip(shards, parts):
                rotations[rows], shifts[rows], scores[rows] = shard_rotations, shard_shifts, shard_scores
        table = assignment_table(stack.metadata, np.zeros(n, dtype=np.int64), rotations, shifts, scores,
                                 np.ones(n), halves, apix)
        groups = []
        for h in (1, 2):
            rows_h = np.nonzero(halves == h)[0]
            cut = np.quantile(scores[rows_h], 1 - opts.m3dkeep) if len(rows_h) and opts.m3dkeep < 1 else -np.inf
            groups.append(rows_h[scores[rows_h] >= cut])
        searched = time.perf_counter()
        advance = progress(f"{label}iteration {iteration}: reconstruct", sum(len(g) for g in groups)) if progress else None
        acc1, acc2 = accumulate_in_shards(executor, stack.with_metadata(table), groups, 256, device, advance)
        result = gold_standard_reconstruction(acc1, acc2, ops)
        resolution = resolution_at_threshold(result.fsc, apix, 0.143)
        # A half map holds half the particles: half the full map's SSNR, twice its 1 / SSNR.
        references = [flatten_solvent(acc.reconstruct(ops, 2 * result.inverse_ssnr).cpu(), mask).numpy()
                      for acc in (acc1, acc2)]
        full_map = flatten_solvent(torch.from_numpy(result.full_map), mask).numpy()
        change = None
        if previous_rotations is not None:
            change = float(np.median(rotation_change_deg(previous_rotations, rotations, operators)))
        previous_rotations = rotations
        stat = SingleStats(
            iteration, time.perf_counter() - started, plan.band_resolution_angstrom, plan.coarse_step_deg,
            plan.fine_step_deg, n, resolution, change, float(np.mean(scores)),
        )
        stats.append(stat)
        write_map(out / f"threed_{iteration:02d}.mrc", normalize_by_mass(full_map, mass_kda, apix) if mass_kda else full_map,
                  apix)
        runfolder.write_json(out / f"fsc_{iteration:02d}.json", {
            "pixel_size_angstrom": apix,
            "shell_frequency_per_angstrom": (np.arange(box // 2 + 1) / (box * apix)).tolist(),
            "half_map_fsc": [result.fsc.tolist()],
        })
        runfolder.write_json(out / runfolder.CONVERGENCE, [asdict(s) for s in stats])
        log.debug("%siteration %d stages: search %.1f s, reconstruction and files %.1f s", label, iteration,
                  searched - started, time.perf_counter() - searched)
        log.info(
            "%siteration %d done in %.0f s: resolution %.2f Å (FSC 0.143, half maps), median rotation change %s",
            label, iteration, stat.seconds, resolution, "-" if change is None else f"{change:.1f}°",
        )
        if np.isfinite(resolution):
            band_res = resolution
        if resolution < 0.99 * best:
            best, since_best = resolution, 0
        else:
            since_best += 1
            if since_best >= PATIENCE:
                break
    write_map(out / "half1_unfil.mrc", result.half_maps[0], apix)
    write_map(out / "half2_unfil.mrc", result.half_maps[1], apix)
    final = normalize_by_mass(full_map, mass_kda, apix) if mass_kda else full_map
    write_map(out / "threed_final.mrc", final, apix)
    write_particles_star(out / "particles_final.star", table, stack.optics)
    return SingleResult(stats, resolution)


def _search_rows(rows: np.ndarray, search_stack, plan, polar, volume_ft: torch.Tensor, opts: RefineOptions,
                 advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best pose of each of the stack rows ``rows`` against one half map (its polar
    references ``polar`` and transform ``volume_ft``): rotations ``(n, 3, 3)``, shifts
    ``(n, 2)`` px and scores ``(n,)``, in batches of ``opts.batch_size``."""
    rotations, shifts, scores = np.zeros((len(rows), 3, 3)), np.zeros((len(rows), 2)), np.zeros(len(rows))
    for first in range(0, len(rows), opts.batch_size):
        at = np.arange(first, min(len(rows), first + opts.batch_size))
        batch = load_batch(search_stack, rows[at], device=volume_ft.device, center=False)
        found = plan.search(batch.images_ft, batch.ctf, polar, volume_ft, opts.score)
        rotations[at] = found.model_rotations[:, 0].cpu().double().numpy()
        shifts[at] = found.model_shift_px[:, 0].cpu().double().numpy()
        scores[at] = found.model_scores[:, 0].cpu().numpy()
        if advance is not None:
            advance(len(at))
    return rotations, shifts, scores


def refine_each_model(
    opts: RefineOptions,
    stack,
    search_stack,
    multi: RefinementResult,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    executor: Executor | None = None,
) -> list[SingleResult | None]:
    """Refine each model's particles of ``multi`` on their own, into ``model_MM/`` of the
    run folder; a model with fewer than :data:`MIN_PARTICLES` particles is left out (None)."""
    classes = multi.table["rlnClassNumber"].to_numpy()
    results: list[SingleResult | None] = []
    for m_index, volume in enumerate(multi.maps):
        rows = np.nonzero(classes == m_index + 1)[0]
        folder = Path(opts.path) / runfolder.model_folder_name(m_index + 1)
        if len(rows) < MIN_PARTICLES:
            log.warning("model %d holds %d particles (< %d): not refined on its own", m_index + 1, len(rows), MIN_PARTICLES)
            _clear(folder)  # a refinement from an earlier classification of the run is no longer this model's
            results.append(None)
            continue
        marker = {"after_iteration": multi.stats[-1].iteration if multi.stats else 0, "particles": len(rows),
                  "single_iterations": opts.single_iterations,
                  "single_start_resolution_angstrom": opts.single_start_resolution_angstrom}
        done = _finished(folder, marker)
        if done is not None:
            log.info("model %d: refined on its own before (%s), kept", m_index + 1, folder / FINISHED)
            results.append(done)
            continue
        _clear(folder)
        log.info("model %d: %d particles refined on their own (gold standard)", m_index + 1, len(rows))
        subset = stack.with_metadata(multi.table).subset(rows)
        search_subset = subset if search_stack is stack else search_stack.subset(rows)
        results.append(refine_single(
            subset, search_subset, volume, opts.symmetries[m_index], folder,
            opts, None if not opts.mass_kda else opts.mass_kda[m_index], progress, f"model {m_index + 1}, ", executor,
        ))
        runfolder.write_json(folder / FINISHED, marker)
        write_report_safely(Path(opts.path))
    return results


def _finished(folder: Path, marker: dict) -> SingleResult | None:
    """The model's own refinement as an earlier attempt of this run finished it, if its
    ``finished.json`` says it was made from the same particles with the same options."""
    try:
        if json.loads((folder / FINISHED).read_text()) != marker:
            return None
        stats = [SingleStats(**s) for s in json.loads((folder / runfolder.CONVERGENCE).read_text())]
    except (OSError, ValueError, TypeError):
        return None
    if not stats or not (folder / "threed_final.mrc").exists():
        return None
    return SingleResult(stats, stats[-1].resolution_0143_angstrom, earlier=True)


def _clear(folder: Path) -> None:
    """Remove what an earlier attempt wrote into a model's folder (an interrupted one, or a
    finished one made from another classification or with other options): refine_single's
    files only, so that nothing stale outlives the new refinement. Other files stay."""
    if not folder.is_dir():
        return
    (folder / FINISHED).unlink(missing_ok=True)
    stale = [path for path in folder.iterdir() if _OUTPUTS.fullmatch(path.name)]
    for path in stale:
        path.unlink()
    if stale:
        log.info("%s: removed %d files of an earlier refinement of this model", folder, len(stale))
