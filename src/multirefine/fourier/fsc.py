"""Fourier shell correlation and resolution.

Shell ``s`` holds the frequencies with ``round(|k|) = s`` (cycles per box), ``s = 0 ..
D//2``; shell ``s`` is at ``s / (D * pixel_size)`` 1/Å. Sums run over the half (rfft)
volume, each voxel with ``kx > 0`` counted twice for its Friedel mate, which gives the same
result as the full transform.
"""

from __future__ import annotations

import numpy as np
import torch

from multirefine.fourier.fft import frequency_grid_3d, irfftn3_centered, rfftn3_centered

__all__ = [
    "fourier_shell_correlation",
    "masked_fsc_corrected",
    "resolution_at_threshold",
    "shell_frequencies",
    "shell_index_3d",
]


def shell_index_3d(box_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell index ``(D, D, D//2+1)`` int64 and Friedel multiplicity (1 at ``kx = 0``, else 2)."""
    kx, ky, kz = frequency_grid_3d(box_size, device=device)
    shells = torch.round(torch.sqrt(kx**2 + ky**2 + kz**2)).long()
    multiplicity = torch.where(kx == 0, 1.0, 2.0)
    if box_size % 2 == 0:
        multiplicity = torch.where(kx == box_size // 2, 1.0, multiplicity)
    return shells, multiplicity


def fourier_shell_correlation(map_a: torch.Tensor, map_b: torch.Tensor) -> torch.Tensor:
    """FSC of maps ``(..., D, D, D)`` -> ``(..., D//2+1)`` float64 (shell 0 .. D//2)."""
    box = map_a.shape[-1]
    fa = rfftn3_centered(map_a.to(torch.float64))
    fb = rfftn3_centered(map_b.to(torch.float64))
    shells, mult = shell_index_3d(box, device=fa.device)
    n = box // 2 + 1
    inside = shells < n
    idx = shells[inside]
    mult = mult.to(torch.float64)[inside]

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        values = values[..., inside] * mult
        out = torch.zeros(values.shape[:-1] + (n,), dtype=torch.float64, device=values.device)
        return out.index_add_(-1, idx, values)

    cross = shell_sum((fa * fb.conj()).real)
    power_a = shell_sum(fa.abs() ** 2)
    power_b = shell_sum(fb.abs() ** 2)
    return cross / torch.sqrt(power_a * power_b).clamp(min=1e-300)


def shell_frequencies(box_size: int, pixel_size_angstrom: float) -> np.ndarray:
    """Spatial frequency (1/Å) of shells ``0 .. D//2``."""
    return np.arange(box_size // 2 + 1) / (box_size * pixel_size_angstrom)


def resolution_at_threshold(
    fsc: np.ndarray | torch.Tensor, pixel_size_angstrom: float, threshold: float = 0.143
) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (interpolated).

    ``fsc`` ``(D//2+1,)`` from :func:`fourier_shell_correlation`. If it never falls below,
    the Nyquist resolution ``2 * pixel_size`` is returned.
    """
    curve = np.asarray(fsc, dtype=np.float64)
    box = 2 * (len(curve) - 1)
    freqs = shell_frequencies(box, pixel_size_angstrom)
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        return 2.0 * pixel_size_angstrom
    i = below[0] + 1  # first shell below; interpolate between i-1 and i
    f0, f1, c0, c1 = freqs[i - 1], freqs[i], curve[i - 1], curve[i]
    freq = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(1.0 / freq) if freq > 0 else float("inf")


def _phases_randomised(volume: torch.Tensor, from_shell: int, generator: torch.Generator) -> torch.Tensor:
    """``volume`` ``(D, D, D)`` with the phases of shells ``>= from_shell`` drawn at random
    (amplitudes kept; real again by taking the real part of the Hermitian half's inverse)."""
    box = volume.shape[-1]
    ft = rfftn3_centered(volume.to(torch.float64))
    shells, _ = shell_index_3d(box, device=ft.device)
    phase = torch.rand(ft.shape, generator=generator, dtype=torch.float64) * (2 * np.pi)
    randomised = torch.where(shells >= from_shell, ft.abs() * torch.exp(1j * phase), ft)
    return irfftn3_centered(randomised, box)


def masked_fsc_corrected(half_a: torch.Tensor, half_b: torch.Tensor, mask: torch.Tensor, seed: int = 0,
                         threshold: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """The FSC of two half maps ``(D, D, D)`` within a soft ``mask``, corrected for what the mask
    correlates by itself (RELION's relion_postprocess, Chen et al. 2013): beyond the first shell
    where the unmasked FSC falls below ``threshold``, both halves' phases are randomised, masked
    the same way, and ``FSC_true = (FSC_masked - FSC_randomised) / (1 - FSC_randomised)``.
    Returns ``(corrected, masked)`` ``(D//2+1,)`` each."""
    unmasked = fourier_shell_correlation(half_a, half_b)
    masked = fourier_shell_correlation(half_a * mask, half_b * mask)
    below = torch.nonzero(unmasked[1:] < threshold)
    from_shell = int(below[0]) + 1 if len(below) else len(unmasked)
    if from_shell >= len(unmasked) - 1:  # no shell to randomise: nothing to correct
        return masked, masked
    generator = torch.Generator().manual_seed(seed)
    random_a = _phases_randomised(half_a, from_shell, generator)
    random_b = _phases_randomised(half_b, from_shell, generator)
    randomised = fourier_shell_correlation(random_a * mask, random_b * mask)
    corrected = masked.clone()
    beyond = torch.arange(len(masked)) >= from_shell
    corrected[beyond] = (masked[beyond] - randomised[beyond]) / (1 - randomised[beyond]).clamp(min=1e-6)
    return corrected, masked
