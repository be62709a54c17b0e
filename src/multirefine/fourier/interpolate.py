"""Trilinear sampling of, and splatting into, a half (rfft) 3-D Fourier volume.

A *half volume* holds the transform of a real map on an oversampled (padded) grid of
``P = pad * D`` voxels per axis: shape ``(..., P, P, P//2+1)``, indexed ``[z, y, x]``
with ``z`` and ``y`` *centred* (frequency ``k`` at index ``k + P//2``) and ``x = 0 ..
P//2`` at index ``x``. Only ``x >= 0`` is stored; a point with ``x < 0`` is read as the
complex conjugate of the point at ``-k`` (Friedel symmetry of a real map's transform).

Coordinates are ``(..., 3)`` in ``(x, y, z)`` order, in voxels of the padded grid.
Trilinear interpolation in Fourier space multiplies the real-space map by
``sinc^2`` of the padded box coordinate along each axis; :func:`gridding_correction`
returns that factor so callers can divide it out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "gridding_correction",
    "hermitian_symmetrise_x0",
    "sample_half_volume",
    "splat_half_volume",
]


def _flip_to_half(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points with ``x < 0`` replaced by ``-k``; returns (coords, flipped mask)."""
    flipped = coords[..., 0] < 0
    coords = torch.where(flipped[..., None], -coords, coords)
    return coords, flipped


def _cpu_parts(n_points: int, device: torch.device) -> int:
    """How many batch entries to split ``n_points`` samples into (one per CPU thread)."""
    if device.type != "cpu" or n_points < 2**16:
        return 1
    return max(1, min(torch.get_num_threads(), n_points // 2**15))


def sample_half_volume(volume_ft: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a half volume at arbitrary frequencies.

    ``volume_ft`` ``(..., P, P, P//2+1)`` complex (or real, e.g. weights: then no
    conjugation is applied); ``coords`` ``(M..., 3)`` -> ``(..., M...)``.
    Points outside the grid read as zero.
    """
    size = volume_ft.shape[-3]
    half = volume_ft.shape[-1]
    batch_shape = volume_ft.shape[:-3]
    point_shape = coords.shape[:-1]
    points = coords.reshape(-1, 3).to(torch.float32)
    n_points = points.shape[0]
    # Friedel: a point with x < 0 is read at -k and conjugated.
    sign = torch.where(points[:, 0] < 0, -1.0, 1.0)
    is_complex = volume_ft.is_complex()
    vol = volume_ft.reshape((-1,) + volume_ft.shape[-3:])
    if is_complex:
        vol = torch.view_as_real(vol).permute(0, 4, 1, 2, 3).reshape(-1, size, size, half)
    channels = vol[None]  # (1, C, P, P, Ph)
    # grid_sample, align_corners=True: -1 -> index 0, +1 -> index size-1; grid is (x, y, z),
    # made by one affine map of the flipped points.
    scale = torch.tensor([2 / (half - 1), 2 / (size - 1), 2 / (size - 1)], device=points.device)
    centre = 2 * (size // 2) / (size - 1) - 1
    offset = torch.tensor([-1.0, centre, centre], device=points.device)
    grid = torch.addcmul(offset, points * sign[:, None], scale)
    # CPU grid_sample runs one thread per batch entry: split the points over the threads.
    parts = _cpu_parts(n_points, channels.device)
    grid = F.pad(grid, (0, 0, 0, (-n_points) % parts)).reshape(parts, 1, 1, -1, 3)
    out = F.grid_sample(
        channels.expand(parts, -1, -1, -1, -1), grid.to(channels.dtype),
        mode="bilinear", padding_mode="zeros", align_corners=True,
    )[:, :, 0, 0]  # (parts, C, M / parts)
    out = out.permute(1, 0, 2).reshape(out.shape[1], -1)[:, :n_points]  # (C, M)
    if is_complex:
        out = out.reshape(-1, 2, n_points)
        out = torch.complex(out[:, 0], out[:, 1] * sign)
    return out.reshape(batch_shape + point_shape)


def splat_half_volume(
    data_acc: torch.Tensor,
    weight_acc: torch.Tensor,
    coords: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor,
) -> None:
    """Add ``values`` and ``weights`` at ``coords`` into half volumes, trilinearly, in place.

    ``data_acc`` ``(P, P, P//2+1)`` complex, ``weight_acc`` the same shape, real;
    ``coords`` ``(M, 3)``, ``values`` ``(M,)`` complex, ``weights`` ``(M,)`` real.
    Points with ``x < 0`` are added, conjugated, at ``-k``; call
    :func:`hermitian_symmetrise_x0` once after the last splat.
    """
    size = data_acc.shape[-3]
    half = data_acc.shape[-1]
    coords, flipped = _flip_to_half(coords.to(torch.float32))
    values = torch.where(flipped, values.conj(), values)
    pos = coords + torch.tensor([0.0, size // 2, size // 2], device=coords.device)
    base = torch.floor(pos)
    frac = pos - base
    base = base.long()
    data_flat = torch.view_as_real(data_acc).view(-1, 2)
    weight_flat = weight_acc.view(-1)
    values_ri = torch.view_as_real(values.to(torch.complex64))
    for corner in range(8):
        offset = torch.tensor(
            [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1], device=coords.device
        )
        idx = base + offset
        w = torch.prod(torch.where(offset.bool(), frac, 1 - frac), dim=-1)
        valid = (
            (idx[:, 0] >= 0) & (idx[:, 0] < half)
            & (idx[:, 1] >= 0) & (idx[:, 1] < size)
            & (idx[:, 2] >= 0) & (idx[:, 2] < size)
        )
        w = torch.where(valid, w, torch.zeros_like(w))
        flat = (idx[:, 2].clamp(0, size - 1) * size + idx[:, 1].clamp(0, size - 1)) * half + idx[
            :, 0
        ].clamp(0, half - 1)
        data_flat.index_add_(0, flat, values_ri * w[:, None])
        weight_flat.index_add_(0, flat, weights * w)


def hermitian_symmetrise_x0(volume_ft: torch.Tensor) -> torch.Tensor:
    """Complete the ``x = 0`` plane of a splatted half volume ``(..., P, P, P//2+1)``.

    Splatting stores each point on the ``x >= 0`` side only; the plane ``x = 0`` must also
    receive the conjugate of what landed at ``(0, -y, -z)``. Returns a new tensor.
    """
    size = volume_ft.shape[-3]
    mirror = (size - torch.arange(size, device=volume_ft.device)) % size
    plane = volume_ft[..., 0]
    mirrored = plane[..., mirror, :][..., :, mirror]
    out = volume_ft.clone()
    out[..., 0] = plane + (mirrored.conj() if volume_ft.is_complex() else mirrored)
    return out


def gridding_correction(box_size: int, padded_size: int, device=None) -> torch.Tensor:
    """``sinc^2`` apodisation of trilinear Fourier interpolation, ``(D, D, D)`` real-space.

    ``sinc(x / P)^2 * sinc(y / P)^2 * sinc(z / P)^2`` with ``x`` the distance in voxels from
    the box centre ``D//2`` and ``P`` the padded box. Divide maps by it.
    """
    r = (torch.arange(box_size, device=device, dtype=torch.float32) - box_size // 2) / padded_size
    s = torch.sinc(r) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]
