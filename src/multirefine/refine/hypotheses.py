"""Distinct pose hypotheses (``--hypotheses``): which of the global pass's candidates the local
passes refine as tracks of their own, and which tracks end as distinct hypotheses.

A coarse grid's best poses are mostly the best one's neighbours; a particle whose pose is
uncertain (a small protein at 20-30 Å, a nearly symmetric shape) has its other hypotheses
further away. :func:`spread_candidates` takes the global pass's candidates that lie at least
one global step from the best and from each other; after the local passes,
:func:`distinct_tracks` drops a track that ended within that distance of a better one of its
model (the same local optimum reached twice). What is left is what
:func:`multirefine.refine.search.refine_assignments` returns, and what
:func:`multirefine.refine.layers.hypothesis_layers` weighs by posterior.
"""

from __future__ import annotations

import math

import torch

from multirefine.refine.scoring import SearchResult

__all__ = ["SPREAD", "distinct_tracks", "spread_candidates"]

SPREAD = 4  # --hypotheses H: the global pass's best SPREAD x H poses, of which H spread apart are refined


def spread_candidates(result: SearchResult, hypotheses: int, separation_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The global pass's candidates to refine as tracks besides each model's best: in score
    order, each at least ``separation_deg`` from the best and from those taken before it in
    its model (the best poses of a coarse grid are mostly the best one's neighbours), up to
    ``hypotheses - 1``. Returns ``(n, hypotheses - 1)`` indices into ``result``'s entries and
    where none was left (``skip``; always where ``result`` holds one entry, as from priors)."""
    n, top = result.model.shape
    device = result.model.device
    near = _near(result.model, result.rotations, separation_deg)
    taken = torch.zeros((n, top), dtype=torch.bool, device=device)
    taken[:, 0] = True
    for j in range(1, top):
        free = ~(near[:, j] & taken).any(1) & (taken.sum(1) < hypotheses)
        taken[:, j] = free
    count = taken[:, 1:].sum(1)
    # The taken entries first (stable), then any others as placeholders, skipped.
    order = torch.argsort((~taken[:, 1:]).to(torch.int8), dim=1, stable=True)[:, : hypotheses - 1] + 1
    if order.shape[1] < hypotheses - 1:  # fewer candidates than hypotheses (local searches): the rest skipped
        order = torch.cat([order, order.new_zeros((n, hypotheses - 1 - order.shape[1]))], 1)
    skip = torch.arange(hypotheses - 1, device=device)[None] >= count[:, None]
    return order, skip


def distinct_tracks(result: SearchResult, separation_deg: float) -> SearchResult:
    """One track per hypothesis, best first: a track that ended within ``separation_deg`` of a
    better one of the same model (the same local optimum reached from two global
    candidates) scores ``-inf``, as do repeated ones already."""
    score, order = torch.sort(result.score, dim=1, descending=True)
    rows = torch.arange(score.shape[0], device=score.device)[:, None]
    near = _near(result.model[rows, order], result.rotations[rows, order], separation_deg)
    better = torch.ones(near.shape[1:], dtype=torch.bool, device=near.device).tril(-1)  # j < i
    shadowed = (near & better & torch.isfinite(score)[:, None, :]).any(-1)
    score, again = torch.sort(torch.where(shadowed, -math.inf, score), dim=1, descending=True, stable=True)
    order = order[rows, again]
    return SearchResult(result.model[rows, order], result.pose_index[rows, order], result.rotations[rows, order],
                        result.shift_px[rows, order], score, result.model_scores, result.model_rotations,
                        result.model_shift_px)


def _near(models: torch.Tensor, rotations: torch.Tensor, separation_deg: float) -> torch.Tensor:
    """``(n, T, T)``: entries ``i`` and ``j`` of a particle are of one model and their poses
    (``rotations`` ``(n, T, 3, 3)``) less than ``separation_deg`` apart."""
    cos = ((torch.einsum("nikl,njkl->nij", rotations, rotations) - 1) / 2).clamp(-1, 1)
    return (torch.acos(cos) < math.radians(separation_deg)) & (models[:, :, None] == models[:, None, :])
