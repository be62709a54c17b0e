"""The search stage: every particle against every model, its best pose in each.

In: the search stack, the iteration's :class:`~multirefine.refine.plan.SearchPlan`, the
references (polar, and the maps' transforms for the local passes) and the last maps'
accumulators for the model choice. Out: :class:`Searched`, per particle its best score, pose
and shift in every model, the score that picks its model, and (``--sep``) its best poses
overall. :func:`assignment_table` turns a chosen pose per particle into RELION's columns.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from multirefine.geometry.euler import matrix_to_euler
from multirefine.io.columns import SEARCH_SCORE
from multirefine.parallel import Executor, InProcess
from multirefine.refine.batch import origins_px_for_rows, rotations_for_rows, sweep
from multirefine.refine.choice import FoldChooser, FoldMaps, LastReconstruction, fold_shards
from multirefine.refine.focus import shared_pose
from multirefine.refine.options import SweepSettings
from multirefine.refine.plan import SearchPlan
from multirefine.refine.polar import PolarReferences
from multirefine.refine.scoring import scale_terms

__all__ = ["Priors", "Searched", "assignment_table", "search_particles", "search_rows"]


@dataclass
class Priors:
    """Each particle's pose in every model where local searches start (``n`` particles, ``K``
    models): the input's poses (a consensus refinement's), then the last iteration's."""

    rotations: np.ndarray  # (n, K, 3, 3)
    shifts_px: np.ndarray  # (n, K, 2)

    @classmethod
    def of_table(cls, metadata: pd.DataFrame, pixel_size: float, k: int) -> Priors:
        """The table's poses (``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``) in all ``k`` models."""
        rotations = rotations_for_rows(metadata).double().numpy()
        shifts = origins_px_for_rows(metadata, pixel_size).double().numpy()
        return cls(np.repeat(rotations[:, None], k, 1), np.repeat(shifts[:, None], k, 1))

    @classmethod
    def of_layers(cls, layers: list[tuple[np.ndarray, ...]], k: int) -> Priors | None:
        """The poses of a saved state's layers (model, rotations, shifts, ...), one layer per
        model (hard or soft assignment, not --sep); None where they are not that."""
        if len(layers) != k or any(not np.all(layer[0] == m) for m, layer in enumerate(layers)):
            return None
        return cls(np.stack([layer[1] for layer in layers], 1), np.stack([layer[2] for layer in layers], 1))

    def at(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.rotations[rows], dtype=torch.float32, device=device),
                torch.as_tensor(self.shifts_px[rows], dtype=torch.float32, device=device))


def assignment_table(
    metadata: pd.DataFrame, model: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray,
    score: np.ndarray, posterior: np.ndarray, halves: np.ndarray, pixel_size: float,
) -> pd.DataFrame:
    """The input table with this iteration's assignment in RELION's columns."""
    rot, tilt, psi = matrix_to_euler(rotations)
    table = metadata.drop(columns=["rlnLogLikeliContribution"], errors="ignore")  # another program's, stale here
    table["rlnClassNumber"] = model + 1
    table["rlnAngleRot"] = rot
    table["rlnAngleTilt"] = tilt
    table["rlnAnglePsi"] = psi
    table["rlnOriginXAngst"] = shifts_px[:, 0] * pixel_size
    table["rlnOriginYAngst"] = shifts_px[:, 1] * pixel_size
    table["rlnMaxValueProbDistribution"] = posterior
    table[SEARCH_SCORE] = score
    table["rlnRandomSubset"] = halves
    return table


