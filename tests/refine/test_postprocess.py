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
    mutual_fsc,
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


def test_mutual_fsc_of_every_pair(atoms_map, tmp_path):
    """Symmetric, 1 on the diagonal; a map against itself plus a little noise stays near 1,
    against unrelated noise near 0. The FSC figure draws the pairs."""
    from multirefine.report.plots import plot_fsc

    rng = np.random.default_rng(0)
    scale = atoms_map.std()
    maps = [atoms_map, atoms_map + 0.05 * scale * rng.standard_normal(atoms_map.shape).astype(np.float32),
            scale * rng.standard_normal(atoms_map.shape).astype(np.float32)]
    fsc = mutual_fsc(maps)
    k, shells = len(maps), atoms_map.shape[-1] // 2 + 1
    assert fsc.shape == (k, k, shells)
    np.testing.assert_allclose(fsc, fsc.transpose(1, 0, 2))
    np.testing.assert_allclose(fsc[np.arange(k), np.arange(k)], 1.0)
    assert fsc[0, 1, 1 : shells // 2].min() > 0.9
    assert np.abs(fsc[0, 2, 2:]).mean() < 0.1
    freq = np.arange(shells) / (shells * 2.0)
    half = [np.ones(shells)] * k
    plot_fsc({"shell_frequency_per_angstrom": freq, "half_map_fsc": half, "mutual_fsc": fsc}, tmp_path / "fsc.png")
    assert (tmp_path / "fsc.png").stat().st_size > 0


def test_starting_maps_aligned_only_where_that_fits_clearly_better():
    """The driver's rule: a starting map from another file that is a turned copy of map 1's
    molecule is turned onto it; an unrelated map, which any turn fits about as badly, stays."""
    from multirefine.refine.seeding import align_to_first

    apix = 4.0  # the alignment runs at 15 Å: a 24 box at 4 Å/px
    first = random_atoms_map(24, 120, seed=5, spread_px=3.0)
    rotation = torch.as_tensor(euler_to_matrix(np.array(0.0), np.array(90.0), np.array(0.0)), dtype=torch.float32)
    turned = rotate_volume(torch.from_numpy(first), rotation[None])[0].numpy()
    unrelated = random_atoms_map(24, 120, seed=6, spread_px=3.0)
    out = align_to_first([first, turned, unrelated], apix, 15.0)
    np.testing.assert_array_equal(out[0], first)
    assert np.corrcoef(out[1].ravel(), first.ravel())[0, 1] > 0.9 > np.corrcoef(turned.ravel(), first.ravel())[0, 1]
    np.testing.assert_array_equal(out[2], unrelated)
