"""Fourier cropping and padding (resampling by changing the box in Fourier space).

Layout as in :mod:`multirefine.fourier.fft` (rfft, plain FFT order). Cropping keeps the
frequencies ``|ky| < d/2``, ``kx <= d/2`` of a ``D`` box in a ``d`` box: the pixel size
grows by ``D / d``. Values are DFT sums, so they are carried over unchanged; the real-space
image of a cropped transform is scaled by ``(d / D)^2`` (``^3`` for maps) relative to a
resampling of the original, which :func:`fourier_crop_images` and
:func:`resample_volume` undo so that real-space densities keep their values.
Cropping to an even box zeroes the new Nyquist row/column (it has no Friedel partner
there), so that padding and cropping again gives the same transform.
"""

from __future__ import annotations

import torch

from multirefine.fourier.fft import (
    irfft2_centered,
    irfftn3_centered,
    rfft2_centered,
    rfftn3_centered,
)

__all__ = ["crop_ft_2d", "crop_ft_3d", "fourier_crop_images", "pad_ft_2d", "pad_ft_3d", "resample_volume"]


def _rows(size_from: int, size_to: int) -> torch.Tensor:
    """Indices (plain FFT order) of the frequencies a box of ``size_to`` shares with ``size_from``."""
    n = min(size_from, size_to)
    k = torch.fft.fftfreq(n, d=1.0 / n).long()
    return torch.where(k < 0, k + size_from, k)


def crop_ft_2d(ft: torch.Tensor, new_size: int) -> torch.Tensor:
    """``(..., D, D//2+1)`` -> ``(..., d, d//2+1)`` with ``d <= D``."""
    size = ft.shape[-2]
    rows = _rows(size, new_size).to(ft.device)
    out = ft[..., rows, : new_size // 2 + 1].clone()
    if new_size % 2 == 0 and new_size < size:
        out[..., new_size // 2, :] = 0
        out[..., :, new_size // 2] = 0
    return out


def pad_ft_2d(ft: torch.Tensor, new_size: int) -> torch.Tensor:
    """``(..., d, d//2+1)`` -> ``(..., D, D//2+1)`` with ``D >= d``, zeros outside."""
    size = ft.shape[-2]
    out = ft.new_zeros(ft.shape[:-2] + (new_size, new_size // 2 + 1))
    rows = _rows(new_size, size).to(ft.device)
    out[..., rows, : size // 2 + 1] = ft
    return out


def crop_ft_3d(ft: torch.Tensor, new_size: int) -> torch.Tensor:
    """``(..., D, D, D//2+1)`` -> ``(..., d, d, d//2+1)`` with ``d <= D``."""
    size = ft.shape[-3]
    rows = _rows(size, new_size).to(ft.device)
    out = ft[..., rows, :, :][..., :, rows, : new_size // 2 + 1].clone()
    if new_size % 2 == 0 and new_size < size:
        out[..., new_size // 2, :, :] = 0
        out[..., :, new_size // 2, :] = 0
        out[..., :, :, new_size // 2] = 0
    return out


def pad_ft_3d(ft: torch.Tensor, new_size: int) -> torch.Tensor:
    """``(..., d, d, d//2+1)`` -> ``(..., D, D, D//2+1)`` with ``D >= d``, zeros outside."""
    size = ft.shape[-3]
    out = ft.new_zeros(ft.shape[:-3] + (new_size, new_size, new_size // 2 + 1))
    rows = _rows(new_size, size).to(ft.device)
    out[..., rows[:, None], rows[None, :], : size // 2 + 1] = ft
    return out


def fourier_crop_images(images: torch.Tensor, new_size: int) -> torch.Tensor:
    """Resample real images ``(..., D, D)`` to ``(..., d, d)`` by Fourier cropping or padding."""
    size = images.shape[-1]
    ft = rfft2_centered(images)
    ft = crop_ft_2d(ft, new_size) if new_size <= size else pad_ft_2d(ft, new_size)
    return irfft2_centered(ft, new_size) * (new_size / size) ** 2


def resample_volume(volume: torch.Tensor, new_size: int) -> torch.Tensor:
    """Resample maps ``(..., D, D, D)`` to ``(..., d, d, d)`` by Fourier cropping or padding."""
    size = volume.shape[-1]
    ft = rfftn3_centered(volume)
    ft = crop_ft_3d(ft, new_size) if new_size <= size else pad_ft_3d(ft, new_size)
    return irfftn3_centered(ft, new_size) * (new_size / size) ** 3
