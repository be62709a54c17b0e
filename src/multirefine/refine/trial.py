"""The split and merge trial, the stage (the arithmetic is :mod:`multirefine.refine.splitmerge`).

In: this iteration's search (:class:`~multirefine.refine.assignment.Searched`), its
assignment, layers and maps. The model whose particles lose least by going to their next
best model is dissolved, and half of the largest other model re-seeds it; the trial and the
iteration's own assignment each get :data:`SPLIT_MERGE_ROUNDS` rounds of classification at
fixed poses (:class:`FixedPoses`: maps made again, each particle to its best model by its
cross-validated score), and the trial wins if its cross-validated classification
log-likelihood is higher by more than :data:`SPLIT_MERGE_MIN_GAIN` per particle. Out: the
winner (:class:`Classified`: assignment, layers, maps, scores) and the trial's record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from multirefine.parallel import Executor
from multirefine.refine.assignment import Searched
from multirefine.refine.choice import FoldMaps, cross_validated
from multirefine.refine.layers import (
    Layer,
    Reconstruction,
    layer_stacks,
    make_layers,
    reconstruct_models,
)
from multirefine.refine.options import SweepSettings
from multirefine.refine.plan import SearchPlan
from multirefine.refine.solvent import ModelMasks
from multirefine.refine.splitmerge import (
    classification_log_likelihood,
    mixture_log_likelihood,
    removal_costs,
    trial_assignment,
)
from multirefine.runfolder.records import IterationStats, SplitMergeTrial

__all__ = [
    "SPLIT_MERGE_EVERY",
    "SPLIT_MERGE_FIRST",
    "SPLIT_MERGE_MIN_GAIN",
    "SPLIT_MERGE_MOVED",
    "SPLIT_MERGE_ROUNDS",
    "SPLIT_MERGE_SETTLE",
    "Classified",
    "FixedPoses",
    "split_and_merge",
    "split_merge_due",
]

log = logging.getLogger(__name__)

# Split and merge (:func:`split_and_merge`) is tried in iteration SPLIT_MERGE_FIRST (the maps
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

def split_merge_due(iteration: int, iterations: int, stats: list[IterationStats], changed: float | None) -> bool:
    """Whether split and merge is tried in this iteration of ``iterations``, after the
    iterations of ``stats``, where ``changed`` is the fraction of particles this iteration
    moved to another model."""
    if not (SPLIT_MERGE_FIRST <= iteration <= iterations - SPLIT_MERGE_SETTLE
            and (iteration - SPLIT_MERGE_FIRST) % SPLIT_MERGE_EVERY == 0):
        return False
    tried = [i for i, s in enumerate(stats) if s.split_merge is not None]
    if not tried or stats[tried[-1]].split_merge.kept:
        return True
    moved = sum(s.fraction_changed_model or 0.0 for s in stats[tried[-1] + 1:]) + (changed or 0.0)
    return moved >= SPLIT_MERGE_MOVED


@dataclass
class Classified:
    """An assignment at fixed poses, the maps made from it and its cross-validated scores."""

    model: np.ndarray
    found: Searched  # the poses (a dissolved model's are those of the model split)
    layers: list[Layer]
    made: Reconstruction
    log_likelihood: np.ndarray  # (n, K) against the maps of ``made`` rebuilt without each particle's fold

    @property
    def objective(self) -> float:
        return classification_log_likelihood(self.log_likelihood)

    @property
    def mixture(self) -> float:
        """The mixture's cross-validated log-likelihood (:func:`mixture_log_likelihood`)."""
        return mixture_log_likelihood(self.log_likelihood, self.model)


