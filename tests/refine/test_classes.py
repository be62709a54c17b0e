"""Class averages line up with the reference projection of their class."""

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.fft import irfft2_centered
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.refine.classes import class_averages, rotate_images


class ArrayStack:
    """The ParticleStack interface over images in memory (no CTF)."""

    def __init__(self, images, apix=1.0):
        self.images, self.box_size, self.pixel_size_angstrom, self.has_ctf = images, images.shape[-1], apix, False

    def __getitem__(self, rows):
        return self.images[rows]


def test_rotate_images_quarter_turn():
    image = torch.zeros(1, 16, 16)
    image[0, 8, 12] = 1.0  # x = +4 from the centre
    turned = rotate_images(image, torch.tensor([90.0]))
    # out(u) = in(R(-90) u): the pixel at x = +4 moves to y = +4.
    assert turned[0].argmax().item() == (8 + 4) * 16 + 8


def test_class_average_matches_reference_projection(atoms_map):
    stack, table, reference = _class_of_particles(atoms_map, n=12, psi_error_deg=0.0, shift_error_px=0.0, seed=0)
    averages, info = class_averages(stack, table, [np.array([30.0, 200.0])], [np.array([60.0, 120.0])], 1.0)
    assert len(averages) == 1 and info["mrParticleCount"].iloc[0] == 12 and info["rlnClassDistribution"].iloc[0] == 1
    assert np.corrcoef(averages[0].ravel(), reference.ravel())[0, 1] > 0.95


def _class_of_particles(atoms_map, n=24, psi_error_deg=3.0, shift_error_px=1.5, seed=3):
    """Particles of one direction (rot 30, tilt 60), their table, whose recorded psi and origin
    may be off by a few degrees / pixels, and the class's reference projection."""
    from multirefine.fourier.shift import shift_images_ft

    volume_ft = prepare_volume_ft(torch.from_numpy(atoms_map))
    rng = np.random.default_rng(seed)
    rot, tilt = np.full(n, 30.0), np.full(n, 60.0)
    psi = rng.uniform(-180, 180, n)
    shifts = rng.uniform(-2, 2, (n, 2))
    rotations = torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)
    slices = extract_central_slices(volume_ft, rotations, 32)
    images = irfft2_centered(shift_images_ft(slices, torch.as_tensor(-shifts, dtype=torch.float32)), 32).numpy()
    table = pd.DataFrame({"rlnClassNumber": 1, "rlnAngleRot": rot, "rlnAngleTilt": tilt,
                          "rlnAnglePsi": psi + rng.uniform(-psi_error_deg, psi_error_deg, n),
                          "rlnOriginXAngst": shifts[:, 0] + rng.uniform(-shift_error_px, shift_error_px, n),
                          "rlnOriginYAngst": shifts[:, 1] + rng.uniform(-shift_error_px, shift_error_px, n),
                          "mrSearchScore": 1.0})
    reference_pose = torch.as_tensor(euler_to_matrix(np.array([30.0]), np.array([60.0]), np.array([0.0])), dtype=torch.float32)
    reference = irfft2_centered(extract_central_slices(volume_ft, reference_pose, 32)[0], 32).numpy()
    return ArrayStack(images), table, reference


def test_classiter_realigns_particles_to_their_average(atoms_map):
    """Poses a few degrees and pixels off blur the first average; re-aligning every particle
    to the average (EMAN2's --classiter) sharpens it towards the reference projection."""
    stack, table, reference = _class_of_particles(atoms_map)
    grid = ([np.array([30.0])], [np.array([60.0])])
    corr = {}
    for rounds in (0, 2):
        averages, _ = class_averages(stack, table, *grid, 1.0, classiter=rounds, psi_range_deg=3.0, max_shift_px=2.0)
        corr[rounds] = np.corrcoef(averages[0].ravel(), reference.ravel())[0, 1]
    assert 1 - corr[2] < 0.5 * (1 - corr[0]), corr  # measured 0.976 -> 0.991


def test_weighted_entries_and_repeated_particles(atoms_map):
    """A particle listed twice (--sep 2) with weights 1/2 averages as if listed once."""
    stack, table, _ = _class_of_particles(atoms_map, psi_error_deg=0.0, shift_error_px=0.0)
    grid = ([np.array([30.0])], [np.array([60.0])])
    once, info_once = class_averages(stack, table, *grid, 1.0)
    twice, info_twice = class_averages(stack, pd.concat([table, table]), *grid, 1.0, weights=np.full(2 * len(table), 0.5))
    np.testing.assert_allclose(twice, once, atol=1e-5 * np.abs(once).max())
    assert info_twice["mrParticleCount"].iloc[0] == info_once["mrParticleCount"].iloc[0] == len(table)


def test_classkeep_keeps_the_best_fraction_of_each_class():
    """--classkeep 0.5: in each class the better-scoring half (rounded up), at least one."""
    from multirefine.refine.classes import _keep_best

    classes = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    score = np.array([0.1, 0.9, 0.5, 0.7, 3.0, 1.0, 2.0, -5.0])
    keep = _keep_best(classes, score, 0.5)
    np.testing.assert_array_equal(keep, [False, True, False, True, True, False, True, True])
    assert _keep_best(classes, score, 1.0).all()
