"""The search: score particles against projections of K models, keep the best poses.

A pure function of one batch of particles and the current references (tensors on one
device), so the same code serves a CPU core, a GPU and a Dask worker.

**Band.** Only the rfft pixels with ``low <= |k| < band_radius_px`` (cycles per box of the
original box ``D``; the DC pixel is left out by default, it carries only the background
level) are used: :func:`make_band` lists them, ``(M,)`` flat indices into the
``(D, D//2+1)`` layout of :func:`multirefine.fourier.fft.rfft2_centered`, and every
stage gathers just those pixels. This *is* the Fourier crop: pixels outside the band are
never touched, projections are sampled only at in-band frequencies (no full slices), so
cost and memory scale with ``M ~ pi r^2 / 2``, not ``D^2``. The half plane stands for the
whole plane: pixels with ``kx > 0`` count twice (their Friedel mates), ``kx = 0`` once.

**Score.** With the CTF ``c`` on the particle side, for an image transform ``X`` shifted by a
candidate ``s`` (``X_s``) and a reference projection ``P`` (sums over the band, full plane)::

    cross    = Re sum c X_s conj(P)          (matrix product: particle x shift  by  reference)
    refpower = sum c^2 |P|^2                 (matrix product: particle  by  reference)
    "cc":  cross / sqrt(refpower) / sqrt(sum |X|^2)      in [-1, 1] (Cauchy-Schwarz)
    "ls":  cross - refpower / 2  =  (|X|^2 - |X_s - c P|^2) / 2

"cc" is the normalised cross-correlation (the ``|X|`` factor is the same for every
reference and shift, shifts being pure phases; it only puts scores on a common scale).
"ls" is the least-squares score: ``ls / sigma^2`` is the white-noise log-likelihood up to
a per-particle constant, the quantity posteriors (soft assignment) are made from; it
depends on the absolute scale of maps and images, "cc" does not.

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
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.fourier.fft import frequency_grid_2d
from multirefine.fourier.interpolate import sample_half_volume
from multirefine.fourier.projection import prepare_volume_ft

if TYPE_CHECKING:
    from multirefine.refine.polar import PolarReferences

__all__ = [
    "Band",
    "References",
    "SearchResult",
    "band_phase_ramp",
    "band_slices",
    "make_band",
    "make_references",
    "refine_assignments",
    "scale_terms",
    "score_matrix",
    "search_global",
    "search_local",
    "shift_grid",
]

Score = Literal["cc", "ls"]
DEFAULT_MAX_ELEMENTS = 2**23  # entries per chunk: 32 MiB of float32 scores, 64 MiB of complex64 images
SLICE_POINTS = 2**22  # sample points per interpolation call in band_slices


@dataclass(frozen=True)
class Band:
    """The rfft pixels of a ``D`` box used by the search (see the module docstring)."""

    box_size: int
    radius_px: float
    index: torch.Tensor  # (M,) int64: flat index into (D, D//2+1)
    kx: torch.Tensor  # (M,) float32, cycles per box
    ky: torch.Tensor  # (M,) float32
    weight: torch.Tensor  # (M,) float32: 2 for kx > 0, 1 for kx = 0

    @property
    def size(self) -> int:
        return int(self.index.numel())

    def gather(self, ft: torch.Tensor) -> torch.Tensor:
        """``(..., D, D//2+1)`` -> ``(..., M)``."""
        if ft.shape[-2:] != (self.box_size, self.box_size // 2 + 1):
            raise InputError(
                f"transforms of shape {tuple(ft.shape[-2:])}: expected the rfft layout of a "
                f"{self.box_size} box, {(self.box_size, self.box_size // 2 + 1)}"
            )
        return ft.reshape(ft.shape[:-2] + (-1,))[..., self.index.to(ft.device)]

    def to(self, device: torch.device | str) -> Band:
        return Band(
            self.box_size,
            self.radius_px,
            self.index.to(device),
            self.kx.to(device),
            self.ky.to(device),
            self.weight.to(device),
        )


def make_band(
    box_size: int,
    band_radius_px: float,
    low_radius_px: float = 0.5,
    device: torch.device | str | None = None,
) -> Band:
    """The rfft pixels with ``low_radius_px <= |k| < band_radius_px`` of a ``D`` box.

    Radii in pixels of the ``D`` box (cycles per box): the resolution is
    ``D * pixel_size / band_radius_px`` Å. ``band_radius_px`` is capped at ``D / 2``;
    ``low_radius_px = 0.5`` leaves out only the DC pixel (0 keeps it).
    """
    if not (band_radius_px > low_radius_px >= 0):
        raise InputError(
            f"search band {low_radius_px}..{band_radius_px} px: expected 0 <= low < high"
        )
    radius = min(float(band_radius_px), box_size / 2)
    kx, ky = frequency_grid_2d(box_size, device=device)
    r2 = kx**2 + ky**2
    mask = (r2 < radius**2) & (r2 >= low_radius_px**2)
    index = torch.nonzero(mask.reshape(-1)).squeeze(1)
    kx, ky = kx.reshape(-1)[index], ky.reshape(-1)[index]
    weight = torch.where(kx > 0, 2.0, 1.0).to(torch.float32)
    return Band(box_size, radius, index, kx, ky, weight)


def band_phase_ramp(shift_px: torch.Tensor, band: Band) -> torch.Tensor:
    """:func:`~multirefine.fourier.shift.phase_ramp_2d` at the band: ``(..., 2)`` -> ``(..., M)``.

    Multiplying an image transform by it translates the image by ``+shift_px``.
    """
    kx, ky = band.kx.to(shift_px.device), band.ky.to(shift_px.device)
    dx = shift_px[..., 0, None].to(torch.float32)
    dy = shift_px[..., 1, None].to(torch.float32)
    phase = (-2 * math.pi / band.box_size) * (kx * dx + ky * dy)
    return torch.polar(torch.ones_like(phase), phase)


def band_slices(
    volume_ft: torch.Tensor, rotations: torch.Tensor, band: Band, pad: int = 2
) -> torch.Tensor:
    """Central slices of a half volume ``(P, P, P//2+1)`` at the band pixels only.

    ``rotations`` ``(..., 3, 3)`` -> ``(..., M)`` complex64; the same values as
    :func:`multirefine.fourier.projection.extract_central_slices` gathered by ``band``.
    """
    rot = rotations.to(device=volume_ft.device, dtype=torch.float32)
    kxy = torch.stack([band.kx, band.ky], -1).to(device=rot.device, dtype=torch.float32) * pad
    flat = rot.reshape(-1, 3, 3)
    out = torch.empty((flat.shape[0], band.size), dtype=torch.complex64, device=rot.device)
    # In chunks of about SLICE_POINTS sample points: the coordinates and the interpolation's
    # temporaries (about 60 bytes a point) stay small whatever the number of poses.
    step = max(1, SLICE_POINTS // max(1, band.size))
    for start in range(0, flat.shape[0], step):
        out[start : start + step] = sample_half_volume(volume_ft, kxy @ flat[start : start + step, :2, :])
    return out.reshape(rot.shape[:-2] + (band.size,))


def shift_grid(
    max_shift_px: float, step_px: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Shifts ``(S, 2)`` ``(dx, dy)`` on a square lattice of ``step_px`` within ``max_shift_px``.

    ``(0, 0)`` first, then by length (RELION's ``--offset_range`` / ``--offset_step``).
    """
    if not (step_px > 0 and max_shift_px >= 0):
        raise InputError(
            f"shift range {max_shift_px} / step {step_px} px: expected range >= 0, step > 0"
        )
    k = math.floor(max_shift_px / step_px + 1e-9)
    ax = np.arange(-k, k + 1, dtype=np.float64) * step_px
    grid = np.stack(np.meshgrid(ax, ax, indexing="xy"), -1).reshape(-1, 2)
    length = np.hypot(grid[:, 0], grid[:, 1])
    grid = grid[length <= max_shift_px + 1e-9]
    order = np.lexsort((grid[:, 0], grid[:, 1], np.round(np.hypot(grid[:, 0], grid[:, 1]), 9)))
    return torch.as_tensor(grid[order], dtype=torch.float32, device=device)


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


def _half_volumes(volumes: torch.Tensor, pad: int) -> tuple[torch.Tensor, int]:
    """Maps ``(K, D, D, D)`` real or half volumes ``(K, P, P, P//2+1)`` -> half volumes, D."""
    if volumes.is_complex():
        return volumes, volumes.shape[-3] // pad
    return prepare_volume_ft(volumes, pad=pad), volumes.shape[-1]


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
    half, box = _half_volumes(volumes, pad)
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


@dataclass
class SearchResult:
    """Best poses per particle: the ``top`` best (model, pose) pairs, each at its best
    shift, in decreasing score.

    ``shift_px`` is the shift to apply to the image given to the search to centre it
    (RELION origin, see the module docstring). ``pose_index``: the index in the model's
    reference pose set (global search), or ``c * L + l`` for candidate ``c`` and local
    rotation ``l`` (local search). ``model_*``: the best per model, for soft assignment and
    for counting particles that change model; ``-inf`` for models not searched.
    """

    model: torch.Tensor  # (n, top) int64
    pose_index: torch.Tensor  # (n, top) int64
    rotations: torch.Tensor  # (n, top, 3, 3) float32
    shift_px: torch.Tensor  # (n, top, 2) float32
    score: torch.Tensor  # (n, top) float32
    model_scores: torch.Tensor  # (n, K) float32
    model_rotations: torch.Tensor  # (n, K, 3, 3)
    model_shift_px: torch.Tensor  # (n, K, 2)


def score_matrix(
    cross: torch.Tensor, refpower: torch.Tensor, image_power: torch.Tensor, score: Score = "cc"
) -> torch.Tensor:
    """Scores from the two matrix products (see the module docstring).

    ``cross`` ``(n, S, R)``, ``refpower`` ``(n, R)`` (``sum c^2 |P|^2``), ``image_power``
    ``(n,)`` (``sum |X|^2``) -> ``(n, S, R)``.
    """
    if score == "cc":
        denom = refpower.clamp_min(1e-30).sqrt() * image_power.clamp_min(1e-30).sqrt()[:, None]
        return cross / denom[:, None, :]
    if score == "ls":
        return cross - 0.5 * refpower[:, None, :]
    raise InputError(f"search score {score!r}: expected 'cc' or 'ls'")


def _particle_terms(
    images_ft: torch.Tensor, ctf: torch.Tensor | None, band: Band
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-band ``X``, ``w c``, ``w c^2`` (each ``(n, M)``) and ``sum w |X|^2`` ``(n,)``."""
    x = band.gather(images_ft).to(torch.complex64)
    w = band.weight.to(x.device)
    if ctf is None:
        c = torch.ones(x.shape, dtype=torch.float32, device=x.device)
    else:
        c = band.gather(ctf).to(device=x.device, dtype=torch.float32)
    wc = w * c
    return x, wc, wc * c, (w * (x.real**2 + x.imag**2)).sum(-1)


def _as_real_rows(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., M)`` -> real ``(..., 2M)`` (re, im interleaved): ``z . p = Re z conj(p)``."""
    z = z.contiguous()
    return torch.view_as_real(z).reshape(z.shape[:-1] + (2 * z.shape[-1],))


def _merge_top(
    best_score: torch.Tensor,
    best_code: torch.Tensor,
    score: torch.Tensor,
    code: torch.Tensor,
    top: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: ``(n, top)`` so far and ``(n, N)`` new candidates -> ``(n, top)``."""
    k = min(top, score.shape[1])
    s, i = torch.topk(score, k, dim=1)
    s = torch.cat([best_score, s], 1)
    c = torch.cat([best_code, torch.gather(code, 1, i)], 1)
    s, j = torch.topk(s, top, dim=1)
    return s, torch.gather(c, 1, j)


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
    x, wc, wc2, x_power = _particle_terms(images_ft, ctf, band)
    n, n_shifts = x.shape[0], shifts.shape[0]
    n_models, n_poses = references.slices.shape[:2]
    # Particle side: w c X_s, rows (shift, particle) shift-major, real (re, im) columns.
    ramp = band_phase_ramp(shifts, band)
    shifted = _as_real_rows((x * wc)[None] * ramp[:, None, :])  # (S, n, 2M)
    rows = shifted.reshape(n_shifts * n, -1)
    chunk = max(1, max_elements // max(1, n * n_shifts))
    best_score = torch.full((n, top), -math.inf, device=device)
    best_code = torch.zeros((n, top), dtype=torch.long, device=device)  # model * R + pose
    model_score = torch.full((n, n_models), -math.inf, device=device)
    model_code = torch.zeros((n, n_models), dtype=torch.long, device=device)
    for k in range(n_models):
        for start in range(0, references.counts[k], chunk):
            stop = min(start + chunk, references.counts[k])
            refs = _as_real_rows(references.slices[k, start:stop])  # (Rc, 2M)
            cross = (rows @ refs.T).reshape(n_shifts, n, -1).amax(0)  # (n, Rc)
            refpower = wc2 @ references.power[k, start:stop].T
            s = score_matrix(cross[:, None], refpower, x_power, score)[:, 0]  # (n, Rc)
            code = (k * n_poses + torch.arange(start, stop, device=device)).expand(n, -1)
            best_score, best_code = _merge_top(best_score, best_code, s, code, top)
            m_s, m_i = s.max(1)
            better = m_s > model_score[:, k]
            model_score[:, k] = torch.where(better, m_s, model_score[:, k])
            model_code[:, k] = torch.where(better, k * n_poses + start + m_i, model_code[:, k])

    # Best shift of each winning (particle, reference): the cross term at every shift.
    flat_slices = references.slices.reshape(n_models * n_poses, -1)

    def best_shift(code: torch.Tensor) -> torch.Tensor:
        refs = _as_real_rows(flat_slices[code])  # (n, T, 2M)
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


def scale_terms(
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    volumes_ft: torch.Tensor,
    band: Band,
    model: torch.Tensor,
    rotations: torch.Tensor,
    shift_px: torch.Tensor,
    *,
    pad: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms of the least-squares intensity scale between particles and references.

    At each particle's pose (``model`` ``(n,)``, ``rotations`` ``(n, 3, 3)``, ``shift_px``
    ``(n, 2)``, found by ``cc``, which does not depend on the scale) in the half volumes
    ``volumes_ft`` ``(K, P, P, P//2+1)``: ``cross = Re sum c X_s conj(P)`` and
    ``refpower = sum c^2 |P|^2`` over the band. Returns ``(cross, refpower)``, each ``(n,)``:
    over a set of particles, ``sum cross / sum refpower`` is the factor ``a`` that minimises
    ``sum |X_s - a c P|^2``, the factor to put references in the particles' units (what
    RELION's first iteration with ``--firstiter_cc`` and its scale correction do).
    """
    device = volumes_ft.device
    x, wc, wc2, _ = _particle_terms(images_ft.to(device), None if ctf is None else ctf.to(device), band)
    model, rotations = model.to(device), rotations.to(device=device, dtype=torch.float32)
    p = torch.zeros(x.shape, dtype=torch.complex64, device=device)
    for k in range(volumes_ft.shape[0]):
        own = model == k
        if own.any():
            p[own] = band_slices(volumes_ft[k], rotations[own], band, pad)
    xs = x * band_phase_ramp(shift_px.to(device), band)
    cross = (wc * (xs * p.conj()).real).sum(-1)
    refpower = (wc2 * (p.real**2 + p.imag**2)).sum(-1)
    return cross, refpower


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
) -> SearchResult:
    """Refine C candidate poses per particle: poses ``Delta @ A``, shifts ``s0 + offset``.

    ``volumes_ft`` ``(K, P, P, P//2+1)`` half volumes; ``centers`` ``(n, C, 3, 3)`` (or
    ``(n, 3, 3)``), ``center_shifts_px`` ``(n, C, 2)``, ``center_models`` ``(n, C)`` int
    (the model each candidate belongs to); ``local_rotations`` ``(L, 3, 3)`` (from
    :func:`multirefine.geometry.grids.local_rotations`), ``shift_offsets_px`` ``(S, 2)``.
    Projections of the ``n x C x L`` poses are made on the fly, particles in chunks within
    ``max_elements``. Runs on the volumes' device.
    """
    device = volumes_ft.device
    band = band.to(device)
    n_models = volumes_ft.shape[0]
    if centers.dim() == 3:
        centers = centers[:, None]
        center_shifts_px, center_models = center_shifts_px[:, None], center_models[:, None]
    centers = centers.to(device=device, dtype=torch.float32)
    center_shifts = center_shifts_px.to(device=device, dtype=torch.float32)
    center_models = center_models.to(device=device, dtype=torch.long)
    delta = torch.as_tensor(local_rotations, dtype=torch.float32).to(device)
    offsets = torch.as_tensor(shift_offsets_px, dtype=torch.float32).to(device).reshape(-1, 2)
    ctf = None if ctf is None else ctf.to(device)
    x, wc, wc2, x_power = _particle_terms(images_ft.to(device), ctf, band)
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
        repeated = _repeated(models, centers[sl], center_shifts[sl]) if n_cand > 1 else None
        refs = torch.zeros((nc, n_cand, n_local, m), dtype=torch.complex64, device=device)
        for k in range(n_models):
            sel = models == k if repeated is None else (models == k) & ~repeated
            if sel.any():
                refs[sel] = band_slices(volumes_ft[k], poses[sel], band, pad)
        shifts = center_shifts[sl, :, None, :] + offsets  # (nc, C, S, 2)
        rows = _as_real_rows((x[sl] * wc[sl])[:, None, None, :] * band_phase_ramp(shifts, band))
        cross = rows @ _as_real_rows(refs).transpose(-1, -2)  # (nc, C, S, L)
        cross, shift_i = cross.max(2)  # best shift per pose: (nc, C, L)
        refpower = ((refs.real**2 + refs.imag**2) @ wc2[sl, None, :, None]).squeeze(-1)
        s = score_matrix(
            cross.reshape(nc, 1, -1), refpower.reshape(nc, -1), x_power[sl], score
        ).reshape(nc, n_cand, n_local)
        if repeated is not None:
            s = torch.where(repeated[..., None], -math.inf, s)
        pick = functools.partial(_pick, models, poses, shifts, shift_i)
        best_score, best_i = torch.topk(s.reshape(nc, -1), min(top, n_cand * n_local), dim=1)
        b_model, b_pose, b_rot, b_shift = pick(best_i // n_local, best_i % n_local)
        # Best per model: over the candidates of that model (-inf where there is none).
        cand_score, cand_local = s.max(2)  # (nc, C)
        model_score = torch.full((nc, n_models), -math.inf, device=device)
        model_cand = torch.zeros((nc, n_models), dtype=torch.long, device=device)
        for k in range(n_models):
            masked = torch.where(models == k, cand_score, torch.full_like(cand_score, -math.inf))
            model_score[:, k], model_cand[:, k] = masked.max(1)
        _, _, m_rot, m_shift = pick(model_cand, cand_local[rows_idx, model_cand])
        out.append((b_model, b_pose, b_rot, b_shift, best_score, model_score, m_rot, m_shift))
    return SearchResult(*(torch.cat(parts) for parts in zip(*out)))


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


def _repeated(models: torch.Tensor, centers: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``(n, C)``: candidate ``c`` equals an earlier one of its particle (model, pose, shift)."""
    same = (
        (models[:, :, None] == models[:, None, :])
        & ((centers[:, :, None] - centers[:, None, :]).abs().amax((-2, -1)) < 1e-6)
        & ((shifts[:, :, None] - shifts[:, None, :]).abs().amax(-1) < 1e-6)
    )
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=same.device).tril(-1)
    return (same & earlier).any(-1)


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
    With ``previous`` (a result for the same particles and images) the global pass is
    skipped. Every model is refined locally, so ``model_scores`` are all fine-level and
    comparable. Returns the ``top`` best (model, pose) pairs of the last pass.
    """
    from multirefine.geometry.grids import local_rotations

    ranges = np.atleast_1d(np.asarray(local_range_deg, dtype=np.float64))
    steps = np.atleast_1d(np.asarray(local_step_deg, dtype=np.float64))
    offsets = (
        [fine_shift_offsets_px]
        if isinstance(fine_shift_offsets_px, torch.Tensor)
        else list(fine_shift_offsets_px)
    )
    n_passes = max(len(ranges), len(steps), len(offsets))
    passes = [
        (
            local_rotations(ranges[min(i, len(ranges) - 1)], steps[min(i, len(steps) - 1)]),
            offsets[min(i, len(offsets) - 1)],
        )
        for i in range(n_passes)
    ]
    from multirefine.refine.polar import PolarReferences, search_global_polar

    polar = isinstance(references, PolarReferences)
    if polar and band is None:  # polar references hold no Cartesian band for the local passes
        raise InputError("a search on polar references needs the band of its local passes")
    result = previous
    if result is None:
        result = (search_global_polar if polar else search_global)(
            images_ft,
            ctf,
            references,
            coarse_shifts_px,
            score=score,
            top=max(1, candidates),
            max_elements=max_elements,
        )
    n, n_models = result.model_scores.shape
    every_model = torch.arange(n_models, device=result.model_scores.device).expand(n, -1)
    for rotations, shift_offsets in passes:
        # The best overall is its model's best, already a candidate: the next ones are added.
        best = slice(1, min(candidates, result.model.shape[1]))
        result = search_local(
            images_ft,
            ctf,
            volumes_ft,
            references.band if band is None else band,
            torch.cat([result.model_rotations, result.rotations[:, best]], 1),
            torch.cat([result.model_shift_px, result.shift_px[:, best]], 1),
            torch.cat([every_model, result.model[:, best]], 1),
            rotations,
            shift_offsets,
            pad=pad,
            score=score,
            top=max(top, candidates),
            max_elements=max_elements,
        )
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
