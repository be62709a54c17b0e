"""Where a run starts: a new one from its starting maps, or one taken up after the iteration
its saved state holds (``--continue``), and what stays the same through it.

In: the options, the particles, the starting maps (or the state and the statistics so far).
Out: :class:`Run` (half-sets, symmetry operators, mask, the stacks whitened by their noise
model) and :class:`Current` (the maps, the band, the last maps' accumulators and where local
searches start), which :func:`multirefine.refine.driver.run_refinement` iterates from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.masks import flatten_solvent
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.parallel import Executor
from multirefine.refine.assignment import Priors, assignment_table
from multirefine.refine.choice import LastReconstruction
from multirefine.refine.intensity import with_scales
from multirefine.refine.layers import Layer, layer_stacks, reconstruct_models
from multirefine.refine.noise import whitened_stacks
from multirefine.refine.options import RefineOptions, SweepSettings
from multirefine.refine.plan import next_band
from multirefine.refine.reconstruct import half_set_of_rows
from multirefine.refine.seeding import (
    align_to_first,
    level_start_maps,
    particle_radius_px,
    power_limit_angstrom,
    seed_models,
)
from multirefine.refine.solvent import ModelMasks, per_model, sphere_radius_px
from multirefine.runfolder.records import IterationStats
from multirefine.runfolder.state import RunState

__all__ = ["Current", "Run", "context", "rescaled", "resume", "start_new"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Run:
    """What stays the same through a run."""

    opts: RefineOptions
    stack: object
    search_stack: object
    halves: np.ndarray
    operators: list[torch.Tensor]
    radius_px: float
    mask_radius_px: float  # the images' background lies beyond it (noise spectra, --norm)
    masks: ModelMasks  # each model's solvent mask
    focus: ModelMasks | None  # --focusmask: the region the model choice judges (multirefine.refine.focus)
    executor: Executor | None
    progress: Progress | None

    @property
    def settings(self) -> SweepSettings:
        return SweepSettings.of(self.opts)

    def bar(self, label: str, total: int):
        return self.progress(label, total) if self.progress else None


@dataclass
class Current:
    """Where the run is after an iteration: what the next one starts from."""

    maps: list[np.ndarray]
    band_resolution_angstrom: float
    stats: list[IterationStats]
    table: pd.DataFrame | None = None
    model: np.ndarray | None = None  # every particle's model
    last: LastReconstruction | None = None  # for the next model choice
    initial_assignment: np.ndarray | None = None  # --randclassify: iteration 1's split
    priors: Priors | None = None  # local searches: where each particle's search starts, per model


def context(opts, stack, search_stack, radius_px: float, masks: list[np.ndarray] | None, focus: np.ndarray | None,
            executor, progress) -> Run:
    """The run's constants; ``masks``: the ``--mask`` files' volumes on the particles' grid
    (:func:`multirefine.refine.solvent.fit_mask`; one, or one per model), None: spheres;
    ``focus``: the ``--focusmask`` volume there (None: the model choice on the whole maps)."""
    box = stack.box_size
    mask_radius_px = sphere_radius_px(radius_px, box, opts.particle_diameter_angstrom is not None)
    stack, search_stack = whitened_stacks(stack, search_stack, mask_radius_px, opts.noise_model, opts.normalise)
    return Run(opts, stack, search_stack, half_set_of_rows(stack.metadata, opts.seed),
                [torch.as_tensor(symmetry_operators(s), dtype=torch.float32) for s in opts.symmetries],
                radius_px, mask_radius_px, ModelMasks(box, mask_radius_px, per_model(masks, opts.n_models)),
                None if focus is None else ModelMasks(box, mask_radius_px, [focus]), executor, progress)


def start_new(opts, stack, search_stack, start_maps, masks, focus, executor, progress, recorder) -> tuple[Run, Current]:
    """A new run: the starting maps seeded, levelled, aligned and masked; the first band."""
    apix = stack.pixel_size_angstrom
    seeded, initial = seed_models([np.asarray(m) for m in start_maps], opts.seeding, opts.n_models, apix,
                                  opts.seed, len(stack))
    maps = level_start_maps([np.asarray(m, dtype=np.float32) for m in seeded], stack.box_size)
    run = context(opts, stack, search_stack, particle_radius(opts, maps, stack.pixel_size_angstrom), masks, focus,
                  executor, progress)
    if opts.targetres is not None:
        band_res = opts.targetres
    else:
        band_res = max(min(power_limit_angstrom(m, apix) for m in maps), 2.5 * apix)
    if opts.align_maps and opts.seeding == "models":
        maps = align_to_first(maps, apix, band_res)
    maps = [flatten_solvent(torch.from_numpy(m), run.masks.of(i)).numpy() for i, m in enumerate(maps)]  # as every later reference
    noise = run.stack.noise if opts.noise_model != "white" else None
    recorder.start(maps, None if noise is None else noise.to_json() | {"pixel_size_angstrom": apix})
    priors = None
    if opts.local_search:
        priors = Priors.of_table(search_stack.metadata, apix, opts.n_models)
        log.info("local searches from the input's poses (rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst)")
    return run, Current(maps, band_res, [], initial_assignment=initial, priors=priors)


def resume(opts, stack, search_stack, state: RunState, history, masks, focus, executor, progress) -> tuple[Run, Current]:
    """A run taken up after the iteration its state holds: the last maps' accumulators are
    rebuilt from the layers they were made from (the stack as the run loaded it: normalised,
    whitened, with the intensity scales it had), for the next model choice."""
    run = context(opts, stack, search_stack, state.radius_px, masks, focus, executor, progress)
    made_from = run.stack if state.intensity_used is None else with_scales(run.stack, state.intensity_used)
    apix = stack.pixel_size_angstrom
    maps = [np.asarray(m, dtype=np.float32) for m in state.maps]
    stats = list(history[: state.iteration])
    table = assignment_table(stack.metadata, *state.table_poses, run.halves, stack.pixel_size_angstrom)
    band_res = next_band(stats[-1].band_resolution_angstrom, stats[-1].resolution_0143_angstrom, opts.targetres)
    last = None
    if state.iteration < opts.iterations:
        layers = [Layer(*arrays) for arrays in state.layers]
        _, stacks = layer_stacks(made_from, layers, run.halves, apix)
        last = reconstruct_models(made_from, layers, stacks, run.halves, maps, run.operators, run.masks, opts.m3dkeep,
                                  torch.device(opts.device), progress, f"iteration {state.iteration}: rebuilt",
                                  executor).last
    log.debug("continuing %s after iteration %d of %d", opts.path, state.iteration, opts.iterations)
    priors = None
    if opts.local_search:  # each model's poses of the last iteration (its layers), else the table's
        priors = Priors.of_layers(state.layers, opts.n_models) or Priors.of_table(table, apix, opts.n_models)
    if state.intensity is not None:  # --scale: the scales the next iteration uses
        run.stack, run.search_stack = rescaled(run.stack, run.search_stack, state.intensity)
    return run, Current(maps, band_res, stats, table, state.table_poses[0], last, priors=priors)


def particle_radius(opts, maps: list[np.ndarray], pixel_size_angstrom: float) -> float:
    """The particle's radius in px: half ``--particle-diameter``, else estimated from the maps."""
    if opts.particle_diameter_angstrom is not None:
        return opts.particle_diameter_angstrom / (2 * pixel_size_angstrom)
    return max(particle_radius_px(m) for m in maps)


def rescaled(stack, search_stack, scales: np.ndarray):
    """Both stacks with each particle's intensity scale (the search stack stays the stack
    where it was)."""
    scaled = with_scales(stack, scales)
    return scaled, (scaled if search_stack is stack else with_scales(search_stack, scales))
