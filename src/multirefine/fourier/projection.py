"""Central-slice projection of maps (the Fourier slice theorem).

The 2-D transform of a particle's projection image is the central slice of the map's
3-D transform through the plane spanned by rows 0 and 1 of the pose matrix ``A``
(:mod:`multirefine.geometry.euler`): image frequency ``(kx, ky)`` reads the map at
``kx * A[0] + ky * A[1]``. Maps are Fourier transformed once, zero-padded by ``pad``
(2, as RELION) and gridding-corrected, into a half volume
(:mod:`multirefine.fourier.interpolate`); slices come out in the image layout of
:func:`multirefine.fourier.fft.rfft2_centered`, so ``irfft2_centered(slice)`` is the
projection image (sum of voxels along the beam).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multirefine.fourier.fft import frequency_grid_2d
from multirefine.fourier.interpolate import gridding_correction, sample_half_volume

__all__ = ["extract_central_slices", "pad_volume_ft", "prepare_volume_ft", "slice_coordinates"]


def prepare_volume_ft(volumes: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Maps ``(..., D, D, D)`` -> padded, gridding-corrected half volumes ``(..., P, P, P//2+1)``."""
    size = volumes.shape[-1]
    padded = pad * size
    corrected = volumes.to(torch.float32) / gridding_correction(size, padded, volumes.device)
    before = padded // 2 - size // 2
    after = padded - size - before
    vol = F.pad(corrected, (before, after) * 3)
    ft = torch.fft.rfftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    return torch.fft.fftshift(ft, dim=(-3, -2))


def pad_volume_ft(volume_ft: torch.Tensor, size: int) -> torch.Tensor:
    """A prepared half volume ``(..., p, p, p//2+1)`` in a larger one ``(..., P, P, P//2+1)``,
    zero outside: the same samples (of a map on a coarser pixel, made with
    :meth:`multirefine.fourier.reconstruction.FourierAccumulator.cropped`) for projection at
    the original box."""
    small = volume_ft.shape[-3]
    if small == size:
        return volume_ft
    out = volume_ft.new_zeros(volume_ft.shape[:-3] + (size, size, size // 2 + 1))
    rows = slice(size // 2 - small // 2, size // 2 - small // 2 + small)
    out[..., rows, rows, : small // 2 + 1] = volume_ft
    return out


def slice_coordinates(
    rotations: torch.Tensor, box_size: int, pad: int = 2, max_radius: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D padded-grid coordinates of every rfft image pixel for each pose.

    ``rotations`` ``(n, 3, 3)`` -> coordinates ``(n, D, D//2+1, 3)`` and a mask
    ``(D, D//2+1)`` of the pixels with ``|k| < max_radius`` (default ``D/2``).
    """
    kx, ky = frequency_grid_2d(box_size, device=rotations.device)
    radius = box_size / 2 if max_radius is None else max_radius
    mask = kx**2 + ky**2 < radius**2
    rot = rotations.to(torch.float32)
    coords = kx[..., None] * rot[:, None, None, 0, :] + ky[..., None] * rot[:, None, None, 1, :]
    return coords * pad, mask


def extract_central_slices(
    volume_ft: torch.Tensor,
    rotations: torch.Tensor,
    box_size: int,
    pad: int = 2,
    max_radius: float | None = None,
) -> torch.Tensor:
    """Central slices of half volumes ``(..., P, P, P//2+1)`` for poses ``(n, 3, 3)``.

    Returns ``(..., n, D, D//2+1)`` complex64, zero at ``|k| >= max_radius`` (default
    ``D/2``).
    """
    coords, mask = slice_coordinates(rotations, box_size, pad, max_radius)
    slices = sample_half_volume(volume_ft, coords)
    return slices * mask
