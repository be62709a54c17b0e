"""The multi-model refinement loop (docs/architecture.md draws it as data flow).

Each iteration (:func:`run_refinement`):

1. plan (:mod:`multirefine.refine.plan`): the band searched follows the resolution
   (``--targetres`` fixes it; else the worst model's gold-standard FSC 0.143), the angular
   steps follow the band; the references are every model's central slices over its own
   symmetry's asymmetric unit on a polar grid (:mod:`multirefine.refine.polar`), in the
   particles' units (:mod:`multirefine.refine.scales`);
2. search (:mod:`multirefine.refine.assignment`): every particle of the search stack
   (``--usefilt`` or ``--input``) against model x orientation x in-plane angle x shift,
   coarse (polar) then local, CTF on the particle side;
3. choose (:mod:`multirefine.refine.choice`): each particle is scored again at its pose in
   every model against the models' last maps rebuilt without its fold and goes to the best
   (``--randclassify``: a random split in iteration 1); split and merge with three or more
   models (:mod:`multirefine.refine.trial`);
4. reconstruct (:mod:`multirefine.refine.layers`): per model and half-set, the raw
   particles at their new poses (``--soft``: weighted by posteriors; ``--sep``: at their
   best poses; ``--hypotheses``: at their distinct best poses, weighted by posteriors), the best ``--m3dkeep``, symmetry imposed, gold-standard FSC, Wiener filter,
   solvent flattened in a soft sphere;
5. record: the maps, the particle table, class averages, FSC records and statistics are
   handed to a :class:`Recorder` (the command line's writes the run folder and the report,
   :mod:`multirefine.runfolder.writer`), with the state ``--continue`` needs.
Without ``--iter`` the loop stops once the assignment settles (:func:`settled`).
Starting maps are seeded, levelled, aligned and masked first (:mod:`multirefine.refine.seeding`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
from multirefine.parallel import Executor
from multirefine.refine import start
from multirefine.refine.assignment import Priors, Searched, assignment_table, search_particles
from multirefine.refine.choice import FoldMaps, LastReconstruction, normalised, posteriors
from multirefine.refine.classes import iteration_averages
from multirefine.refine.growth import ModelCount, grow
from multirefine.refine.intensity import next_scales, scales_of
from multirefine.refine.layers import (
    Layer,
    Reconstruction,
    junk_rows,
    layer_stacks,
    make_layers,
    reconstruct_models,
)
from multirefine.refine.options import MIN_ITERATIONS, RefineOptions
from multirefine.refine.plan import SearchPlan, next_band, plan_search
from multirefine.refine.postprocess import mutual_fsc
from multirefine.refine.scales import scaled_references
from multirefine.refine.splitmerge import MIN_MODELS
from multirefine.refine.trial import Classified, FixedPoses, split_and_merge, split_merge_due
from multirefine.runfolder.records import FscRecord, IterationStats, SplitMergeTrial
from multirefine.runfolder.state import RunState

__all__ = ["COUNT_ITERATIONS", "IterationRecord", "Recorder", "RefinementResult", "count_models", "run_refinement",
           "settled"]

# settled(): fewer than 1 % of the particles changed model in each of the last two iterations
# and no model's resolution improved by 2 % over them.
SETTLED_CHANGED, SETTLED_GAIN = 0.01, 0.02

# --nmodels auto (count_models): iterations of one model against the starting map, whose
# poses the growth's splits are judged at (multirefine.refine.growth).
COUNT_ITERATIONS = 4

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class RefinementResult:
    """A finished run: its statistics and where it ended."""

    stats: list[IterationStats]
    table: pd.DataFrame  # the last assignment, one row per input particle (RELION columns)
    maps: list[np.ndarray]  # the last maps, in particle units (masked; not normalised by --mass)


@dataclass
class IterationRecord:
    """A finished iteration, as the engine hands it to its :class:`Recorder`."""

    iteration: int
    maps: list[np.ndarray]  # in particle units (masked; not normalised by --mass)
    table: pd.DataFrame  # every particle's assignment (RELION columns)
    stats: list[IterationStats]  # every iteration so far, this one last
    fsc: FscRecord
    class_averages: np.ndarray  # (C, D, D)
    class_table: pd.DataFrame
    state: RunState  # what --continue needs


class Recorder:
    """Where finished iterations go; this one keeps nothing (a library caller's default).
    The command line's writes the run folder (:class:`multirefine.runfolder.writer.RunWriter`)."""

    def start(self, maps: list[np.ndarray], noise: dict | None = None) -> None:
        """The starting maps, as searched in iteration 1 (before their intensity scale), and
        the noise model (:meth:`multirefine.refine.noise.NoiseModel.to_json`; None: white)."""

    def iteration(self, record: IterationRecord) -> None:
        """A finished iteration."""

    def finish(self, table: pd.DataFrame) -> None:
        """The run's last assignment."""


def run_refinement(
    opts: RefineOptions,
    stack,
    search_stack,
    start_maps: list[np.ndarray] | np.ndarray | None,
    progress: Progress | None = None,
    resume: RunState | None = None,
    history: list[IterationStats] | None = None,
    executor: Executor | None = None,
    recorder: Recorder | None = None,
    masks: list[np.ndarray] | None = None,
    focus: np.ndarray | None = None,
) -> RefinementResult:
    """Run ``opts.iterations`` iterations (``opts.until_settled``: at most, :func:`settled`) from ``start_maps`` (K maps, or one map that
    ``opts.seeding`` varies into K, :func:`multirefine.refine.seeding.seed_models`).

    ``stack`` holds the raw particles (reconstruction), ``search_stack`` the ones searched
    (the same stack, or the ``--usefilt`` one). ``resume`` continues a run after the last
    iteration its state holds, ``history`` being that run's statistics (``start_maps`` is
    then not used); the result is the one an uninterrupted run gives. Each finished
    iteration goes to ``recorder``. ``masks``: solvent masks on the particles' grid, one or one
    per model (``--mask``, :func:`multirefine.refine.solvent.fit_mask`); None: soft spheres.
    ``focus``: the ``--focusmask`` volume there: the model choice on its region
    (:mod:`multirefine.refine.focus`).
    """
    recorder = recorder or Recorder()
    if resume is None:
        run, current = start.start_new(opts, stack, search_stack, start_maps, masks, focus, executor, progress, recorder)
    else:
        run, current = start.resume(opts, stack, search_stack, resume, history or [], masks, focus, executor, progress)
    for iteration in range(len(current.stats) + 1, opts.iterations + 1):
        if opts.until_settled and settled(current.stats):
            log.info("the assignment settled after %d iterations", len(current.stats))
            break
        current = _iterate(run, current, iteration, recorder)
    recorder.finish(current.table)
    return RefinementResult(current.stats, current.table, current.maps)


def count_models(opts: RefineOptions, stack, search_stack, start_map: np.ndarray, progress: Progress | None = None,
                 executor: Executor | None = None, masks: list[np.ndarray] | None = None) -> ModelCount:
    """``--nmodels auto``: the number of models the particles hold, up to ``opts.kmax``.

    :data:`COUNT_ITERATIONS` iterations of one model from ``start_map`` (with ``opts``' search,
    noise model and mask) give every particle a pose; from there models are added one split
    at a time while a split gains cross-validated log-likelihood
    (:func:`multirefine.refine.growth.grow`): each split is screened at the poses it starts
    from, and the best is judged after one more iteration in which every particle is searched
    again in every model (a split that only gathers particles posed wrongly in one map gains
    nothing once they are searched in both). The outcome's maps (``.classified.made.maps``,
    in the particles' units) start the multi-model iterations."""
    one = replace(opts, symmetries=opts.symmetries[:1], iterations=COUNT_ITERATIONS, until_settled=False,
                  seeding="models", mass_kda=None, focus_mask=None, write_subtracted=False, split_merge=False)
    log.info("counting models: %d iterations of one model, then models added one split at a time (at most %d)",
             COUNT_ITERATIONS, opts.kmax)
    run, current = start.start_new(one, stack, search_stack, [start_map], masks, None, executor, progress, Recorder())
    for iteration in range(1, COUNT_ITERATIONS):
        current = _iterate(run, current, iteration, Recorder())
    band_res = current.band_resolution_angstrom

    def searched(run_k: start.Run, maps, model, last, iteration: int) -> tuple[Classified, FixedPoses]:
        """Every particle searched in every model of ``run_k`` against ``maps``, assigned and
        the maps made; scored at its new poses against those maps without its fold."""
        done = _search_and_choose(run_k, start.Current(maps, band_res, [], model=model, last=last), iteration)
        chosen = done.chosen
        fixed = FixedPoses(run_k.stack, run_k.search_stack, done.plan, run_k.halves, chosen.made.maps,
                           run_k.operators, run_k.masks, done.fold_maps, run_k.settings, opts.m3dkeep, executor,
                           progress, "counting models")
        return fixed.classified(chosen.model, chosen.found, made=chosen.made, layers=chosen.layers), fixed

    def confirm(trial: Classified, grown: FixedPoses) -> tuple[Classified, FixedPoses]:
        k = len(grown.maps)
        run_k = replace(run, opts=replace(one, symmetries=one.symmetries[:1] * k), operators=grown.operators,
                        masks=grown.masks)
        log.info("counting models: %d models, every particle searched again in each", k)
        return searched(run_k, trial.made.maps, trial.model, trial.made.last, COUNT_ITERATIONS + k - 1)

    own, fixed = searched(run, current.maps, current.model, current.last, COUNT_ITERATIONS)
    count = grow(fixed, own, opts.kmax, opts.seed, confirm)
    log.info("counting models: %d (%s)", count.chosen, count.reason)
    return count


def settled(stats: list[IterationStats]) -> bool:
    """Whether a run without ``--iter`` stops after the iterations of ``stats``: after
    :data:`MIN_ITERATIONS` or more, once fewer than :data:`SETTLED_CHANGED` of the particles
    changed model in each of the last two iterations and no model's resolution (FSC 0.143 of
    the half maps) improved by :data:`SETTLED_GAIN` or more over them."""
    if len(stats) < max(MIN_ITERATIONS, 3):
        return False
    last = stats[-2:]
    if any(s.fraction_changed_model is None or s.fraction_changed_model >= SETTLED_CHANGED for s in last):
        return False
    before, now = stats[-3].resolution_0143_angstrom, stats[-1].resolution_0143_angstrom
    return all(n > b * (1 - SETTLED_GAIN) for b, n in zip(before, now))


@dataclass
class _Searched:
    """An iteration's plan, references' maps, search and assignment."""

    plan: SearchPlan
    maps: list[np.ndarray]  # the references, as searched
    fold_maps: FoldMaps
    found: Searched
    chosen: _Chosen
    seconds: tuple[float, float, float]  # perf_counter at the start, after the search, after the reconstruction


def _search_and_choose(run: start.Run, current: start.Current, iteration: int) -> _Searched:
    """An iteration's plan, search, model choice and reconstruction."""
    opts, started = run.opts, time.perf_counter()
    plan = plan_search(run.stack.box_size, run.stack.pixel_size_angstrom, current.band_resolution_angstrom,
                       run.radius_px, opts.speed, opts.symmetries, opts.max_shift_px, opts.shrink,
                       torch.device(opts.device))
    log.info("iteration %d: search to %.1f Å (band %.1f px), global step %.1f°, local step %.1f°", iteration,
             plan.band_resolution_angstrom, plan.band_radius_px, plan.coarse_step_deg, plan.fine_step_deg)
    log.debug("iteration %d: %s", iteration, plan.describe())
    refs = scaled_references(run.stack, run.search_stack, plan, current.maps, iteration, run.opts.batch_size,
                             torch.device(opts.device))
    fold_maps = FoldMaps(run.operators, run.masks, refs.scales, run.focus)
    last = current.last
    if last is None and run.focus is not None:  # iteration 1, focused: the choice against the starting maps
        last = LastReconstruction([None] * opts.n_models, [None] * opts.n_models, current.maps, [])
    found = search_particles(run.search_stack, plan, refs.polar, refs.volumes_ft, run.settings, last,
                             fold_maps, run.bar(f"iteration {iteration}: search", len(run.stack)), run.executor,
                             current.priors)
    searched = time.perf_counter()
    chosen = _choose_and_reconstruct(run, current, plan, found, fold_maps, refs.maps, iteration)
    return _Searched(plan, refs.maps, fold_maps, found, chosen, (started, searched, time.perf_counter()))


def _iterate(run: start.Run, current: start.Current, iteration: int, recorder: Recorder) -> start.Current:
    """One iteration: plan, search, choose and reconstruct, record."""
    opts, done = run.opts, _search_and_choose(run, current, iteration)
    plan, chosen, (started, searched, reconstructed) = done.plan, done.chosen, done.seconds
    scales = None
    if opts.fit_intensity:  # the next iteration's scales (multirefine.refine.intensity)
        found = done.found
        scales = next_scales(scales_of(run.search_stack), found.fit_cross, found.fit_power,
                             found.image_power / float(plan.band.weight.sum()))
    record = _record(run, current, plan, chosen, done.maps, iteration, started, scales)
    recorded = time.perf_counter()
    recorder.iteration(record)
    if scales is not None:
        run.stack, run.search_stack = start.rescaled(run.stack, run.search_stack, scales)
    log.debug("iteration %d stages: search %.1f s, reconstruction %.1f s, class averages %.1f s, files and report "
              "%.1f s", iteration, searched - started, reconstructed - searched, recorded - reconstructed,
              time.perf_counter() - recorded)
    stat = record.stats[-1]
    log.info("iteration %d done in %.0f s: particles per model %s, changed model %s, resolution %s", iteration,
             stat.seconds, stat.particles_per_model,
             "-" if stat.fraction_changed_model is None else f"{100 * stat.fraction_changed_model:.1f} %",
             ", ".join(f"{r:.1f} Å" for r in stat.resolution_0143_angstrom))
    priors = Priors(chosen.found.model_rotations, chosen.found.model_shifts) if opts.local_search else None
    band_res = next_band(plan.band_resolution_angstrom, chosen.made.resolutions, opts.targetres)
    return start.Current(chosen.made.maps, band_res, record.stats, record.table, chosen.model, chosen.made.last,
                         priors=priors)


@dataclass
class _Chosen:
    """An iteration's assignment and the maps made from it."""

    model: np.ndarray  # (n,)
    found: Searched
    layers: list[Layer]
    layer_tables: list[pd.DataFrame]
    made: Reconstruction
    confidence: np.ndarray  # (n, K): each particle's posterior per model (rlnMaxValueProbDistribution)
    spread: bool  # --sep or --hypotheses spread the particles over their best poses
    junk: np.ndarray  # (n,) bool: --junk, in no map (rlnClassNumber 0 in the table)
    trial: SplitMergeTrial | None = None  # the split and merge trial, where one was tried


def _choose_and_reconstruct(run: start.Run, current: start.Current, plan: SearchPlan, found: Searched,
                            fold_maps: FoldMaps, maps: list[np.ndarray], iteration: int) -> _Chosen:
    """Each particle to its model (the cross-validated choice; ``--randclassify``'s split in
    iteration 1), the maps made, and split and merge where it is due."""
    opts, k = run.opts, run.opts.n_models
    confidence = posteriors(found.choice_scores, found.image_power, float(plan.band.weight.sum()), opts.score)
    model, weights = np.argmax(found.choice_scores, axis=1), confidence
    first_split = current.initial_assignment is not None and iteration == 1
    if first_split:
        model = np.asarray(current.initial_assignment, dtype=np.int64)
        weights = np.eye(k)[model]
    if not opts.soft:
        weights = np.eye(k)[model]
    hypotheses = opts.hypotheses if opts.hypotheses > 1 and not first_split else 0
    spread = (opts.sep > 1 or hypotheses > 1) and not first_split
    junk = junk_rows(scales_of(run.search_stack) * found.fit_scale, opts.junk_scale)  # absolute, with --scale
    layers = make_layers(found, model, weights, opts.sep if spread else 1, junk, hypotheses=hypotheses,
                         n_pixels=float(plan.band.weight.sum()))
    tables, stacks = layer_stacks(run.stack, layers, run.halves, run.stack.pixel_size_angstrom)
    made = reconstruct_models(run.stack, layers, stacks, run.halves, maps, run.operators, run.masks, opts.m3dkeep,
                              torch.device(opts.device), run.progress, f"iteration {iteration}: reconstruct",
                              run.executor)
    chosen = _Chosen(model, found, layers, tables, made, confidence, spread, junk)
    moved = None if current.model is None else float(np.mean(current.model != model))
    if (opts.split_merge and not opts.soft and not (spread and opts.sep > 1) and k >= MIN_MODELS
            and split_merge_due(iteration, opts.iterations, current.stats, moved)):
        fixed = FixedPoses(run.stack, run.search_stack, plan, run.halves, maps, run.operators, run.masks, fold_maps,
                           run.settings, opts.m3dkeep, run.executor, run.progress,
                           f"iteration {iteration}: split and merge")
        winner, chosen.trial = split_and_merge(fixed, found, model, layers, made, iteration)
        chosen.model, chosen.found, chosen.layers, chosen.made = winner.model, winner.found, winner.layers, winner.made
        chosen.confidence = normalised(winner.log_likelihood)
    return chosen


def _record(run: start.Run, current: start.Current, plan: SearchPlan, chosen: _Chosen, maps: list[np.ndarray],
            iteration: int, started: float, scales: np.ndarray | None) -> IterationRecord:
    """The iteration's table, class averages, FSC record and statistics."""
    opts, stack = run.opts, run.stack
    apix, n, k = stack.pixel_size_angstrom, len(stack), opts.n_models
    rows, model, found, made = np.arange(n), chosen.model, chosen.found, chosen.made
    score = found.model_scores[rows, model]
    table_poses = (model, found.model_rotations[rows, model], found.model_shifts[rows, model], score,
                   chosen.confidence[rows, model])
    table = assignment_table(stack.metadata, *table_poses, run.halves, apix)
    table.loc[chosen.junk, "rlnClassNumber"] = 0
    to_previous = None
    if iteration > 1:  # this iteration's maps against its references, the last iteration's maps
        to_previous = [
            resolution_at_threshold(fourier_shell_correlation(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                                    apix, 0.143)
            for a, b in zip(made.maps, maps)
        ]
    averages, class_table = iteration_averages(
        stack, [table] if not chosen.spread else chosen.layer_tables, opts.symmetries, plan.coarse_step_deg,
        opts.classkeep, opts.classiter, plan.fine_step_deg, plan.shift_step_px, run.progress,
        f"iteration {iteration}: class averages")
    changed = None if current.model is None else float(np.mean(current.model != model))
    stat = IterationStats(
        iteration, time.perf_counter() - started, plan.band_resolution_angstrom, plan.coarse_step_deg,
        plan.fine_step_deg, np.bincount(model, minlength=k).tolist(), changed, made.resolutions, to_previous,
        float(np.mean(score)), made.particles_in_maps, chosen.trial, int(chosen.junk.sum()),
    )
    fsc = FscRecord.of(stack.box_size, apix, made.fsc_curves, mutual_fsc(made.maps))
    state = RunState(iteration, run.radius_px, made.maps, table_poses, chosen.layers, scales,
                     None if scales is None else scales_of(run.stack))
    return IterationRecord(iteration, made.maps, table, [*current.stats, stat], fsc, averages, class_table, state)