@dataclass
class FixedPoses:
    """How an assignment at fixed poses becomes maps and cross-validated scores: the
    iteration's particles, plan, half-sets, last maps, symmetry, mask and executor."""

    stack: object
    search_stack: object
    plan: SearchPlan
    halves: np.ndarray
    maps: list[np.ndarray]
    operators: list[torch.Tensor]
    masks: ModelMasks
    fold_maps: FoldMaps
    settings: SweepSettings
    m3dkeep: float
    executor: Executor | None = None
    # A bar per stage of each assignment made (Run.progress), and the stages' label
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    label: str = "at fixed poses"

    def classified(self, model: np.ndarray, found: Searched, made: Reconstruction | None = None,
                   layers: list[Layer] | None = None) -> Classified:
        """The maps of an assignment at fixed poses (or ``made`` from ``layers``), and its scores."""
        k, apix = len(self.maps), self.stack.pixel_size_angstrom
        if made is None:
            layers = make_layers(found, model, np.eye(k)[model], 1, hypotheses=self.settings.hypotheses,
                                 n_pixels=float(self.plan.band.weight.sum()))
            _, stacks = layer_stacks(self.stack, layers, self.halves, apix)
            made = reconstruct_models(self.stack, layers, stacks, self.halves, self.maps, self.operators, self.masks,
                                      self.m3dkeep, torch.device(self.settings.device), self.progress,
                                      f"{self.label}: reconstruct", self.executor)
        advance = self.progress(f"{self.label}: model choice", len(model)) if self.progress else None
        log_likelihood = cross_validated(self.search_stack, self.plan, made.last, found, self.fold_maps,
                                         self.settings, self.executor, advance)
        return Classified(model, found, layers, made, log_likelihood)

    def with_copy_of(self, m: int, current: Classified) -> tuple[FixedPoses, Searched]:
        """These fixed poses and ``current``'s search with one model more, a copy of model
        ``m``: its map (as ``current`` made it), symmetry, mask, intensity scale and poses
        (:mod:`multirefine.refine.growth`)."""
        fold, found = self.fold_maps, current.found
        masks = fold.masks if fold.masks.user is None else replace(fold.masks, user=[*fold.masks.user, fold.masks.user[m]],
                                                                    _cache={})
        grown = replace(
            self, maps=[*current.made.maps, current.made.maps[m]], operators=[*self.operators, self.operators[m]],
            masks=masks, fold_maps=replace(fold, operators=[*fold.operators, fold.operators[m]], masks=masks,
                                           scales=np.append(fold.scales, fold.scales[m])),
        )
        return grown, found.of_models([*range(found.model_scores.shape[1]), m])

    def settle(self, start: Classified, rounds: int) -> Classified:
        """``rounds`` rounds of hard classification at fixed poses from ``start`` (each particle
        to its best model by cross-validated score, then the maps made again), fewer if nothing
        moves; a round costs one reconstruction and one scoring of every particle, no search."""
        current = start
        for _ in range(rounds):
            model = current.log_likelihood.argmax(axis=1)
            if np.array_equal(model, current.model):
                break
            current = self.classified(model, current.found)
        return current


def split_and_merge(fixed: FixedPoses, found: Searched, model: np.ndarray, layers: list[Layer],
                    made: Reconstruction, iteration: int) -> tuple[Classified, SplitMergeTrial | None]:
    """A split and merge trial (:mod:`multirefine.refine.splitmerge`) against this iteration's
    own assignment (see the module docstring). Returns the winner and what was tried (None:
    nothing, the largest other model holds fewer than 40 particles)."""
    k = len(fixed.maps)
    own = fixed.classified(model, found, made=made, layers=layers)
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
    if found.top_model is not None:  # --hypotheses: the dissolved model's are poses in a map no longer there
        trial_found.top_scores = np.where(found.top_model == dissolved, -np.inf, found.top_scores)
    trial = fixed.classified(trial_model, trial_found)
    own = fixed.settle(own, SPLIT_MERGE_ROUNDS)
    trial = fixed.settle(trial, SPLIT_MERGE_ROUNDS)
    gain = trial.objective - own.objective
    kept = gain > SPLIT_MERGE_MIN_GAIN * len(model)
    log.info(
        "iteration %d: split and merge: model %d (%d particles) merged into the others, half of model %d (%d) "
        "re-seeds it; after %d rounds at fixed poses, cross-validated log-likelihood %+.1f (%+.3f per particle): "
        "%s, particles per model %s",
        iteration, dissolved + 1, counts[dissolved], split + 1, counts[split], SPLIT_MERGE_ROUNDS, gain,
        gain / len(model), "kept" if kept else "not kept", np.bincount((trial if kept else own).model, minlength=k).tolist(),
    )
    record = SplitMergeTrial(dissolved + 1, split + 1, float(gain), bool(kept))
    return (trial if kept else own), record
