"""Real-space masks about the box centre ``D//2`` (the origin of :mod:`multirefine.fourier.fft`)."""

from __future__ import annotations

import math

import torch

__all__ = ["soft_sphere_mask"]


def soft_sphere_mask(
    box: int, radius_px: float, edge_px: float = 3.0, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(D, D, D)``: 1 within ``radius_px`` of the centre, a raised cosine to 0 over ``edge_px``."""
    c = torch.arange(box, device=device, dtype=dtype) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    t = ((r - radius_px) / edge_px).clamp(0, 1) if edge_px > 0 else (r > radius_px).to(dtype)
    return 0.5 * (1 + torch.cos(math.pi * t))
