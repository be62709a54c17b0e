"""The search: score particles against projections of K models, keep the best poses.

A pure function of one batch of particles and the current references (tensors on one
device), so the same code serves a CPU core, a GPU and a Dask worker.

The band of pixels searched and the score are those of :mod:`multirefine.refine.scoring`.

**Shifts.** ``shift_px = (dx, dy)`` is the translation to APPLY to the image given to the
search (:func:`multirefine.fourier.shift.shift_images_ft` moves content by ``+shift``) so
that the particle is centred, i.e. RELION's origin: if the images passed were raw (not
pre-centred), ``rlnOriginXAngst = shift_px[..., 0] * pixel_size`` and
``rlnOriginYAngst = shift_px[..., 1] * pixel_size``. If they were pre-centred by an origin
``o``, the new origin is ``o + shift_px``.

**Poses.** Matrices ``A`` as in :mod:`multirefine.geometry.euler` (the slice is rows 0, 1 of
``A``). The local search tries ``Delta @ A`` for the small rotations ``Delta`` of
:func:`multirefine.geometry.grids.local_rotations` (a rotation in the particle frame, as
:func:`multirefine.geometry.grids.local_orientation_grid`).

Coarse to fine: a global pass scores a batch against every model over a global
orientation grid at a coarse shift grid; :func:`search_local` refines candidate poses per
particle with projections made on the fly; :func:`refine_assignments` chains the two.
The program's global pass is the polar one (:mod:`multirefine.refine.polar`: every
in-plane angle from one FFT). :func:`make_references` and :func:`search_global` are the
same pass on Cartesian references, one slice per pose: the direct form the polar pass is
tested against. Work goes in chunks within a ``max_elements`` budget (entries of the
largest arrays: scores, shifted images), keeping a running top-``k``, so memory stays
bounded whatever the grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.refine.hypotheses import SPREAD, distinct_tracks, spread_candidates
from multirefine.refine.polar import PolarReferences, search_global_polar
from multirefine.refine.scoring import (
    DEFAULT_MAX_ELEMENTS,
    Band,
    PosePrior,
    Score,
    SearchResult,
    as_real_rows,
    band_phase_ramp,
    band_slices,
    half_volumes,
    log_likelihood_unit,
    make_band,
    merge_top,
    particle_terms,
    score_matrix,
)

__all__ = [
    "References",
    "make_references",
    "refine_assignments",
    "search_global",
    "search_local",
]


@dataclass
class References:
    """Band-limited projections of K models over their global pose sets, on one device.

    Models may have pose sets of different sizes (one symmetry each): model ``k`` uses
    entries ``r < counts[k]``; the rest of the common ``R`` is zero padding, never scored.
    """

    band: Band
    slices: torch.Tensor  # (K, R, M) complex64: projections at the band pixels
    power: torch.Tensor  # (K, R, M) float32: |slices|^2
    rotations: torch.Tensor  # (K, R, 3, 3) float32 pose matrices (identity in the padding)
    counts: list[int]  # poses per model

    @property
    def n_models(self) -> int:
        return self.slices.shape[0]

    def to(self, device: torch.device | str) -> References:
        return References(
            self.band.to(device),
            self.slices.to(device),
            self.power.to(device),
            self.rotations.to(device),
            list(self.counts),
        )


def make_references(
    volumes: torch.Tensor,
    rotations: torch.Tensor | Sequence[torch.Tensor],
    band_radius_px: float,
    *,
    pad: int = 2,
    low_radius_px: float = 0.5,
    chunk: int = 4096,
) -> References:
    """Project K models over their pose sets at the band pixels.

    ``volumes``: maps ``(K, D, D, D)`` (real) or half volumes ``(K, P, P, P//2+1)`` from
    :func:`multirefine.fourier.projection.prepare_volume_ft` with this ``pad``;
    ``rotations``: one pose set ``(R, 3, 3)`` for all models, or one per model.
    The references live on the volumes' device.
    """
    half, box = half_volumes(volumes, pad)
    device = half.device
    n_models = half.shape[0]
    if isinstance(rotations, torch.Tensor) and rotations.dim() == 3:
        pose_sets = [rotations] * n_models
    else:
        pose_sets = [torch.as_tensor(r) for r in rotations]
    if len(pose_sets) != n_models:
        raise InputError(f"{len(pose_sets)} pose sets for {n_models} models")
    band = make_band(box, band_radius_px, low_radius_px, device=device)
    counts = [int(r.shape[0]) for r in pose_sets]
    size = max(counts)
    slices = torch.zeros((n_models, size, band.size), dtype=torch.complex64, device=device)
    rot_all = torch.eye(3, device=device).repeat(n_models, size, 1, 1)
    for k, rot in enumerate(pose_sets):
        rot = rot.to(device=device, dtype=torch.float32)
        rot_all[k, : len(rot)] = rot
        for start in range(0, len(rot), chunk):
            stop = min(start + chunk, len(rot))
            slices[k, start:stop] = band_slices(half[k], rot[start:stop], band, pad)
    return References(band, slices, slices.real**2 + slices.imag**2, rot_all, counts)


def search_global(
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    references: References,
    shifts_px: torch.Tensor,
    *,
    score: Score = "cc",
    top: int = 1,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> SearchResult:
    """Score every particle against every reference of every model at every shift.

    ``images_ft`` ``(n, D, D//2+1)`` complex, ``ctf`` ``(n, D, D//2+1)`` or None,
    ``shifts_px`` ``(S, 2)`` candidate shifts (e.g. :func:`shift_grid`). The ``top``
    entries are the best (model, pose) pairs, each at its best shift. References are
    scored in chunks of ``max(1, max_elements // (n * S))``. Runs on the references'
    device.

    Per chunk: one matrix product (particle x shift rows by reference columns), the
    maximum over shifts (the normalisation does not depend on the shift), the score and a
    running top-k; the best shifts of the winners are recovered at the end.
    """
    band = references.band
    device = references.slices.device
    images_ft = images_ft.to(device)
    ctf = None if ctf is None else ctf.to(device)
    shifts = torch.as_tensor(shifts_px, dtype=torch.float32).to(device).reshape(-1, 2)
    x, wc, wc2, x_power = particle_terms(images_ft, ctf, band)
    n, n_shifts = x.shape[0], shifts.shape[0]
    n_models, n_poses = references.slices.shape[:2]
    # Particle side: w c X_s, rows (shift, particle) shift-major, real (re, im) columns.
    ramp = band_phase_ramp(shifts, band)
    shifted = as_real_rows((x * wc)[None] * ramp[:, None, :])  # (S, n, 2M)
    rows = shifted.reshape(n_shifts * n, -1)
    chunk = max(1, max_elements // max(1, n * n_shifts))
    best_score = torch.full((n, top), -math.inf, device=device)
    best_code = torch.zeros((n, top), dtype=torch.long, device=device)  # model * R + pose
    model_score = torch.full((n, n_models), -math.inf, device=device)
    model_code = torch.zeros((n, n_models), dtype=torch.long, device=device)
    for k in range(n_models):
        for start in range(0, references.counts[k], chunk):
            stop = min(start + chunk, references.counts[k])
            refs = as_real_rows(references.slices[k, start:stop])  # (Rc, 2M)
            cross = (rows @ refs.T).reshape(n_shifts, n, -1).amax(0)  # (n, Rc)
            refpower = wc2 @ references.power[k, start:stop].T
            s = score_matrix(cross[:, None], refpower, x_power, score)[:, 0]  # (n, Rc)
            code = (k * n_poses + torch.arange(start, stop, device=device)).expand(n, -1)
            best_score, best_code = merge_top(best_score, best_code, s, code, top)
            m_s, m_i = s.max(1)
            better = m_s > model_score[:, k]
            model_score[:, k] = torch.where(better, m_s, model_score[:, k])
            model_code[:, k] = torch.where(better, k * n_poses + start + m_i, model_code[:, k])

    # Best shift of each winning (particle, reference): the cross term at every shift.
    flat_slices = references.slices.reshape(n_models * n_poses, -1)

    def best_shift(code: torch.Tensor) -> torch.Tensor:
        refs = as_real_rows(flat_slices[code])  # (n, T, 2M)
        cross = torch.einsum("snm,ntm->nts", shifted, refs)
        return shifts[cross.argmax(-1)]

    flat_rot = references.rotations.reshape(-1, 3, 3)
    return SearchResult(
        best_code // n_poses,
        best_code % n_poses,
        flat_rot[best_code],
        best_shift(best_code),
        best_score,
        model_score,
        flat_rot[model_code],
        best_shift(model_code),
    )


def search_local(
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    volumes_ft: torch.Tensor,
    band: Band,
    centers: torch.Tensor,
    center_shifts_px: torch.Tensor,
    center_models: torch.Tensor,
    local_rotations: torch.Tensor | np.ndarray,
    shift_offsets_px: torch.Tensor,
    *,
    pad: int = 2,
    score: Score = "cc",
    top: int = 1,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    prior: PosePrior | None = None,
    per_candidate: bool = False,
    skip: torch.Tensor | None = None,
) -> SearchResult:
    """Refine C candidate poses per particle: poses ``Delta @ A``, shifts ``s0 + offset``.

    ``volumes_ft`` ``(K, P, P, P//2+1)`` half volumes; ``centers`` ``(n, C, 3, 3)`` (or
    ``(n, 3, 3)``), ``center_shifts_px`` ``(n, C, 2)``, ``center_models`` ``(n, C)`` int
    (the model each candidate belongs to); ``local_rotations`` ``(L, 3, 3)`` (from
    :func:`multirefine.geometry.grids.local_rotations`), ``shift_offsets_px`` ``(S, 2)``.
    Projections of the ``n x C x L`` poses are made on the fly, particles in chunks within
    ``max_elements``. Runs on the volumes' device. With ``prior`` (score "ls") the scores
    include its log prior, in the score's units. ``per_candidate``: the ``(n, C)`` entries are
    each candidate's best local pose in the candidates' order, a track each (``top`` ignored;
    a repeated candidate, or one of ``skip`` ``(n, C)`` bool, at ``-inf``)."""
    if prior is not None and score != "ls":
        raise InputError(f"a pose prior needs the least-squares score, not {score!r}")
    device, n_models = volumes_ft.device, volumes_ft.shape[0]
    band = band.to(device)
    centers, center_shifts, center_models = _as_candidates(centers, center_shifts_px, center_models, device)
    delta = torch.as_tensor(local_rotations, dtype=torch.float32).to(device)
    offsets = torch.as_tensor(shift_offsets_px, dtype=torch.float32).to(device).reshape(-1, 2)
    ctf = None if ctf is None else ctf.to(device)
    x, wc, wc2, x_power = particle_terms(images_ft.to(device), ctf, band)
    n, n_cand = centers.shape[:2]
    n_local, n_shifts, m = delta.shape[0], offsets.shape[0], band.size
    per_particle = n_cand * max(n_local * m, n_shifts * m, n_shifts * n_local)
    chunk = max(1, max_elements // per_particle)
    out: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        nc = sl.stop - sl.start
        rows_idx = torch.arange(nc, device=device)[:, None]
        poses = delta[None, None] @ centers[sl, :, None]  # (nc, C, L, 3, 3)
        models = center_models[sl]
        # A candidate repeated (same model, pose, shift) is scored once: its slices are not
        # made (they stay zero) and its scores are masked below.
        repeated = _repeated(models, centers[sl], center_shifts[sl], None if skip is None else skip[sl].to(device))
        refs = _candidate_slices(volumes_ft, poses, models, repeated, band, pad)  # (nc, C, L, M)
        shifts = center_shifts[sl, :, None, :] + offsets  # (nc, C, S, 2)
        rows = as_real_rows((x[sl] * wc[sl])[:, None, None, :] * band_phase_ramp(shifts, band))
        cross = rows @ as_real_rows(refs).transpose(-1, -2)  # (nc, C, S, L)
        if prior is not None:  # ls = cross - refpower / 2: the shift's log prior goes on cross
            unit = log_likelihood_unit(x_power[sl], band)[:, None, None]
            log_rotation, log_shift = prior.log_prior(sl, models, poses, shifts)
            cross = cross + (unit * log_shift)[..., None]
        cross, shift_i = cross.max(2)  # best shift per pose: (nc, C, L)
        refpower = ((refs.real**2 + refs.imag**2) @ wc2[sl, None, :, None]).squeeze(-1)
        s = score_matrix(cross.reshape(nc, 1, -1), refpower.reshape(nc, -1), x_power[sl], score).reshape(
            nc, n_cand, n_local)
        if prior is not None:
            s = s + unit * log_rotation
        if repeated is not None:
            s = torch.where(repeated[..., None], -math.inf, s)
        pick = functools.partial(_pick, models, poses, shifts, shift_i)
        cand_score, cand_local = s.max(2)  # (nc, C)
        if per_candidate:  # one track per candidate
            best_score, best_i = cand_score, torch.arange(n_cand, device=device) * n_local + cand_local
        else:
            best_score, best_i = torch.topk(s.reshape(nc, -1), min(top, n_cand * n_local), dim=1)
        b_model, b_pose, b_rot, b_shift = pick(best_i // n_local, best_i % n_local)
        model_score, model_cand = _model_bests(models, cand_score, n_models)
        _, _, m_rot, m_shift = pick(model_cand, cand_local[rows_idx, model_cand])
        out.append((b_model, b_pose, b_rot, b_shift, best_score, model_score, m_rot, m_shift))
    return SearchResult(*(torch.cat(parts) for parts in zip(*out)))


def _candidate_slices(volumes_ft: torch.Tensor, poses: torch.Tensor, models: torch.Tensor,
                      repeated: torch.Tensor | None, band: Band, pad: int) -> torch.Tensor:
    """``(nc, C, L, M)``: the band slices of every candidate's local poses ``(nc, C, L, 3, 3)``
    in its model's volume; a repeated candidate's stay zero."""
    nc, n_cand, n_local = poses.shape[:3]
    refs = torch.zeros((nc, n_cand, n_local, band.size), dtype=torch.complex64, device=volumes_ft.device)
    for k in range(volumes_ft.shape[0]):
        sel = models == k if repeated is None else (models == k) & ~repeated
        if sel.any():
            refs[sel] = band_slices(volumes_ft[k], poses[sel], band, pad)
    return refs


def _model_bests(models: torch.Tensor, cand_score: torch.Tensor, n_models: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per particle and model, the best candidate score of that model and its candidate
    (``(nc, K)`` each; -inf where the model has none)."""
    model_score = torch.full((cand_score.shape[0], n_models), -math.inf, device=cand_score.device)
    model_cand = torch.zeros((cand_score.shape[0], n_models), dtype=torch.long, device=cand_score.device)
    for k in range(n_models):
        masked = torch.where(models == k, cand_score, torch.full_like(cand_score, -math.inf))
        model_score[:, k], model_cand[:, k] = masked.max(1)
    return model_score, model_cand


def _pick(
    models: torch.Tensor,
    poses: torch.Tensor,
    shifts: torch.Tensor,
    shift_i: torch.Tensor,
    cand: torch.Tensor,
    local: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Model, pose index, rotation and shift of candidate ``cand``'s local pose ``local``,
    per particle (``cand``, ``local``: ``(n, k)``)."""
    rows = torch.arange(cand.shape[0], device=cand.device)[:, None]
    n_local = poses.shape[2]
    return (
        models[rows, cand],
        cand * n_local + local,
        poses[rows, cand, local],
        shifts[rows, cand, shift_i[rows, cand, local]],
    )


def _as_candidates(centers: torch.Tensor, shifts_px: torch.Tensor, models: torch.Tensor,
                   device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`search_local`'s candidates as ``(n, C, ...)`` tensors on ``device`` (one per particle
    where given as ``(n, 3, 3)``)."""
    if centers.dim() == 3:
        centers, shifts_px, models = centers[:, None], shifts_px[:, None], models[:, None]
    return (centers.to(device=device, dtype=torch.float32), shifts_px.to(device=device, dtype=torch.float32),
            models.to(device=device, dtype=torch.long))


def _repeated(models: torch.Tensor, centers: torch.Tensor, shifts: torch.Tensor,
              skip: torch.Tensor | None = None) -> torch.Tensor | None:
    """``(n, C)``: candidate ``c`` equals an earlier one of its particle (model, pose, shift),
    or is one of ``skip``; None where no particle has two candidates and none is skipped."""
    if models.shape[1] == 1:
        return skip
    if skip is not None:
        return _repeated(models, centers, shifts) | skip
    same = (
        (models[:, :, None] == models[:, None, :])
        & ((centers[:, :, None] - centers[:, None, :]).abs().amax((-2, -1)) < 1e-6)
        & ((shifts[:, :, None] - shifts[:, None, :]).abs().amax(-1) < 1e-6)
    )
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=same.device).tril(-1)
    return (same & earlier).any(-1)


def _local_passes(
    local_range_deg: float | Sequence[float],
    local_step_deg: float | Sequence[float],
    fine_shift_offsets_px: torch.Tensor | Sequence[torch.Tensor],
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The local passes of :func:`refine_assignments`: (local rotations, shift offsets) each,
    one per entry of the longest argument (scalars and a single tensor mean one pass;
    shorter lists repeat their last entry)."""
    from multirefine.geometry.grids import local_rotations

    ranges = np.atleast_1d(np.asarray(local_range_deg, dtype=np.float64))
    steps = np.atleast_1d(np.asarray(local_step_deg, dtype=np.float64))
    offsets = (
        [fine_shift_offsets_px]
        if isinstance(fine_shift_offsets_px, torch.Tensor)
        else list(fine_shift_offsets_px)
    )
    n_passes = max(len(ranges), len(steps), len(offsets))
    return [
        (
            local_rotations(ranges[min(i, len(ranges) - 1)], steps[min(i, len(steps) - 1)]),
            offsets[min(i, len(offsets) - 1)],
        )
        for i in range(n_passes)
    ]


def _keep_top(result: SearchResult, top: int) -> SearchResult:
    """``result`` with its ``top`` best (model, pose) pairs only (the per-model bests kept)."""
    keep = slice(0, top)
    return SearchResult(
        result.model[:, keep],
        result.pose_index[:, keep],
        result.rotations[:, keep],
        result.shift_px[:, keep],
        result.score[:, keep],
        result.model_scores,
        result.model_rotations,
        result.model_shift_px,
    )


def refine_assignments(
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    references: References | PolarReferences,
    volumes_ft: torch.Tensor,
    *,
    coarse_shifts_px: torch.Tensor,
    local_range_deg: float | Sequence[float],
    local_step_deg: float | Sequence[float],
    fine_shift_offsets_px: torch.Tensor | Sequence[torch.Tensor],
    candidates: int = 1,
    band: Band | None = None,
    previous: SearchResult | None = None,
    pad: int = 2,
    score: Score = "cc",
    top: int = 1,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    prior: PosePrior | None = None,
    hypotheses: int = 0,
    separation_deg: float = 0.0,
) -> SearchResult:
    """Coarse global search, then local searches around the best candidate poses.

    The global search is :func:`search_global` on :class:`References`, or
    :func:`multirefine.refine.polar.search_global_polar` on its ``PolarReferences`` (then
    ``band``, the local passes' pixels, is required).

    Each local pass refines, per particle, the best pose of every model plus the
    ``candidates`` best poses overall (branch and bound: at low SNR the true pose is not
    always the best coarse one, but it is among the best few); the very best is its
    model's best, so ``candidates - 1`` poses are added to the per-model ones.

    One local pass per entry of ``local_range_deg`` / ``local_step_deg`` /
    ``fine_shift_offsets_px`` (scalars and a single tensor mean one pass; shorter lists are
    repeated), each centred on the previous pass's best pose and shift per model, e.g.
    ranges ``(12, 4)`` and steps ``(4, 1.5)`` after a 15-degree global grid: about 120 + 80
    local poses per model instead of 2000 for one pass at 1.5 degrees.
    ``band``: the pixels of the local passes (default the references' band). The global
    pass may use a coarser band than the local ones: a grid of coarse angular step cannot
    place detail finer than about ``radius x step``, and a matched band makes it cheaper
    (fewer pixels); how much coarser is the caller's choice (the driver measured it).
    With ``previous`` (a result for the same particles and images) the global pass is skipped;
    ``prior`` weights every local pass's poses. Every model is refined locally, so
    ``model_scores`` are all fine-level and comparable. Returns the ``top`` best pairs.

    With ``hypotheses`` H > 1 the local passes follow tracks instead: each model's best pose
    and the global pass's next H - 1 candidates, each refined on its own through the passes
    (a pass is centred on the track's own best of the last), and the result is every track's
    final pose, ``(n, K + H - 1)`` best first, those that ended within ``separation_deg`` of
    a better track of their model at ``-inf`` (:mod:`multirefine.refine.hypotheses`): the
    distinct pose hypotheses a particle's map entry is spread over (``--hypotheses``).
    """
    passes = _local_passes(local_range_deg, local_step_deg, fine_shift_offsets_px)
    polar = isinstance(references, PolarReferences)
    if polar and band is None:  # polar references hold no Cartesian band for the local passes
        raise InputError("a search on polar references needs the band of its local passes")
    result = previous
    if result is None:
        result = (search_global_polar if polar else search_global)(
            images_ft, ctf, references, coarse_shifts_px, score=score, top=max(1, candidates, SPREAD * hypotheses),
            max_elements=max_elements)
    n, n_models = result.model_scores.shape
    every_model = torch.arange(n_models, device=result.model_scores.device).expand(n, -1)
    tracks = hypotheses > 1
    if tracks:  # each model's best and the global pass's candidates spread apart (multirefine.refine.hypotheses)
        spread, skip = spread_candidates(result, hypotheses, separation_deg)
        centres = _centres(result, every_model, (torch.arange(n, device=spread.device)[:, None], spread))
        skip = torch.cat([torch.zeros_like(every_model, dtype=torch.bool), skip], 1)
    else:  # the best overall is its model's best, already a candidate: the next ones are added
        centres, skip = _centres(result, every_model, (slice(None), slice(1, min(candidates, result.model.shape[1])))), None
    for rotations, shift_offsets in passes:
        result = search_local(images_ft, ctf, volumes_ft, references.band if band is None else band, *centres,
                              rotations, shift_offsets, pad=pad, score=score, top=max(top, candidates),
                              max_elements=max_elements, prior=prior, per_candidate=tracks, skip=skip)
        if tracks:  # each track goes on from its own best pose; a repeated one stays out
            centres, skip = (result.rotations, result.shift_px, result.model), ~torch.isfinite(result.score)
        else:
            centres = _centres(result, every_model, (slice(None), slice(1, min(candidates, result.model.shape[1]))))
    return distinct_tracks(result, separation_deg) if tracks else _keep_top(result, top)


def _centres(result: SearchResult, every_model: torch.Tensor, added: tuple) -> tuple[torch.Tensor, ...]:
    """Where a local pass starts: each model's best pose, then the entries ``added`` of ``result``."""
    return (torch.cat([result.model_rotations, result.rotations[added]], 1),
            torch.cat([result.model_shift_px, result.shift_px[added]], 1),
            torch.cat([every_model, result.model[added]], 1))
