"""Post-processing: translation and rotation alignment with a hand check, mass normalisation."""

import numpy as np
import pytest
import torch
from helpers import random_atoms_map

from multirefine.geometry.euler import euler_to_matrix
from multirefine.refine.postprocess import (
    ANGSTROM3_PER_DALTON,
    align_translation,
    align_volume,
    normalize_by_mass,
    rotate_volume,
)


def test_align_translation_recovers_a_shift(atoms_map):
    shifted = np.roll(atoms_map, (2, -1, 3), axis=(0, 1, 2))  # z, y, x
    moved, shift = align_translation(shifted, atoms_map)
    np.testing.assert_allclose(shift, [-3, 1, -2], atol=0.05)
    np.testing.assert_allclose(moved, atoms_map, atol=1e-4 * np.abs(atoms_map).max())


def test_align_volume_finds_rotation_and_hand():
    reference = random_atoms_map(24, 120, seed=5, spread_px=3.0)
    rotation = torch.as_tensor(euler_to_matrix(np.array(40.0), np.array(70.0), np.array(-100.0)), dtype=torch.float32)
    moving = rotate_volume(torch.from_numpy(reference), rotation[None])[0].numpy()[::-1].copy()  # rotated and mirrored
    aligned, alignment = align_volume(moving, reference, 1.0, resolution_angstrom=3.0)
    assert alignment.flipped
    assert alignment.score > alignment.identity_score + 0.15
    assert np.corrcoef(aligned.ravel(), reference.ravel())[0, 1] > 0.9


def test_normalize_by_mass_threshold_one_encloses_the_mass(atoms_map):
    mass_kda = 5.0
    scaled = normalize_by_mass(atoms_map, mass_kda, 1.0)
    expected_voxels = mass_kda * 1000 * ANGSTROM3_PER_DALTON
    assert (scaled > 1).sum() == pytest.approx(expected_voxels, abs=2)
