"""FFT conventions: real-space origin, frequency order, half (rfft) layout.

One convention for the whole project:

* Real space: images ``(..., D, D)`` indexed ``[y, x]``, maps ``(..., D, D, D)`` indexed
  ``[z, y, x]``; the origin (the box centre, the rotation centre) is voxel ``D // 2``
  on each axis, as in RELION.
* Fourier space: ``rfft`` layout, last axis ``kx = 0 .. D // 2``, other axes in the plain
  FFT order (``torch.fft.fftfreq``), the transform taken with the origin moved to index 0
  (``ifftshift`` before the FFT), so a centred, symmetric object has a real transform.
  Values are plain DFT sums (no normalisation forward; ``1 / N`` on the way back).
* Frequencies are in cycles per box (``-D/2 .. D/2``); divide by ``D * pixel_size`` for 1/Å.
"""

from __future__ import annotations

import torch

__all__ = [
    "frequency_grid_2d",
    "frequency_grid_3d",
    "irfft2_centered",
    "irfftn3_centered",
    "radial_index_2d",
    "rfft2_centered",
    "rfftn3_centered",
]


def rfft2_centered(images: torch.Tensor) -> torch.Tensor:
    """``(..., D, D)`` real, origin at ``D//2`` -> ``(..., D, D//2+1)`` complex."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


def irfft2_centered(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfft2_centered`: ``(..., D, D//2+1)`` -> ``(..., D, D)``."""
    images = torch.fft.irfft2(ft, s=(box_size, box_size))
    return torch.fft.fftshift(images, dim=(-2, -1))


def rfftn3_centered(volumes: torch.Tensor) -> torch.Tensor:
    """``(..., D, D, D)`` real, origin at ``D//2`` -> ``(..., D, D, D//2+1)`` complex."""
    return torch.fft.rfftn(torch.fft.ifftshift(volumes, dim=(-3, -2, -1)), dim=(-3, -2, -1))


def irfftn3_centered(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfftn3_centered`: ``(..., D, D, D//2+1)`` -> ``(..., D, D, D)``."""
    vol = torch.fft.irfftn(ft, s=(box_size,) * 3, dim=(-3, -2, -1))
    return torch.fft.fftshift(vol, dim=(-3, -2, -1))


def frequency_grid_2d(
    box_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kx, ky)``, each ``(D, D//2+1)``, in cycles per box, rfft layout."""
    ky = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    return grid_x, grid_y


def frequency_grid_3d(
    box_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kx, ky, kz)``, each ``(D, D, D//2+1)``, in cycles per box, rfft layout."""
    k = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    grid_z, grid_y, grid_x = torch.meshgrid(k, k, kx, indexing="ij")
    return grid_x, grid_y, grid_z


def radial_index_2d(box_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer shell index ``round(|k|)`` per rfft pixel, ``(D, D//2+1)`` int64."""
    kx, ky = frequency_grid_2d(box_size, device=device)
    return torch.round(torch.sqrt(kx**2 + ky**2)).long()
