"""The model choice: each particle is judged in every model against maps made without it.

A particle took part in its model's last reconstruction, so that map holds its own noise
and its score there is biased up: a random split of one state's particles then stays as it
was (measured: 600 adk particles of one state, 2 models from a random split, 18 % and 4 %
changed model in iterations 2-3 against the full maps). Each particle is therefore scored
again, at its pose in every model, against the models' last maps rebuilt without its fold
(:data:`CHOICE_FOLDS` contiguous folds of the stack's rows; :func:`leave_out_volumes`,
exact since a reconstruction is linear in its accumulators), and that score picks its model.
Its poses still come from the full maps. (Against the other half-set's maps the choice also
stopped sticking, but those hold half the particles: 76.2 % right on the three-state
benchmark after 12 iterations, against 98.7 % now and 94.6 % with the full maps;
BENCHMARKS.md.)

In: the search's poses per model, the last maps' accumulators (:class:`LastReconstruction`).
Out: scores ``(n, K)``, and from them log-likelihoods and posteriors (:func:`posteriors`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.fourier.masks import flatten_solvent
from multirefine.fourier.projection import pad_volume_ft, prepare_volume_ft
from multirefine.fourier.reconstruction import FourierAccumulator
from multirefine.parallel import Executor, InProcess
from multirefine.refine.batch import sweep
from multirefine.refine.focus import (
    MARGINAL_RADIUS,
    LocalPoses,
    focused_scores,
    local_poses,
    outside_weights,
    shared_pose,
)
from multirefine.refine.options import SweepSettings
from multirefine.refine.plan import SearchPlan
from multirefine.refine.reconstruct import insert_rows
from multirefine.refine.scoring import Band
from multirefine.refine.search import search_local
from multirefine.refine.solvent import ModelMasks
from multirefine.refine.splitmerge import log_likelihoods

__all__ = [
    "CHOICE_FOLDS",
    "FoldChooser",
    "FoldMaps",
    "LastReconstruction",
    "choice_rows",
    "choice_scores",
    "cross_validated",
    "fold_edges",
    "fold_shards",
    "leave_out_volumes",
    "normalised",
    "posteriors",
]

# Folds of the model choice: each particle's model is chosen against maps rebuilt without its
# fold, so each such map keeps 11/12 of its particles. More folds cost one reconstruction per
# fold and model per iteration.
CHOICE_FOLDS = 12


@dataclass
class LastReconstruction:
    """What went into each model's last map, so that a fold of particles can be taken out."""

    totals: list[FourierAccumulator | None]  # per model, both half-sets; None: the map was kept as it was
    inverse_ssnr: list[np.ndarray | None]  # the full map's Wiener filter, per model
    maps: list[np.ndarray]  # the maps as made (masked, in particle units)
    entries: list[tuple[int, object, np.ndarray, np.ndarray]]  # (model, stack with the poses, rows, weights)


def fold_edges(n: int, folds: int) -> np.ndarray:
    """Row boundaries of ``folds`` contiguous folds of ``n`` particles."""
    return np.linspace(0, n, min(folds, n) + 1).round().astype(np.int64)


def leave_out_volumes(
    last: LastReconstruction, start: int, stop: int, operators: list[torch.Tensor], masks: ModelMasks,
    band_radius: float, scales: np.ndarray, device, focus: ModelMasks | None = None,
) -> torch.Tensor:
    """The models' last maps rebuilt without stack rows ``[start, stop)`` (the same Wiener
    filter, mask and scale), ready for projection ``(K, P, P, P//2+1)``, within the search
    band: each is rebuilt on the smallest box that holds the band (the Fourier samples are
    the same, the pixel coarser) and its transform padded back with zeros. With no row left
    out and the whole box kept, each is the model's map exactly: reconstructions are linear
    in the accumulators. With a ``focus`` mask (``--focusmask``), each model's part inside it
    plus the models' common outside (:mod:`multirefine.refine.focus`)."""
    out, outside = [], None
    shares = None if focus is None else outside_weights(last.entries, len(last.totals))
    removed = None  # one buffer for the fold's contribution, reused by every model
    for m_index, total in enumerate(last.totals):
        box, pad = len(last.maps[m_index]), 2 if total is None else total.pad
        volume, removed = _rebuilt(last, m_index, total, start, stop, operators, masks, band_radius, device, removed)
        scale = float(scales[m_index])
        if focus is None:
            out.append(pad_volume_ft(prepare_volume_ft(volume, pad).to(device) * scale, pad * box))
            continue
        region = focus.of(0, volume.shape[-1], volume.device)
        out.append(pad_volume_ft(prepare_volume_ft(volume * region, pad).to(device) * scale, pad * box))
        part = pad_volume_ft(prepare_volume_ft(volume * (1 - region), pad).to(device) * (scale * shares[m_index]),
                             pad * box)
        outside = part if outside is None else outside + part
    volumes = torch.stack(out)
    return volumes if outside is None else volumes.add_(outside)


