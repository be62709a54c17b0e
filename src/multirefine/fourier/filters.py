"""Fourier filters for maps and images.

Resolutions are in Å and turned into cycles per box with the pixel size; a cosine edge
``edge_shells`` shells wide avoids ringing (RELION's ``--lowpass`` uses the same shape).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from multirefine.fourier.fft import (
    frequency_grid_2d,
    frequency_grid_3d,
    irfftn3_centered,
    rfftn3_centered,
)

__all__ = [
    "cosine_lowpass_profile",
    "filter_volume_by_shell",
    "fsc_weighting",
    "lowpass_images_ft",
    "lowpass_volume",
]


def cosine_lowpass_profile(radius: torch.Tensor, cutoff: float, edge: float) -> torch.Tensor:
    """1 below ``cutoff - edge/2``, 0 above ``cutoff + edge/2``, raised cosine between."""
    if edge <= 0:
        return (radius <= cutoff).to(torch.float32)
    t = ((radius - (cutoff - edge / 2)) / edge).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(torch.float32)


def lowpass_volume(
    volume: torch.Tensor, resolution_angstrom: float, pixel_size_angstrom: float, edge_shells: float = 2.0
) -> torch.Tensor:
    """Low-pass maps ``(..., D, D, D)`` to ``resolution_angstrom`` with a cosine edge."""
    box = volume.shape[-1]
    kx, ky, kz = frequency_grid_3d(box, device=volume.device)
    radius = torch.sqrt(kx**2 + ky**2 + kz**2)
    cutoff = box * pixel_size_angstrom / resolution_angstrom
    ft = rfftn3_centered(volume.to(torch.float32)) * cosine_lowpass_profile(radius, cutoff, edge_shells)
    return irfftn3_centered(ft, box)


def lowpass_images_ft(
    images_ft: torch.Tensor, resolution_angstrom: float, pixel_size_angstrom: float, edge_shells: float = 2.0
) -> torch.Tensor:
    """Low-pass image transforms ``(..., D, D//2+1)`` to ``resolution_angstrom``."""
    box = images_ft.shape[-2]
    kx, ky = frequency_grid_2d(box, device=images_ft.device)
    cutoff = box * pixel_size_angstrom / resolution_angstrom
    return images_ft * cosine_lowpass_profile(torch.sqrt(kx**2 + ky**2), cutoff, edge_shells)


def filter_volume_by_shell(volume: torch.Tensor, profile: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Multiply each shell ``s`` of a map ``(D, D, D)`` by ``profile[s]`` (``D//2+1`` values, linear between shells)."""
    box = volume.shape[-1]
    kx, ky, kz = frequency_grid_3d(box, device=volume.device)
    radius = torch.sqrt(kx**2 + ky**2 + kz**2)
    prof = torch.as_tensor(np.asarray(profile), dtype=torch.float32, device=volume.device)
    lo = radius.floor().long().clamp(max=len(prof) - 1)
    hi = (lo + 1).clamp(max=len(prof) - 1)
    t = (radius - lo).clamp(0, 1)
    gain = torch.where(radius < len(prof) - 0.5, prof[lo] * (1 - t) + prof[hi] * t, 0.0)
    return irfftn3_centered(rfftn3_centered(volume.to(torch.float32)) * gain, box)


def fsc_weighting(fsc: np.ndarray) -> np.ndarray:
    """Rosenthal & Henderson's ``C_ref = sqrt(2 FSC / (1 + FSC))`` per shell (0 where FSC <= 0)."""
    f = np.clip(np.asarray(fsc, dtype=np.float64), 0, 1)
    return np.sqrt(2 * f / (1 + f))
