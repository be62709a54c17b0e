"""The global search with the in-plane angle for free: scores on a polar Fourier grid.

docs/architecture.md, "Where the speed comes from". On a polar grid ``(r, theta)`` a rotation of the
image plane is a cyclic shift in ``theta``. For a projection direction ``d`` (pose ``A0`` at
in-plane angle 0) the pose at in-plane angle ``psi`` is ``A = Rz(psi) @ A0`` (RELION's psi)
and its central slice is ``P_psi(r, theta) = P_0(r, theta + psi)``. So, with the CTF on the
particle side (exact, astigmatism included: the CTF lives in the particle's own frame), at
``psi = -2 pi t / T``::

    cross(t)    = Re sum_r sum_theta  w(r) c X_s (r, theta) conj P_0(r, theta - 2 pi t / T)
                = Re IDFT_m [ sum_r  F[w c X_s](r, m) conj F[P_0](r, m) ] (t)
    refpower(t) =    IDFT_m [ sum_r  F[w c^2](r, m)   conj F[|P_0|^2](r, m) ] (t)

``F`` is the DFT over ``theta``. The sum over ``r`` is, for each angular frequency ``m``, one
matrix product (particle x shift rows by direction columns), and one inverse FFT per
(particle, shift, direction) gives the scores at every in-plane angle: the cost of the
products no longer grows with the number of in-plane angles.

Only the ``T'`` in-plane angles of the coarse step are wanted, so only the angular
frequencies ``|m| <= T'/2`` are kept and the inverse FFT has size ``T'`` (the scores are
real, so ``m >= 0`` suffices). That is an angular low-pass at the outer radii, matched to
the step: a grid of that step cannot place finer detail. (The exact alternative, every
frequency kept and the spectrum folded onto the ``T'`` angles, ranked poses no better in
the tests and made the pass 4x slower; BENCHMARKS.md.) About ``n S d R T'/2`` complex
products for ``n`` particles, ``S`` shifts, ``d`` directions and ``R`` radii, against
``n S d T' M`` real ones on the Cartesian band of ``M`` pixels.

The polar grid: radii ``low .. band`` in steps of one pixel (cycles per box), ``T`` angles
over the whole circle with an arc of at most one pixel at the outer radius. Each sample
stands for the area ``r dr dtheta``, so sums approximate the Cartesian band sums of
:mod:`multirefine.refine.search` (both halves of the plane). References are sampled from
the 3-D transforms exactly as there (trilinear on the padded half volume); the particles'
polar samples are bilinear in their ``D``-box transforms (with Friedel symmetry), of the
products ``c X`` and ``c^2``: the CTF oscillates within a pixel at high defocus, and
interpolating ``c`` and ``X`` apart ranked poses worse (score correlation with the
Cartesian 0.86-0.97 against 0.98-0.99). The polar scores only rank candidates:
:func:`multirefine.refine.search.search_local` then scores them on the Cartesian band, so
every score the refinement keeps is the Cartesian one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from multirefine.errors import InputError
from multirefine.fourier.interpolate import sample_half_volume
from multirefine.geometry.euler import euler_to_matrix
from multirefine.refine.scoring import (
    DEFAULT_MAX_ELEMENTS,
    SLICE_POINTS,
    Score,
    SearchResult,
    half_volumes,
    merge_top,
    score_matrix,
)

__all__ = [
    "PolarGrid",
    "PolarReferences",
    "make_polar_grid",
    "make_polar_references",
    "sample_polar",
    "search_global_polar",
]


@dataclass(frozen=True)
class PolarGrid:
    """Polar sample points of a ``D`` box's transform: ``R`` radii by ``T`` angles."""

    box_size: int
    radii: torch.Tensor  # (R,) float32, cycles per box
    n_angles: int  # T: sample angles 2 pi t / T, t = 0 .. T-1
    n_inplane: int  # T': in-plane angles searched, 360 / T' apart (even, at most T)
    kx: torch.Tensor  # (R, T) float32
    ky: torch.Tensor  # (R, T) float32
    weight: torch.Tensor  # (R,) float32: the area each sample stands for, r dr dtheta

    @property
    def inplane_step_deg(self) -> float:
        return 360.0 / self.n_inplane

    def to(self, device: torch.device | str) -> PolarGrid:
        return PolarGrid(
            self.box_size, self.radii.to(device), self.n_angles, self.n_inplane, self.kx.to(device),
            self.ky.to(device), self.weight.to(device),
        )


