"""Solvent masks: the spheres as before, a user's mask checked, placed and resampled, and a
mask made from a map (multirefine.refine.solvent, multirefine.fourier.masks.mask_from_map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multirefine.errors import InputError
from multirefine.fourier.masks import mask_from_map, soft_sphere_mask
from multirefine.refine.solvent import (
    ModelMasks,
    check_mask,
    fit_mask,
    per_model,
    sphere_radius_px,
    union,
)


def test_without_a_mask_file_each_model_has_the_soft_sphere():
    masks = ModelMasks(32, 11.5)
    assert torch.equal(masks.of(1), soft_sphere_mask(32, 11.5, 3.0))
    assert torch.equal(masks.of(0, 20), soft_sphere_mask(20, 11.5 * 20 / 32, 3.0 * 20 / 32))
    assert sphere_radius_px(8.5, 32) == 11.5 and sphere_radius_px(8.5, 32, diameter_given=True) == 8.5
    assert sphere_radius_px(30.0, 32) == 14.0  # within the box


def test_a_mask_on_a_smaller_box_is_the_same_mask_at_coarser_pixels():
    """The model choice rebuilds maps on smaller boxes of the same extent: the user's mask there
    is the mask resampled (a soft sphere given as a file comes out as that sphere), in [0, 1]."""
    sphere = soft_sphere_mask(32, 10.0, 4.0).numpy()
    masks = ModelMasks(32, 0.0, [sphere, 1 - sphere])
    small = masks.of(0, 16)
    assert small.shape == (16, 16, 16) and float(small.min()) >= 0 and float(small.max()) <= 1
    assert float((small - soft_sphere_mask(16, 5.0, 2.0)).abs().max()) < 0.15
    assert torch.equal(masks.of(1), torch.from_numpy(1 - sphere))
    assert masks.of(0, 16) is masks.of(0, 16)  # resampled once per box size


@pytest.mark.parametrize(
    "values, expected",
    [(np.nan, "NaN or infinite"), (2.0, "values from 0 to 2"), (-0.5, "values from -0.5 to 1"), (None, "every voxel is 0"),
     ("faint", "its largest value is 0.3")],
)
def test_a_file_that_is_not_a_mask_is_refused_by_name(values, expected):
    volume = soft_sphere_mask(16, 5.0).numpy()
    if values is None:
        volume = np.zeros_like(volume)
    elif values == "faint":
        volume = 0.3 * volume
    else:
        volume[2, 3, 4] = values
    with pytest.raises(InputError, match=expected) as error:
        check_mask(volume, "bad_mask.mrc")
    assert str(error.value).startswith("bad_mask.mrc: ")


def test_a_mask_is_placed_on_the_particles_grid_like_a_starting_map():
    """A mask of 16 px at 2 Å/px for particles of 32 px at 1 Å/px: resampled to 32 px, the same
    sphere in Å; one that lies wholly outside the particles' box is refused."""
    coarse = soft_sphere_mask(16, 5.0, 2.0).numpy()
    placed = fit_mask(coarse, 2.0, 1.0, 32, "m.mrc")
    assert placed.shape == (32, 32, 32) and placed.min() >= 0 and placed.max() <= 1
    assert np.abs(placed - soft_sphere_mask(32, 10.0, 4.0).numpy()).max() < 0.15
    corner = np.zeros((64, 64, 64), np.float32)
    corner[:4, :4, :4] = 1
    with pytest.raises(InputError, match="nothing of the mask is left within the particles' box"):
        fit_mask(corner, 1.0, 1.0, 32, "corner.mrc")


def test_one_mask_serves_every_model_and_a_consensus_takes_their_union():
    a, b = np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 4), np.float32)
    a[1, 1, 1], b[2, 2, 2] = 1, 0.5
    assert [m is a for m in per_model([a], 3)] == [True, True, True]
    with pytest.raises(InputError, match="3 masks for 2 models"):
        per_model([a, b, a], 2)
    joined = union([a, b])
    assert joined[1, 1, 1] == 1 and joined[2, 2, 2] == 0.5 and joined.sum() == 1.5
    assert per_model(None, 2) is None and union(None) is None


def test_a_mask_made_from_a_map_holds_it_with_a_soft_edge(atoms_map):
    """relion_mask_create's recipe: 1 over the thresholded map grown by ``extend`` px, a
    raised cosine over ``soft`` px beyond, 0 further out; nothing wraps round the box."""
    volume = torch.from_numpy(atoms_map)
    threshold = 0.1 * float(volume.max())
    mask = mask_from_map(volume, threshold, extend_px=2.0, soft_px=3.0)
    assert torch.all(mask[volume > threshold] == 1) and float(mask.min()) == 0
    assert len(torch.unique(mask)) == 5  # 0, three steps of the edge, 1
    ball = soft_sphere_mask(32, 6.0, 0.0)  # 1 within 6 px of the centre
    mask = mask_from_map(ball, 0.5, extend_px=2.0, soft_px=3.0)
    c = torch.arange(32) - 16
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    # grown by 2 px (on the lattice, so to within a voxel), an edge of 3 beyond, nothing further
    assert torch.all(mask[r <= 7] == 1) and torch.all(mask[r > 8 + 3] == 0)
    shell = (r > 9) & (r <= 10)
    assert float(mask[shell].max()) <= 0.5 and float(mask[(r > 8) & (r <= 9)].min()) > 0
    edge = torch.zeros((16, 16, 16))  # a region at the box's edge is cut there, not wrapped round
    edge[0, 8, 8] = 1
    cut = mask_from_map(edge, 0.5, 1.0, 2.0)
    assert float(cut[-3:].max()) == 0 and float(cut[0, 8, 8]) == 1
