"""The layers of maps and their reconstruction.

What each model's map is made from is a list of :class:`Layer`: one pose per particle
(model, rotation, shift, score, weight). Hard assignment is one layer per model (every
particle at its best pose there, weight 1 in its own model and 0 elsewhere); ``--soft``
weights them by the posteriors; ``--sep S`` is S layers, each particle at its S best poses
in its model with weight 1/S; ``--hypotheses H`` is H layers, each particle at its H best
distinct poses in its model weighted by their posteriors (:func:`make_layers`). :func:`reconstruct_models` makes each
model's gold-standard map from them (the best ``--m3dkeep`` by score, per half-set,
symmetry imposed, Wiener-filtered by the half-map FSC, solvent flattened) and keeps what
went into it (:class:`~multirefine.refine.choice.LastReconstruction`) for the next model
choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.fsc import resolution_at_threshold
from multirefine.fourier.masks import flatten_solvent
from multirefine.fourier.reconstruction import FourierAccumulator
from multirefine.parallel import Executor, InProcess
from multirefine.refine.assignment import Searched, assignment_table
from multirefine.refine.choice import LastReconstruction, normalised
from multirefine.refine.reconstruct import accumulate_in_shards, gold_standard_reconstruction
from multirefine.refine.solvent import ModelMasks
from multirefine.refine.splitmerge import log_likelihoods

__all__ = ["Layer", "Reconstruction", "hypothesis_layers", "hypothesis_weights", "junk_rows", "layer_stacks", "make_layers",
           "reconstruct_models"]

log = logging.getLogger(__name__)


@dataclass
class Layer:
    """One reconstruction entry per particle (``n`` particles)."""

    model: np.ndarray  # (n,) int: the model the entry goes into
    rotations: np.ndarray  # (n, 3, 3)
    shifts_px: np.ndarray  # (n, 2)
    scores: np.ndarray  # (n,)
    weights: np.ndarray  # (n,)

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.model, self.rotations, self.shifts_px, self.scores, self.weights


def junk_rows(fit_scale: np.ndarray, fraction: float | None) -> np.ndarray:
    """``--junk F``: the particles whose fitted intensity at their best pose (the least-squares
    scale of the reference in them, :attr:`Searched.fit_scale`: about 1 for a particle at its
    contrast, about 0 for an empty box, about the share of the particle a fragment holds) is
    below ``F`` times the median; none where ``fraction`` is None. ``(n,)`` bool."""
    if fraction is None:
        return np.zeros(len(fit_scale), dtype=bool)
    return fit_scale < fraction * np.median(fit_scale)


def make_layers(found: Searched, model: np.ndarray, posteriors: np.ndarray, sep: int,
                junk: np.ndarray | None = None, *, hypotheses: int = 0, n_pixels: float = 0.0) -> list[Layer]:
    """What each model's map is made from, as layers of one pose per particle (:func:`_layers_of`,
    or :func:`hypothesis_layers` with ``hypotheses`` > 1 and the band's ``n_pixels``); the
    ``junk`` rows (``--junk``) in none of them (weight 0)."""
    if hypotheses > 1:
        layers = hypothesis_layers(found, model, hypotheses, n_pixels)
    else:
        layers = _layers_of(found, model, posteriors, sep)
    if junk is not None and junk.any():
        for layer in layers:
            layer.weights = np.where(junk, 0.0, layer.weights)
    return layers


def _layers_of(found: Searched, model: np.ndarray, posteriors: np.ndarray, sep: int) -> list[Layer]:
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
            Layer(np.full(n, m), found.model_rotations[:, m], found.model_shifts[:, m], found.model_scores[:, m],
                  posteriors[:, m])
            for m in range(k)
        ]
    in_model = found.top_model == model[:, None]
    pick = np.argsort(~in_model, axis=1, kind="stable")[:, :sep]
    present = np.take_along_axis(in_model, pick, 1)
    layers = []
    for j in range(sep):
        p, f = pick[:, j], present[:, j]
        layers.append(Layer(
            model,
            np.where(f[:, None, None], found.top_rotations[rows, p], found.model_rotations[rows, model]),
            np.where(f[:, None], found.top_shifts[rows, p], found.model_shifts[rows, model]),
            np.where(f, found.top_scores[rows, p], found.model_scores[rows, model]),
            np.full(n, 1 / sep),
        ))
    return layers


def hypothesis_layers(found: Searched, model: np.ndarray, hypotheses: int, n_pixels: float) -> list[Layer]:
    """``--hypotheses H``: every particle at each of its ``H`` best distinct poses within its
    chosen model (the search's tracks, :func:`multirefine.refine.search.refine_assignments`),
    weighted by their posteriors under the least-squares score's white-noise likelihood
    (:func:`multirefine.refine.splitmerge.log_likelihoods`), RELION's marginalisation over
    poses restricted to the best few. A hypothesis missing there is the best pose at weight 0.
    Every entry carries the particle's best score, so ``--m3dkeep`` keeps or drops a particle
    whole."""
    n = len(model)
    rows = np.arange(n)
    in_model = np.isfinite(found.top_scores) & (found.top_model == model[:, None])
    pick = np.argsort(~in_model, axis=1, kind="stable")[:, :hypotheses]  # tracks are best first
    present = np.take_along_axis(in_model, pick, 1)
    scores = np.where(present, np.take_along_axis(found.top_scores, pick, 1), -np.inf)
    weights = hypothesis_weights(scores, found.image_power, n_pixels)
    best = found.model_scores[rows, model]
    return [
        Layer(
            model,
            np.where(present[:, j, None, None], found.top_rotations[rows, pick[:, j]], found.model_rotations[rows, model]),
            np.where(present[:, j, None], found.top_shifts[rows, pick[:, j]], found.model_shifts[rows, model]),
            best,
            weights[:, j],
        )
        for j in range(pick.shape[1])
    ]


def hypothesis_weights(scores: np.ndarray, image_power: np.ndarray, n_pixels: float) -> np.ndarray:
    """``(n, T)``: the posteriors of each particle's pose hypotheses from their ls scores ``(n, T)``
    (``-inf``: none, weight 0), its power in the band ``(n,)`` and the band's pixels
    (:func:`multirefine.refine.splitmerge.log_likelihoods`)."""
    return normalised(log_likelihoods(scores, image_power, n_pixels, "ls"))


def layer_stacks(stack, layers: list[Layer], halves: np.ndarray, apix: float) -> tuple[list[pd.DataFrame], list]:
    """Each layer's poses as a RELION table, and the stack with that table."""
    tables = [assignment_table(stack.metadata, *layer.arrays, halves, apix) for layer in layers]
    return tables, [stack.with_metadata(t) for t in tables]


@dataclass
class Reconstruction:
    maps: list[np.ndarray]  # masked, in particle units
    fsc_curves: list[np.ndarray]  # half-map FSC per model
    resolutions: list[float]  # FSC 0.143 per model (inf: the map was kept)
    last: LastReconstruction
    particles_in_maps: list[float]  # weights summed over what each map was made from


def reconstruct_models(
    stack, layers: list[Layer], layer_stacks: list, halves: np.ndarray, maps: list[np.ndarray],
    operators: list[torch.Tensor], masks: ModelMasks, m3dkeep: float, device, progress, label: str,
    executor: Executor | None = None,
) -> Reconstruction:
    """Each model's gold-standard map from its entries in ``layers`` (the best ``m3dkeep`` of
    them by score); a model with fewer than 10 particles keeps its map from ``maps``. The
    accumulators are filled by ``executor``, a range of stack rows each (:func:`accumulate_in_shards`)."""
    k, box, apix = len(maps), stack.box_size, stack.pixel_size_angstrom
    groups, weights, stacks, group_model = [], [], [], []
    for m_index in range(k):
        entries = [(i, np.nonzero((layer.model == m_index) & (layer.weights >= 0.01))[0])
                   for i, layer in enumerate(layers)]
        own = np.concatenate([layers[i].scores[rows] for i, rows in entries])
        cut = np.quantile(own, 1 - m3dkeep) if len(own) and m3dkeep < 1 else -np.inf
        for i, rows in entries:
            rows = rows[layers[i].scores[rows] >= cut]
            for h in (1, 2):
                half_rows = rows[halves[rows] == h]
                groups.append(half_rows)
                weights.append(layers[i].weights[half_rows])
                stacks.append(layer_stacks[i])
                group_model.append((m_index, h))
    advance = progress(label, int(sum(len(g) for g in groups))) if progress else None
    keys = list(dict.fromkeys(group_model))  # (model, half): the groups of one fill one accumulator
    parts = accumulate_in_shards(executor or InProcess(), stack, groups, 256, device, advance, weights, stacks,
                                 [keys.index(key) for key in group_model])
    accumulators, effective_of = dict(zip(keys, parts)), np.zeros(k)
    for key, w in zip(group_model, weights):
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
        new_maps.append(flatten_solvent(torch.from_numpy(result.full_map), masks.of(m_index)).numpy())
        acc1 += acc2  # both half-sets: what the full map was made from
        totals.append(acc1)
        inverse_ssnr.append(result.inverse_ssnr)
        fsc_curves.append(result.fsc)
        resolutions.append(resolution_at_threshold(result.fsc, apix, 0.143))
    entries = [(m_index, s, g, w) for (m_index, _), s, g, w in zip(group_model, stacks, groups, weights)]
    last = LastReconstruction(totals, inverse_ssnr, new_maps, entries)
    return Reconstruction(new_maps, fsc_curves, resolutions, last, effective_of.tolist())