def make_polar_grid(
    box_size: int,
    band_radius_px: float,
    inplane_step_deg: float,
    low_radius_px: float = 1.0,
    device: torch.device | str | None = None,
) -> PolarGrid:
    """Radii ``low, low + 1, ...`` up to ``band_radius_px`` (capped at ``D / 2``); ``T`` sample
    angles, a multiple of 8, with an arc of at most one pixel at the outer radius; ``T'``
    in-plane angles, the even count with a step of at most ``inplane_step_deg``."""
    radius = min(float(band_radius_px), box_size / 2)
    if not (radius > low_radius_px > 0) or not inplane_step_deg > 0:
        raise InputError(
            f"polar grid {low_radius_px}..{band_radius_px} px, in-plane step {inplane_step_deg}°: "
            "expected 0 < low < high and a positive step"
        )
    # Annuli of one pixel centred on the radii, the last reaching the band's edge.
    radii = torch.arange(low_radius_px, radius + 0.5, 1.0, dtype=torch.float32, device=device)
    n_inplane = 2 * math.ceil(180.0 / inplane_step_deg - 1e-9)
    n_angles = 8 * math.ceil(max(2 * math.pi * float(radii[-1]), n_inplane) / 8)
    theta = torch.arange(n_angles, dtype=torch.float32, device=device) * (2 * math.pi / n_angles)
    kx = radii[:, None] * torch.cos(theta)[None]
    ky = radii[:, None] * torch.sin(theta)[None]
    weight = radii * (2 * math.pi / n_angles)
    return PolarGrid(box_size, radii, n_angles, n_inplane, kx, ky, weight)


