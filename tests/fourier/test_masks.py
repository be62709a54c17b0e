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


def test_normalise_background_takes_out_planes_and_scales_the_noise():
    """An offset and a ramp under noise of SD 3 beyond the radius: gone, the noise at SD 1,
    and what lies within the radius kept (less the plane, over the SD)."""
    import numpy as np

    from multirefine.fourier.masks import normalise_background

    rng = np.random.default_rng(0)
    box, n = 32, 20
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    offset, rx, ry = rng.normal(0, 5, (3, n))
    planes = offset[:, None, None] + rx[:, None, None] * xx / box + ry[:, None, None] * yy / box
    particle = 10.0 * (xx**2 + yy**2 < 6**2)
    noise = rng.normal(0, 3.0, (n, box, box))
    out = normalise_background((planes + noise + particle).astype(np.float32), 10.0)
    outside = xx**2 + yy**2 > 10**2
    assert np.allclose(out[:, outside].std(1), 1.0, atol=1e-5)
    assert np.abs(out[:, outside].mean(1)).max() < 1e-5
    expected = (noise + particle) / 3.0
    assert np.abs(out - expected).mean() < 0.1  # the plane fitted through the noise: close to the true one
    assert np.array_equal(normalise_background(noise[:1].astype(np.float32), 40.0), noise[:1].astype(np.float32))
