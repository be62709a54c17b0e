"""Insertion of particle transforms into Fourier accumulators, and Wiener reconstruction.

For each particle with pose ``A``, CTF ``c`` and centred image transform ``X``, the
central slice of the map's transform is estimated by inserting ``c * X`` into a data
accumulator and ``c^2`` into a weight accumulator (half volumes on a grid padded by
``pad``, :mod:`multirefine.fourier.interpolate`). The reconstruction is the Wiener
estimate::

    F(k) = data(k) / (weight(k) + 1 / SSNR(|k|))

with ``1 / SSNR`` given per shell (from a half-map FSC) or as a small constant, then an
inverse FFT, the central ``D^3`` box, the gridding correction and a soft mask outside the
sphere inscribed in the box (:func:`soft_mask_outside_sphere`, RELION's
``softMaskOutsideMap``). Accumulators are plain sums, so batches, half-sets, devices and
cluster shards combine by addition.

Why the mask: noise in the reconstruction is white, so it fills the whole ``D^3`` box with
the same variance, corners included, while the particle lies inside the inscribed sphere
(diameter ``D``, about 52% of the box). Unmasked, the ~48% of the box outside the sphere
carries ~48% of the noise power of every Fourier shell and none of the signal; replacing
it by its mean (as ``relion_reconstruct`` does) cuts the noise power per shell ~2x and
leaves the map inside the sphere, and its noise, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multirefine.fourier.fft import frequency_grid_2d
from multirefine.fourier.interpolate import (
    gridding_correction,
    hermitian_symmetrise_x0,
    sample_half_volume,
    splat_half_volume,
)
from multirefine.fourier.masks import soft_sphere_mask, solvent_level
from multirefine.fourier.projection import slice_coordinates

__all__ = [
    "FourierAccumulator",
    "insert_central_slices",
    "inverse_ssnr_from_fsc",
    "radial_index_3d_half",
    "reconstruct_volume",
    "soft_mask_outside_sphere",
    "symmetrise_half_volume",
]


@dataclass
class FourierAccumulator:
    """Sums of CTF-weighted data and CTF^2 weights for one map, padded half volumes."""

    box_size: int
    pad: int
    data: torch.Tensor  # (P, P, P//2+1) complex64
    weight: torch.Tensor  # (P, P, P//2+1) float32

    @classmethod
    def zeros(cls, box_size: int, pad: int = 2, device: torch.device | str | None = None):
        size = pad * box_size
        shape = (size, size, size // 2 + 1)
        return cls(
            box_size,
            pad,
            torch.zeros(shape, dtype=torch.complex64, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
        )

    def __iadd__(self, other: FourierAccumulator) -> FourierAccumulator:
        self.data += other.data.to(self.data.device)
        self.weight += other.weight.to(self.weight.device)
        return self

    def __add__(self, other: FourierAccumulator) -> FourierAccumulator:
        """A new accumulator of both sums (the two are left as they were)."""
        return FourierAccumulator(self.box_size, self.pad, self.data + other.data.to(self.data.device),
                                  self.weight + other.weight.to(self.weight.device))

    def __sub__(self, other: FourierAccumulator) -> FourierAccumulator:
        """A new accumulator without ``other``'s contribution (a subset of this one's)."""
        return FourierAccumulator(self.box_size, self.pad, self.data - other.data.to(self.data.device),
                                  self.weight - other.weight.to(self.weight.device))

    def cropped(self, box_size: int) -> FourierAccumulator:
        """The same samples within a smaller box: the map at pixel ``D / d`` times coarser.

        Keeps frequencies below ``d / 2`` (in the original box's units); the Fourier
        spacing is unchanged, so the result reconstructs the band-limited map on a ``d``
        box. ``box_size`` even, at most ``D``.
        """
        if box_size >= self.box_size:
            return self
        size, new = self.pad * self.box_size, self.pad * box_size
        rows = slice(size // 2 - new // 2, size // 2 + new // 2)
        return FourierAccumulator(
            box_size, self.pad, self.data[rows, rows, : new // 2 + 1], self.weight[rows, rows, : new // 2 + 1]
        )

    def insert(
        self,
        images_ft: torch.Tensor,
        ctf: torch.Tensor | None,
        rotations: torch.Tensor,
        max_radius: float | None = None,
        particle_weights: torch.Tensor | None = None,
    ) -> None:
        """Insert centred image transforms ``(n, D, D//2+1)`` with CTFs and poses ``(n, 3, 3)``."""
        insert_central_slices(self, images_ft, ctf, rotations, max_radius, particle_weights)

    def reconstruct(
        self, symmetry_operators: torch.Tensor | None = None, inverse_ssnr: float | np.ndarray = 1e-3
    ) -> torch.Tensor:
        """The Wiener-filtered map ``(D, D, D)``; see :func:`reconstruct_volume`."""
        data, weight = hermitian_symmetrise_x0(self.data), hermitian_symmetrise_x0(self.weight)
        if symmetry_operators is not None and len(symmetry_operators) > 1:
            data = symmetrise_half_volume(data, symmetry_operators)
            weight = symmetrise_half_volume(weight, symmetry_operators)
        return reconstruct_volume(data, weight, self.box_size, self.pad, inverse_ssnr)


def insert_central_slices(
    acc: FourierAccumulator,
    images_ft: torch.Tensor,
    ctf: torch.Tensor | None,
    rotations: torch.Tensor,
    max_radius: float | None = None,
    particle_weights: torch.Tensor | None = None,
) -> None:
    """Add ``p * ctf * X`` and ``p * ctf^2`` along each particle's central slice, in place.

    ``images_ft`` ``(n, D, D//2+1)`` (centred: already shifted by the particle origin),
    ``ctf`` ``(n, D, D//2+1)`` or None (no CTF: weight 1), ``rotations`` ``(n, 3, 3)``,
    ``particle_weights`` ``p`` ``(n,)`` (default 1: e.g. the posterior of the model).
    Only the stored half plane of each image is inserted; its ``kx = 0`` column holds
    both members of Friedel pairs and goes in with half weight.
    """
    box = acc.box_size
    coords, mask = slice_coordinates(rotations.to(acc.data.device), box, acc.pad, max_radius)
    images_ft = images_ft.to(acc.data.device)
    if ctf is None:
        ctf = torch.ones(images_ft.shape, dtype=torch.float32, device=acc.data.device)
    ctf = ctf.to(acc.data.device)
    kx, _ = frequency_grid_2d(box, device=acc.data.device)
    column_weight = torch.where(kx == 0, 0.5, 1.0) * mask
    per_pixel = column_weight.expand(ctf.shape)
    if particle_weights is not None:
        per_pixel = per_pixel * particle_weights.to(ctf.device, torch.float32)[:, None, None]
    values = images_ft * (ctf * per_pixel)
    weights = ctf**2 * per_pixel
    keep = mask.expand(coords.shape[:-1])
    splat_half_volume(acc.data, acc.weight, coords[keep], values[keep], weights[keep])


def symmetrise_half_volume(volume_ft: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """Sum of a half volume over a point group: ``out(k) = sum_R in(R k)``.

    ``volume_ft`` ``(P, P, P//2+1)`` (complex data or real weights, already completed by
    :func:`hermitian_symmetrise_x0`), ``operators`` ``(n, 3, 3)`` rotations in map
    coordinates. A map invariant under ``R`` has ``F(R k) = F(k)``, so the sum is the
    transform of the symmetrised map (times ``n``), and the same for weights.
    """
    size = volume_ft.shape[-3]
    half = volume_ft.shape[-1]
    device = volume_ft.device
    k = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    kx = torch.arange(half, device=device, dtype=torch.float32)
    z, y, x = torch.meshgrid(k, k, kx, indexing="ij")
    grid = torch.stack([x, y, z], -1)  # (P, P, Ph, 3)
    out = torch.zeros_like(volume_ft)
    for op in operators.to(device=device, dtype=torch.float32):
        out += sample_half_volume(volume_ft, grid @ op.T)
    return out


def inverse_ssnr_from_fsc(fsc_halves: np.ndarray, floor: float = 1e-3, ceiling: float = 1e6) -> np.ndarray:
    """``1 / SSNR`` per shell of the full map from the FSC of two half maps.

    ``SSNR_half = FSC / (1 - FSC)`` and the full map has twice the SSNR of a half map.
    Shells with FSC <= 0 get ``ceiling`` (nothing of them is trusted); ``floor`` keeps
    the division finite where the FSC reaches 1.
    """
    fsc = np.clip(np.asarray(fsc_halves, dtype=np.float64), 0.0, 0.999)
    ssnr_full = 2 * fsc / (1 - fsc)
    with np.errstate(divide="ignore"):
        inverse = np.where(ssnr_full > 0, 1 / ssnr_full, ceiling)
    return np.clip(inverse, floor, ceiling)


def radial_index_3d_half(size: int, device=None, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Shell index ``round(|k|)`` of every voxel of a centred half volume ``(P, P, P//2+1)``
    (computed by broadcasting: one float array of the volume's size, not three)."""
    k2 = (torch.arange(size, device=device, dtype=torch.float32) - size // 2) ** 2
    kx2 = torch.arange(size // 2 + 1, device=device, dtype=torch.float32) ** 2
    radius = (kx2[None, None, :] + k2[None, :, None]) + k2[:, None, None]  # x^2 + y^2 + z^2, in that order
    return radius.sqrt_().round_().to(dtype)


def soft_mask_outside_sphere(
    volume: torch.Tensor, radius: float | None = None, edge_width: float = 3.0
) -> torch.Tensor:
    """Replace a cubic map ``(D, D, D)`` outside a sphere by its mean there (RELION's ``softMaskOutsideMap``).

    Inside ``radius`` (default ``D/2``, about the box centre ``D//2``) the map is unchanged;
    beyond ``radius + edge_width`` it is the (edge-weighted) mean of the map outside
    ``radius``; in between a raised cosine blends the two.
    """
    size = volume.shape[-1]
    radius = size / 2 if radius is None else radius
    # 0 inside radius, 1 beyond radius + width
    inside = soft_sphere_mask(size, radius, edge_width, volume.device, volume.dtype)
    return volume + (1 - inside) * (solvent_level(volume, inside) - volume)


def reconstruct_volume(
    data: torch.Tensor,
    weight: torch.Tensor,
    box_size: int,
    pad: int = 2,
    inverse_ssnr: float | np.ndarray | torch.Tensor = 1e-3,
    mask_radius: float | None = None,
) -> torch.Tensor:
    """Wiener reconstruction from completed accumulators.

    ``data``, ``weight`` ``(P, P, P//2+1)`` (after :func:`hermitian_symmetrise_x0`).
    ``inverse_ssnr``: ``1 / SSNR`` per shell of the unpadded box (``(D//2+1,)``) or one
    value for all, in units of the mean weight of each shell (RELION's ``1 / tau^2``
    convention); the default ``1e-3`` is little more than a guard against division by
    zero. :func:`inverse_ssnr_from_fsc` turns a half-map FSC into this array.
    Returns the map ``(D, D, D)`` float32 with origin at ``D//2``; shells at or beyond
    ``D/2`` are zero. Outside ``mask_radius`` (default ``D/2``; ``float('inf')``: no mask)
    the map is replaced by its mean there, see :func:`soft_mask_outside_sphere`.
    """
    size = data.shape[-3]
    device = data.device
    n_shells = box_size // 2 + 1
    # Each voxel's shell of the unpadded box; voxels at or beyond its Nyquist (round(|k|) >=
    # pad * D / 2) go to a spill shell, n_shells, that nothing is read from. Sums over all
    # voxels, in their order, equal sums over the voxels inside: no masked copies are made.
    shells = radial_index_3d_half(size, device=device, dtype=torch.int32)
    spill = shells >= pad * box_size // 2
    shells = torch.div(shells, pad, rounding_mode="floor").masked_fill_(spill, n_shells).flatten()
    sums = torch.zeros(n_shells + 1, device=device).index_add_(0, shells, weight.flatten())[:n_shells]
    counts = torch.bincount(shells, minlength=n_shells + 1)[:n_shells].to(torch.float32)
    relative = torch.as_tensor(np.asarray(inverse_ssnr), dtype=torch.float32, device=device)
    per_shell = torch.cat([relative * sums / counts.clamp(min=1), torch.zeros(1, device=device)])
    denominator = per_shell[shells].view_as(weight).add_(weight)  # weight + the shell's regulariser
    keep = denominator > 0
    keep.logical_and_(~spill)
    del shells, spill
    ft = data / denominator.clamp_(min=1e-30)
    del denominator
    ft.masked_fill_(~keep, 0)
    del keep
    ft = torch.fft.ifftshift(ft, dim=(-3, -2))
    vol = torch.fft.irfftn(ft, s=(size, size, size), dim=(-3, -2, -1))
    del ft
    # The centred box of fftshift(vol), gathered from vol directly (fftshift's out[i] is
    # in[(i - size // 2) % size]): no shifted copy of the whole padded volume.
    start = size // 2 - box_size // 2
    rows = (torch.arange(start, start + box_size, device=device) - size // 2) % size
    vol = vol.index_select(0, rows).index_select(1, rows).index_select(2, rows)
    vol = vol / gridding_correction(box_size, size, device)
    return soft_mask_outside_sphere(vol, mask_radius)
