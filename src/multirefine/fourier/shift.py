"""Translations in Fourier space.

``shift_images_ft(ft, shift_px)`` moves image content by ``+shift_px = (dx, dy)`` pixels:
the result is the transform of ``image(x - dx, y - dy)``. RELION's ``rlnOriginXAngst`` is
minus the particle's displacement from the box centre, so an image is centred by
shifting it by ``+origin / pixel_size``.
"""

from __future__ import annotations

import math

import torch

from multirefine.fourier.fft import frequency_grid_2d

__all__ = ["phase_ramp_2d", "shift_images_ft"]


def phase_ramp_2d(shift_px: torch.Tensor, box_size: int) -> torch.Tensor:
    """``exp(-2 pi i (kx dx + ky dy) / D)``: shifts ``(..., 2)`` -> ``(..., D, D//2+1)`` complex64."""
    kx, ky = frequency_grid_2d(box_size, device=shift_px.device, dtype=torch.float32)
    dx = shift_px[..., 0, None, None].to(torch.float32)
    dy = shift_px[..., 1, None, None].to(torch.float32)
    phase = (-2 * math.pi / box_size) * (kx * dx + ky * dy)
    return torch.polar(torch.ones_like(phase), phase)


def shift_images_ft(ft: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Translate images given as rfft ``(..., D, D//2+1)`` by ``shift_px`` ``(..., 2)``."""
    return ft * phase_ramp_2d(shift_px, ft.shape[-2])
