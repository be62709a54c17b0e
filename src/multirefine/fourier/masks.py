"""Real-space masks about the box centre ``D//2`` (the origin of :mod:`multirefine.fourier.fft`)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["flatten_solvent", "mask_from_map", "normalise_background", "soft_sphere_mask", "solvent_level"]


def soft_sphere_mask(
    box: int, radius_px: float, edge_px: float = 3.0, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(D, D, D)``: 1 within ``radius_px`` of the centre, a raised cosine to 0 over ``edge_px``."""
    c = torch.arange(box, device=device, dtype=dtype) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    t = ((r - radius_px) / edge_px).clamp(0, 1) if edge_px > 0 else (r > radius_px).to(dtype)
    return 0.5 * (1 + torch.cos(math.pi * t))


def solvent_level(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each map ``(..., D, D, D)`` where ``mask`` ``(D, D, D)`` is off (weighted by
    ``1 - mask``; 0 where the mask covers the whole box), shaped ``(..., 1, 1, 1)``."""
    outside = 1 - mask.to(volume)
    total = outside.sum()
    if float(total) == 0:
        return volume.new_zeros((*volume.shape[:-3], 1, 1, 1))
    return (outside * volume).sum(dim=(-3, -2, -1), keepdim=True) / total


def flatten_solvent(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``volume`` ``(D, D, D)`` less its solvent level, times ``mask``: the solvent is 0 and the
    mask's edge leaves no step, whatever constant the map holds.

    The level is :func:`solvent_level`. A map made from particles with an offset (not
    normalised to a zero background) holds that offset as a constant; masked as it is, it
    would become a sphere of that height, and its projections discs that no particle holds
    (measured: an offset of 3 noise sigmas in every image took the test set's accuracy from
    97 to 80 %).
    """
    return (volume - solvent_level(volume, mask)) * mask.to(volume)


def normalise_background(images: np.ndarray, radius_px: float) -> np.ndarray:
    """Images ``(n, D, D)`` less the plane fitted (least squares) to their pixels beyond
    ``radius_px`` of the centre, divided by those pixels' SD: the background at 0 with no
    ramp, the noise at unit variance (RELION's ``relion_preprocess --norm``, ramp removed).
    Where fewer than 10 pixels lie beyond the radius the images are returned as they are."""
    box = images.shape[-1]
    c = np.arange(box, dtype=np.float64) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    outside = xx**2 + yy**2 > radius_px**2
    if outside.sum() < 10:
        return images
    design = np.stack([np.ones(outside.sum()), xx[outside], yy[outside]], 1)  # (m, 3)
    values = images[:, outside].astype(np.float64).T  # (m, n)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)  # (3, n)
    plane = coef[0][:, None, None] + coef[1][:, None, None] * xx + coef[2][:, None, None] * yy
    out = images - plane
    sd = out[:, outside].std(axis=1)
    return (out / np.maximum(sd, 1e-12)[:, None, None]).astype(np.float32)


def _dilate(binary: torch.Tensor, radius_px: float) -> torch.Tensor:
    """``binary`` ``(D, D, D)`` grown by a ball of ``radius_px`` (FFT convolution, cyclic:
    pad the box by the radius first where the region may reach its edge)."""
    box = binary.shape[-1]
    c = torch.arange(box, dtype=torch.float64) - box // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    ball = torch.fft.ifftshift((r2 <= radius_px**2 + 1e-9).to(torch.float64))  # centred at voxel 0
    grown = torch.fft.irfftn(torch.fft.rfftn(binary.to(torch.float64)) * torch.fft.rfftn(ball), s=binary.shape)
    return grown > 0.5


def mask_from_map(volume: torch.Tensor, threshold: float, extend_px: float = 3.0, soft_px: float = 6.0) -> torch.Tensor:
    """A soft solvent mask ``(D, D, D)`` in [0, 1] from a map (relion_mask_create's recipe):
    1 where ``volume`` exceeds ``threshold``, grown by ``extend_px``, then a raised cosine from
    1 to 0 over ``soft_px`` beyond that, in whole-voxel steps of distance. What would grow
    beyond the box is cut off at its edge (never wrapped to the other side)."""
    box, steps = volume.shape[-1], math.ceil(soft_px)
    pad = math.ceil(extend_px) + steps + 1
    above = torch.nn.functional.pad((volume > threshold).to(torch.float64)[None, None], (pad,) * 6)[0, 0] > 0.5
    inside = _dilate(above, extend_px) if extend_px > 0 else above
    mask = inside.to(torch.float64)
    for step in range(1, steps + 1):  # each shell one voxel further out: its value on the cosine
        reached = _dilate(inside, step) & (mask == 0)
        mask[reached] = 0.5 * (1 + math.cos(math.pi * step / (steps + 1)))
    return mask[pad : pad + box, pad : pad + box, pad : pad + box].to(volume.dtype)