def sample_polar(ft: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """Bilinear samples of rfft-layout transforms ``(..., D, D//2+1)`` (complex or real) at the
    polar points -> ``(..., R, T)``. A point with ``kx < 0`` is read at ``-k`` and conjugated."""
    d = grid.box_size
    if ft.shape[-2:] != (d, d // 2 + 1):
        raise InputError(f"transforms of shape {tuple(ft.shape[-2:])}: expected {(d, d // 2 + 1)}")
    kx, ky = grid.kx.to(ft.device), grid.ky.to(ft.device)
    flip = kx < 0
    x = torch.where(flip, -kx, kx)
    y = torch.where(flip, -ky, ky)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1 = (x0 + 1).clamp_max(d // 2)
    half = d // 2 + 1
    flat = ft.reshape(ft.shape[:-2] + (-1,))

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat[..., (yi % d) * half + xi]

    out = (
        at(y0, x0) * ((1 - fx) * (1 - fy))
        + at(y0, x1) * (fx * (1 - fy))
        + at(y0 + 1, x0) * ((1 - fx) * fy)
        + at(y0 + 1, x1) * (fx * fy)
    )
    return torch.where(flip, out.conj(), out) if out.is_complex() else out


@dataclass
class PolarReferences:
    """The angular spectra of K models' central slices over their projection directions.

    Model ``k`` uses directions ``j < counts[k]``; the rest is zero padding, never scored.
    """

    grid: PolarGrid
    spectra: torch.Tensor  # (K, J, R, T) complex64: F_theta of the slice at in-plane angle 0
    power_spectra: torch.Tensor  # (K, J, R, T) complex64: F_theta of |slice|^2
    rotations: torch.Tensor  # (K, J, 3, 3) float32: the directions' poses at in-plane angle 0
    counts: list[int]

    @property
    def n_models(self) -> int:
        return self.spectra.shape[0]


def make_polar_references(
    volumes: torch.Tensor,
    rotations: torch.Tensor | list[torch.Tensor],
    grid: PolarGrid,
    *,
    pad: int = 2,
) -> PolarReferences:
    """Slices of K models at the polar points for one direction set (poses at in-plane angle
    0, ``(J, 3, 3)``) or one per model; ``volumes`` real ``(K, D, D, D)`` or half volumes from
    :func:`multirefine.fourier.projection.prepare_volume_ft` with this ``pad``."""
    half, box = half_volumes(volumes, pad)
    if box != grid.box_size:
        raise InputError(f"maps of box {box} for a polar grid of box {grid.box_size}")
    device = half.device
    grid = grid.to(device)
    n_models = half.shape[0]
    sets = [rotations] * n_models if isinstance(rotations, torch.Tensor) else list(rotations)
    if len(sets) != n_models:
        raise InputError(f"{len(sets)} direction sets for {n_models} models")
    counts = [int(r.shape[0]) for r in sets]
    size = max(counts)
    n_r, n_t = grid.kx.shape
    points = torch.stack([grid.kx, grid.ky], -1).reshape(-1, 2) * pad  # (R T, 2)
    spectra = torch.zeros((n_models, size, n_r, n_t), dtype=torch.complex64, device=device)
    power = torch.zeros_like(spectra)
    rot_all = torch.eye(3, device=device).repeat(n_models, size, 1, 1)
    step = max(1, SLICE_POINTS // points.shape[0])
    for k, rot in enumerate(sets):
        rot = torch.as_tensor(rot).to(device=device, dtype=torch.float32)
        rot_all[k, : len(rot)] = rot
        for start in range(0, len(rot), step):
            chunk = rot[start : start + step]
            slices = sample_half_volume(half[k], points @ chunk[:, :2, :]).reshape(-1, n_r, n_t)
            spectra[k, start : start + len(chunk)] = torch.fft.fft(slices, dim=-1)
            power[k, start : start + len(chunk)] = torch.fft.fft(slices.real**2 + slices.imag**2, dim=-1)
    return PolarReferences(grid, spectra, power, rot_all, counts)


@dataclass
class _PolarParticles:
    """A chunk of ``n`` particles on the polar grid at every one of ``S`` shifts."""

    shifts: torch.Tensor  # (S, 2) float32
    shifted: torch.Tensor  # (S, n, R, T) complex64: w c X_s on the polar grid
    a: torch.Tensor  # (h, S n, R) complex64: F_theta of ``shifted``, frequencies m = 0 .. T'/2
    b: torch.Tensor  # (h, n, R) complex64: F_theta of w c^2
    x_power: torch.Tensor  # (n,) float32: sum w |X|^2

    @property
    def n(self) -> int:
        return self.shifted.shape[1]

    @property
    def n_shifts(self) -> int:
        return self.shifts.shape[0]


@dataclass
class _PolarBest:
    """Running bests of a polar search: codes ``(model J + j) T' + t``."""

    score: torch.Tensor  # (n, top)
    code: torch.Tensor  # (n, top) int64
    model_score: torch.Tensor  # (n, K)
    model_code: torch.Tensor  # (n, K) int64


def search_global_polar(
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    references: PolarReferences,
    shifts_px: torch.Tensor,
    *,
    score: Score = "cc",
    top: int = 1,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> SearchResult:
    """Every particle against every direction x in-plane angle of every model at every shift.

    As :func:`multirefine.refine.search.search_global` (same arguments and result), with
    the in-plane angles the grid's ``T'`` (``-360 t / T'`` degrees, RELION's psi). ``pose_index``
    is ``j * T' + t`` for direction ``j`` and in-plane angle ``t``.
    """
    grid = references.grid
    # The particles' polar images at every shift, (S, n, R, T), are the largest arrays here
    # (1.1 GiB for 500 particles at 81 shifts and a 4 Å band on a 64 box): particles go in
    # chunks that keep them within the budget. Each particle's result is its own.
    per_particle = torch.as_tensor(shifts_px).reshape(-1, 2).shape[0] * grid.kx.numel()
    size = max(1, max_elements // per_particle)
    if images_ft.shape[0] > size:
        parts = [
            search_global_polar(images_ft[i : i + size], None if ctf is None else ctf[i : i + size], references,
                                shifts_px, score=score, top=top, max_elements=max_elements)
            for i in range(0, images_ft.shape[0], size)
        ]
        return SearchResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SearchResult)))
    particles = _polar_particles(images_ft, ctf, references, shifts_px)
    best = _scan_polar(particles, references, score, top, max_elements)
    return _polar_result(particles, references, best)


def _polar_particles(
    images_ft: torch.Tensor, ctf: torch.Tensor | None, references: PolarReferences, shifts_px: torch.Tensor
) -> _PolarParticles:
    """The particles' side of the polar scores, on the references' device."""
    grid = references.grid
    device = references.spectra.device
    n_r = references.spectra.shape[2]
    h = grid.n_inplane // 2 + 1  # angular frequencies m = 0 .. T'/2 (the scores are real: Hermitian in m)
    images_ft = images_ft.to(device)
    shifts = torch.as_tensor(shifts_px, dtype=torch.float32).to(device).reshape(-1, 2)
    n, n_shifts = images_ft.shape[0], shifts.shape[0]
    # The products c X and c^2 are interpolated, not c and X apart (the CTF oscillates fast).
    x = sample_polar(images_ft, grid).to(torch.complex64)  # (n, R, T)
    if ctf is None:
        cx, c2 = x, torch.ones(x.shape, device=device)
    else:
        ctf = ctf.to(device).float()
        cx, c2 = sample_polar(images_ft * ctf, grid).to(torch.complex64), sample_polar(ctf * ctf, grid)
    w = grid.weight[:, None]
    x_power = (w * (x.real**2 + x.imag**2)).sum((-2, -1))
    phase = (-2 * math.pi / grid.box_size) * (
        shifts[:, 0, None, None] * grid.kx + shifts[:, 1, None, None] * grid.ky
    )
    shifted = (w * cx)[None] * torch.polar(torch.ones_like(phase), phase)[:, None]  # (S, n, R, T)
    # Rows (shift, particle) for each angular frequency kept: (h, S n, R).
    a = torch.fft.fft(shifted, dim=-1)[..., :h].reshape(n_shifts * n, n_r, h).permute(2, 0, 1).contiguous()
    b = torch.fft.fft(w * c2, dim=-1)[..., :h].to(torch.complex64).permute(2, 0, 1).contiguous()  # (h, n, R)
    return _PolarParticles(shifts, shifted, a, b, x_power)


def _scan_polar(
    particles: _PolarParticles, references: PolarReferences, score: Score, top: int, max_elements: int
) -> _PolarBest:
    """Score the particles against every model's directions, in chunks of directions, keeping
    the ``top`` best codes overall and the best per model."""
    device = references.spectra.device
    n_models, n_dirs, _, n_t = references.spectra.shape
    n_psi = references.grid.n_inplane
    h = n_psi // 2 + 1
    norm = n_psi / n_t  # irfft of size T' divides by T'; the sums over T samples want T
    n, n_shifts = particles.n, particles.n_shifts
    a, b = particles.a, particles.b
    # Directions per chunk: the (h, S n, J) products and their scores stay within budget.
    chunk = max(1, max_elements // max(1, n * n_shifts * n_psi))
    best_score = torch.full((n, top), -math.inf, device=device)
    best_code = torch.zeros((n, top), dtype=torch.long, device=device)  # (model J + j) T' + t
    model_score = torch.full((n, n_models), -math.inf, device=device)
    model_code = torch.zeros((n, n_models), dtype=torch.long, device=device)
    for k in range(n_models):
        for start in range(0, references.counts[k], chunk):
            stop = min(start + chunk, references.counts[k])
            refs = references.spectra[k, start:stop, :, :h].permute(2, 1, 0).conj()  # (h, R, J)
            cross = torch.fft.irfft(torch.bmm(a, refs).permute(1, 2, 0), n=n_psi, dim=-1)  # (S n, J, T')
            cross = cross.reshape(n_shifts, n, -1).amax(0) * norm  # (n, J T'): j-major
            pw = references.power_spectra[k, start:stop, :, :h].permute(2, 1, 0).conj()
            refpower = torch.fft.irfft(torch.bmm(b, pw).permute(1, 2, 0), n=n_psi, dim=-1).reshape(n, -1) * norm
            s = score_matrix(cross[:, None], refpower, particles.x_power, score)[:, 0]
            code = ((k * n_dirs + start) * n_psi + torch.arange(s.shape[1], device=device)).expand(n, -1)
            best_score, best_code = merge_top(best_score, best_code, s, code, top)
            m_s, m_i = s.max(1)
            better = m_s > model_score[:, k]
            model_score[:, k] = torch.where(better, m_s, model_score[:, k])
            model_code[:, k] = torch.where(better, code[0, 0] + m_i, model_code[:, k])
    return _PolarBest(best_score, best_code, model_score, model_code)


def _code_angle(code: torch.Tensor, n_psi: int) -> torch.Tensor:
    """The in-plane angle (radians) of a code."""
    return (code % n_psi).float() * (-2 * math.pi / n_psi)


def _code_pose(code: torch.Tensor, references: PolarReferences) -> torch.Tensor:
    """The pose matrices ``(..., 3, 3)`` of codes: the direction's pose turned in-plane."""
    n_psi = references.grid.n_inplane
    psi = torch.rad2deg(_code_angle(code, n_psi))
    zero = torch.zeros_like(psi)
    return euler_to_matrix(zero, zero, psi) @ references.rotations.reshape(-1, 3, 3)[code // n_psi]


def _code_shift(code: torch.Tensor, particles: _PolarParticles, references: PolarReferences) -> torch.Tensor:
    """The best shift ``(n, C, 2)`` of each particle's codes ``(n, C)``."""
    device = references.spectra.device
    n_r, n_t = references.spectra.shape[2:]
    n_psi = references.grid.n_inplane
    # The winner's slice on the polar grid turned by its in-plane angle psi:
    # P_psi(theta) = P_0(theta + psi), a phase e^{i m psi} on its angular spectrum.
    spectra = references.spectra.reshape(-1, n_r, n_t)[code // n_psi]  # (n, C, R, T)
    m = torch.fft.fftfreq(n_t, 1.0 / n_t, device=device)
    turn = torch.polar(torch.ones(code.shape + (n_t,), device=device), m * _code_angle(code, n_psi)[..., None])
    slices = torch.fft.ifft(spectra * turn[..., None, :], dim=-1)  # (n, C, R, T)
    crosses = torch.einsum("snrt,ncrt->ncs", particles.shifted, slices.conj()).real
    return particles.shifts[crosses.argmax(-1)]


def _polar_result(particles: _PolarParticles, references: PolarReferences, best: _PolarBest) -> SearchResult:
    """The search result of the best codes: models, pose indices, poses and best shifts."""
    per_model = references.spectra.shape[1] * references.grid.n_inplane  # J T'
    best_pose = _code_pose(best.code, references)
    model_pose = _code_pose(best.model_code, references)
    return SearchResult(
        best.code // per_model,
        best.code % per_model,
        best_pose,
        _code_shift(best.code, particles, references),
        best.score,
        best.model_score,
        model_pose,
        _code_shift(best.model_code, particles, references),
    )
