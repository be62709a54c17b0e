"""What the polar and Cartesian passes of the search share: the band of Fourier pixels
searched, the shift grids, the score and the running top-k of the best poses.

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

**Pose prior.** Local searches may weight each pose by a Gaussian prior around a given one
(:class:`PosePrior`, ``--sigma_ang``), added to "ls" in its log-likelihood units
(:func:`log_likelihood_unit`).

Shifts and poses follow :mod:`multirefine.refine.search` (RELION's origin; the slice is
rows 0, 1 of ``A``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.fourier.fft import frequency_grid_2d
from multirefine.fourier.interpolate import sample_half_volume
from multirefine.fourier.projection import prepare_volume_ft

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "SLICE_POINTS",
    "Band",
    "PosePrior",
    "Score",
    "SearchResult",
    "as_real_rows",
    "band_phase_ramp",
    "band_slices",
    "half_volumes",
    "log_likelihood_unit",
    "make_band",
    "merge_top",
    "particle_terms",
    "scale_terms",
    "score_matrix",
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

    def power(self, ft: torch.Tensor) -> torch.Tensor:
        """``(...,)``: the power of transforms ``(..., D, D//2+1)`` within the band, the whole
        plane (each ``kx > 0`` pixel counts twice)."""
        return (self.weight.to(ft.device) * self.gather(ft).abs() ** 2).sum(-1)

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


def half_volumes(volumes: torch.Tensor, pad: int) -> tuple[torch.Tensor, int]:
    """Maps ``(K, D, D, D)`` real or half volumes ``(K, P, P, P//2+1)`` -> half volumes, D."""
    if volumes.is_complex():
        return volumes, volumes.shape[-3] // pad
    return prepare_volume_ft(volumes, pad=pad), volumes.shape[-1]


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


def particle_terms(
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


def as_real_rows(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., M)`` -> real ``(..., 2M)`` (re, im interleaved): ``z . p = Re z conj(p)``."""
    z = z.contiguous()
    return torch.view_as_real(z).reshape(z.shape[:-1] + (2 * z.shape[-1],))


def merge_top(
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


@dataclass(frozen=True)
class PosePrior:
    """A Gaussian prior on each particle's pose in every model, centred on a given pose (RELION's
    local searches, ``--sigma_ang``): the log prior of a rotation ``R`` and shift ``s`` in model
    ``k`` is ``-(angle(R, R0)^2 / sigma_ang^2 + |s - s0|^2 / sigma_shift^2) / 2``, the angle
    geodesic. A local pass then ranks poses by the log-likelihood plus this (the pose is the
    posterior's mode): where the band holds little signal, as in a first iteration at 24 Å
    from a consensus refinement's poses, the best pose without it is a random one of the
    window, with it the centre. For the least-squares score only (``ls / sigma_n^2`` is the
    log-likelihood; :func:`log_likelihood_unit`)."""

    rotations: torch.Tensor  # (n, K, 3, 3): the centres
    shifts_px: torch.Tensor  # (n, K, 2)
    sigma_deg: float
    sigma_shift_px: float

    def log_prior(self, rows: slice, models: torch.Tensor, poses: torch.Tensor,
                  shifts_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the particles ``rows`` and their candidates' models ``models`` ``(nc, C)``: the
        rotations' log prior ``(nc, C, L)`` of ``poses`` ``(nc, C, L, 3, 3)`` and the shifts'
        ``(nc, C, S)`` of ``shifts_px`` ``(nc, C, S, 2)``."""
        at = torch.arange(models.shape[0], device=models.device)[:, None]
        r0 = self.rotations[rows].to(poses)[at, models]  # (nc, C, 3, 3)
        s0 = self.shifts_px[rows].to(shifts_px)[at, models]  # (nc, C, 2)
        cos = (((poses * r0[:, :, None]).sum((-2, -1)) - 1) / 2).clamp(-1, 1)
        angle = torch.acos(cos)
        rotation = -0.5 * (angle / math.radians(self.sigma_deg)) ** 2
        shift = -0.5 * ((shifts_px - s0[:, :, None]) ** 2).sum(-1) / self.sigma_shift_px**2
        return rotation, shift


def log_likelihood_unit(x_power: torch.Tensor, band: Band) -> torch.Tensor:
    """``(n,)``: the least-squares score per unit of log-likelihood, ``sigma_n^2 / 2``, with the
    noise power per band pixel ``sigma_n^2`` the particle's mean power in the band (at low SNR
    nearly all of it is noise), as :func:`multirefine.refine.splitmerge.log_likelihoods`."""
    return x_power / (2 * band.weight.sum().to(x_power))


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
    x, wc, wc2, _ = particle_terms(images_ft.to(device), None if ctf is None else ctf.to(device), band)
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