def _rebuilt(last: LastReconstruction, m_index: int, total, start: int, stop: int, operators: list[torch.Tensor],
             masks: ModelMasks, band_radius: float, device, removed):
    """Model ``m_index``'s map without rows ``[start, stop)``, real space, on the smallest box
    that holds the band (the map as made where it was kept); and the fold buffer."""
    if total is None:
        return torch.from_numpy(last.maps[m_index]).to(device), removed
    box = len(last.maps[m_index])
    small = min(box, 2 * math.ceil(band_radius + 2))
    rest = total.cropped(small)
    pieces = [
        (source, rows[inside], weights[inside])
        for model, source, rows, weights in last.entries
        if model == m_index and (inside := (rows >= start) & (rows < stop)).any()
    ]
    if pieces:
        if removed is None:
            removed = FourierAccumulator.zeros(box, total.pad, device=total.data.device)
        else:
            removed.data.zero_()
            removed.weight.zero_()
        for source, rows, weights in pieces:
            # Pixels beyond small / 2 + 1 reach no voxel of the small box's sphere.
            insert_rows(removed, source, rows, weights, 256, device, max_radius=small / 2 + 1)
        rest = rest - removed.cropped(small)
    inverse_ssnr = last.inverse_ssnr[m_index][: small // 2 + 1]
    mask = masks.of(m_index, small, device=rest.data.device)
    return flatten_solvent(rest.reconstruct(operators[m_index], inverse_ssnr), mask), removed


def choice_scores(images_ft: torch.Tensor, ctf: torch.Tensor | None, volumes_ft: torch.Tensor, rotations: np.ndarray,
                   shifts: np.ndarray, band: Band, score: str, focused: bool = False,
                   local: LocalPoses | None = None) -> np.ndarray:
    """Each particle's score for every model at its pose there ``(n, K)`` against ``volumes_ft``;
    ``focused``: ``volumes_ft`` holds the K insides of a focus mask each with the common outside
    (:func:`leave_out_volumes`), the score is the focus region's, summed over the ``local``
    poses around the particle's (:mod:`multirefine.refine.focus`)."""
    if focused:
        return focused_scores(images_ft, ctf, volumes_ft, rotations, shifts, band, local)
    n, k = rotations.shape[:2]
    result = search_local(
        images_ft, ctf, volumes_ft, band,
        torch.as_tensor(rotations, dtype=torch.float32), torch.as_tensor(shifts, dtype=torch.float32),
        torch.arange(k).expand(n, -1), torch.eye(3)[None], torch.zeros(1, 2), score=score,
    )
    return result.model_scores.cpu().numpy()


class FoldChooser:
    """Scores particles at given poses in every model against the models' last maps rebuilt
    without each particle's fold (:data:`CHOICE_FOLDS` folds of the stack's rows). Rows come
    in order, so each fold's maps are made once."""

    def __init__(self, last: LastReconstruction, plan: SearchPlan, fold_maps: FoldMaps, n: int,
                 score: str) -> None:
        self.last, self.plan, self.fold_maps, self.score = last, plan, fold_maps, score
        self.edges = fold_edges(n, CHOICE_FOLDS)
        self.fold_of = np.searchsorted(self.edges, np.arange(n), side="right") - 1
        self.fold, self.volumes_ft = -1, None
        self.local = None if fold_maps.focus is None else local_poses(MARGINAL_RADIUS * plan.fine_step_deg,
                                                                        plan.shift_step_px / 2)

    def scores(self, batch, rows: np.ndarray, rotations: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """``(len(rows), K)`` scores of a loaded batch of stack rows ``rows`` at poses
        ``rotations`` ``(len(rows), K, 3, 3)`` and ``shifts`` ``(len(rows), K, 2)``."""
        out = np.zeros((len(rows), len(self.last.maps)))
        for fold in np.unique(self.fold_of[rows]):
            if fold != self.fold:
                self.volumes_ft = leave_out_volumes(
                    self.last, self.edges[fold], self.edges[fold + 1], self.fold_maps.operators,
                    self.fold_maps.masks, self.plan.band_radius_px, self.fold_maps.scales,
                    batch.images_ft.device, self.fold_maps.focus,
                )
                self.fold = fold
            sel = np.nonzero(self.fold_of[rows] == fold)[0]
            index = torch.as_tensor(sel, device=batch.images_ft.device)
            out[sel] = choice_scores(
                batch.images_ft[index], None if batch.ctf is None else batch.ctf[index], self.volumes_ft,
                rotations[sel], shifts[sel], self.plan.band, self.score, self.fold_maps.focus is not None, self.local,
            )
        return out


@dataclass
class FoldMaps:
    """How the models' maps are rebuilt without a fold (:func:`leave_out_volumes`)."""

    operators: list[torch.Tensor]
    masks: ModelMasks
    scales: np.ndarray  # the references' intensity scale per model
    focus: ModelMasks | None = None  # --focusmask: the model choice on its region (multirefine.refine.focus)


def fold_shards(n: int, parts: int, batch_size: int) -> list[np.ndarray]:
    """Stack rows cut into about ``parts`` shards along the model choice's folds; one shard
    when ``parts`` is 1. Each shard rebuilds its fold's maps without the fold (inserting the
    fold's particles again, about a sixtieth of searching them at 5 Å), so a fold is cut
    into pieces of a batch at least: the rebuild then costs at most a fold's insertions per
    batch searched."""
    if parts <= 1:
        return [np.arange(n)]
    edges = fold_edges(n, CHOICE_FOLDS)
    folds = len(edges) - 1
    per_fold = max(1, min(math.ceil(parts / folds), (n // folds) // max(1, batch_size)))
    return [piece for a, b in itertools.pairwise(edges) for piece in np.array_split(np.arange(a, b), per_fold)
            if len(piece)]


def posteriors(model_scores: np.ndarray, image_power: np.ndarray, n_pixels: float, score: str) -> np.ndarray:
    """Posterior of each model per particle ``(n, K)`` from its best score for each model
    (:func:`multirefine.refine.splitmerge.log_likelihoods`)."""
    return normalised(log_likelihoods(model_scores, image_power, n_pixels, score))


def normalised(log_likelihood: np.ndarray) -> np.ndarray:
    """Per row of ``(n, K)`` log-likelihoods, the probabilities they give (equal priors)."""
    z = log_likelihood - log_likelihood.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def cross_validated(search_stack, plan: SearchPlan, last: LastReconstruction, found,
                    fold_maps: FoldMaps, settings: SweepSettings, executor: Executor | None = None,
                    advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Each particle's log-likelihood in every model ``(n, K)`` at its pose there, against the
    maps of ``last`` rebuilt without its fold (``executor``: a shard of rows each; ``advance``:
    a progress bar's, told each batch's size)."""
    executor = executor or InProcess()
    shards = fold_shards(len(search_stack), executor.parts, settings.batch_size)
    rotations, shifts = found.model_rotations, found.model_shifts
    if fold_maps.focus is not None:  # one pose per particle for the focused choice
        rotations, shifts = shared_pose(rotations, shifts, found.model_scores)
    parts = executor.map(choice_rows, shards, search_stack, plan, last, rotations, shifts, fold_maps, settings,
                         advance=advance, sizes=[len(s) for s in shards])
    return log_likelihoods(np.concatenate(parts), found.image_power, float(plan.band.weight.sum()), settings.score)


def choice_rows(rows: np.ndarray, search_stack, plan: SearchPlan, last: LastReconstruction, rotations: np.ndarray,
                shifts: np.ndarray, fold_maps: FoldMaps, settings: SweepSettings, advance=None) -> np.ndarray:
    """The scores of stack rows ``rows`` ``(len(rows), K)`` at the poses ``rotations[rows]``,
    ``shifts[rows]``, against the maps of ``last`` rebuilt without each row's fold."""
    chooser = FoldChooser(last, plan, fold_maps, len(search_stack), settings.score)
    scores = np.zeros((len(rows), rotations.shape[1]))
    for at, batch in sweep(search_stack, rows, settings.batch_size, torch.device(settings.device), advance):
        scores[at] = chooser.scores(batch, rows[at], rotations[rows[at]], shifts[rows[at]])
    return scores
