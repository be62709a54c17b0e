"""Masks: the soft sphere, and solvent flattening that leaves no step whatever the map's level."""

from __future__ import annotations

import torch

from multirefine.fourier.masks import flatten_solvent, soft_sphere_mask


def test_soft_sphere_is_one_inside_zero_outside_and_smooth_between():
    mask = soft_sphere_mask(32, 8.0, 3.0)
    c = 16
    assert mask[c, c, c] == 1 and mask[c, c, c + 8] == 1
    assert mask[c, c, c + 11] == 0 and mask[0, 0, 0] == 0
    edge = mask[c, c, c + 8 : c + 12]
    assert torch.all(edge[1:] < edge[:-1])  # falls off monotonically over the edge


def test_flatten_solvent_removes_any_constant_and_leaves_the_solvent_at_zero():
    """A map plus a constant (particles with an offset) gives the same masked map; the solvent
    of a map whose particle sits on a level is 0, with no step at the mask's edge."""
    generator = torch.Generator().manual_seed(0)
    box, mask = 32, soft_sphere_mask(32, 8.0, 3.0)
    c = torch.arange(box, dtype=torch.float32) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    particle = torch.exp(-(r / 4) ** 2) + 0.01 * torch.randn(box, box, box, generator=generator)
    flat = flatten_solvent(particle, mask)
    torch.testing.assert_close(flatten_solvent(particle + 3.0, mask), flat, atol=1e-5, rtol=0)
    assert float(flat[mask == 0].abs().max()) == 0.0
    # Inside the mask the map is the particle on a level of (nearly) zero: the solvent's mean.
    solvent = (r > 10) & (mask > 0)  # inside the mask, beyond the particle
    assert abs(float(flatten_solvent(particle + 3.0, torch.ones_like(mask) * (r <= 12))[solvent].mean())) < 0.01