@dataclass
class Searched:
    """Every particle's search result (``n`` particles, ``K`` models, ``T`` best poses)."""

    model_scores: np.ndarray  # (n, K): the best score in each model
    model_rotations: np.ndarray  # (n, K, 3, 3): the best pose in each model
    model_shifts: np.ndarray  # (n, K, 2) px
    choice_scores: np.ndarray  # (n, K): the score that picks the model (without the particle's fold)
    image_power: np.ndarray  # (n,): the particle's power within the band
    top_model: np.ndarray | None = None  # (n, T): --sep, the best poses over all models; --hypotheses, distinct ones
    top_rotations: np.ndarray | None = None
    top_shifts: np.ndarray | None = None
    top_scores: np.ndarray | None = None
    # (n,) each: cross and refpower (multirefine.refine.scoring.scale_terms) at the particle's
    # best pose, whose ratio is the least-squares intensity of the reference in it (fit_scale)
    fit_cross: np.ndarray | None = None
    fit_power: np.ndarray | None = None

    @property
    def fit_scale(self) -> np.ndarray:
        """``(n,)``: about 1 for a particle (its contrast), about 0 for an empty box (``--junk``)."""
        return self.fit_cross / np.maximum(self.fit_power, 1e-30)

    def of_models(self, columns: list[int]) -> Searched:
        """The per-model results of the models ``columns`` (in that order; one may repeat)."""
        return replace(self, model_scores=self.model_scores[:, columns], model_rotations=self.model_rotations[:, columns],
                       model_shifts=self.model_shifts[:, columns], choice_scores=self.choice_scores[:, columns])

    @classmethod
    def joined(cls, parts: list[Searched]) -> Searched:
        """The results of consecutive shards of rows as one."""
        if len(parts) == 1:
            return parts[0]
        return cls(**{f.name: None if getattr(parts[0], f.name) is None
                      else np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


def search_particles(search_stack, plan: SearchPlan, references: PolarReferences, volumes_ft: torch.Tensor,
                     settings: SweepSettings, last: LastReconstruction | None, fold_maps: FoldMaps, advance=None,
                     executor: Executor | None = None, priors: Priors | None = None) -> Searched:
    """Search every particle against every model, and score its model choice against the
    last maps without its fold (:mod:`multirefine.refine.choice`; in the first iteration,
    with no last maps, the search's own scores pick the model).

    The rows go to ``executor`` in shards (:func:`multirefine.refine.choice.fold_shards`),
    each searched by :func:`search_rows`. With ``priors`` (every particle's pose in every
    model) the search is local around them (:meth:`SearchPlan.search`).
    """
    executor = executor or InProcess()
    shards = fold_shards(len(search_stack), executor.parts, settings.batch_size)
    parts = executor.map(search_rows, shards, search_stack, plan, references, volumes_ft, settings, last, fold_maps,
                         priors, advance=advance, sizes=[len(rows) for rows in shards])
    return Searched.joined(parts)


def search_rows(rows: np.ndarray, search_stack, plan: SearchPlan, references: PolarReferences,
                volumes_ft: torch.Tensor, settings: SweepSettings, last: LastReconstruction | None,
                fold_maps: FoldMaps, priors: Priors | None = None, advance=None) -> Searched:
    """:func:`search_particles` for the stack rows ``rows``, in batches of ``settings.batch_size``."""
    n, k, device = len(rows), len(volumes_ft), volumes_ft.device
    sep, hypotheses = settings.sep, settings.hypotheses
    top = sep * k  # --sep: the best poses overall, of which those in the chosen model are kept
    if hypotheses:  # --hypotheses: every track of the search, k + hypotheses - 1
        top = k + hypotheses - 1
    found = Searched(np.zeros((n, k)), np.zeros((n, k, 3, 3)), np.zeros((n, k, 2)), np.zeros((n, k)), np.zeros(n),
                     fit_cross=np.zeros(n), fit_power=np.zeros(n))
    if sep > 1 or hypotheses:
        found.top_model = np.zeros((n, top), dtype=np.int64)
        found.top_rotations, found.top_shifts, found.top_scores = np.zeros((n, top, 3, 3)), np.zeros((n, top, 2)), np.zeros((n, top))
    if last is None:
        found.choice_scores = found.model_scores
    band = plan.band
    chooser = None if last is None else FoldChooser(last, plan, fold_maps, len(search_stack), settings.score)
    for at, batch in sweep(search_stack, rows, settings.batch_size, device, advance):
        near = None if priors is None else priors.at(rows[at], device)
        result = plan.search(batch.images_ft, batch.ctf, references, volumes_ft, settings.score, top, near,
                             settings.sigma_ang_deg, hypotheses)
        if found.top_model is not None:
            found.top_model[at] = result.model.cpu().numpy()
            found.top_rotations[at] = result.rotations.cpu().double().numpy()
            found.top_shifts[at] = result.shift_px.cpu().double().numpy()
            found.top_scores[at] = result.score.cpu().numpy()
        found.model_scores[at] = result.model_scores.cpu().numpy()
        found.model_rotations[at] = result.model_rotations.cpu().double().numpy()
        found.model_shifts[at] = result.model_shift_px.cpu().double().numpy()
        if chooser is not None:
            poses = found.model_rotations[at], found.model_shifts[at]
            if fold_maps.focus is not None:  # one pose per particle for the focused choice
                poses = shared_pose(*poses, found.model_scores[at])
            found.choice_scores[at] = chooser.scores(batch, rows[at], *poses)
        found.image_power[at] = band.power(batch.images_ft).cpu().numpy()
        cross, power = scale_terms(batch.images_ft, batch.ctf, volumes_ft, band, result.model[:, 0],
                                   result.rotations[:, 0], result.shift_px[:, 0])
        found.fit_cross[at], found.fit_power[at] = cross.cpu().numpy(), power.cpu().numpy()
    return found
