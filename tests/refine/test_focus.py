"""Focused classification (multirefine.refine.focus): the model choice on one region, with the
models' common signal outside it subtracted from each particle at its pose.

At the particles' true poses: a focus mask that covers the box gives the plain score; models
that differ only outside the region score alike; and on particles whose states differ in a small
part (a tenth of the mass) while a larger part varies with them, the focused choice follows the
small part where the plain one follows the large. Summed over the poses near each particle's,
the score is the log-sum of each pose's likelihood, and the choice keeps what it has at the true
poses where the poses are off by several degrees."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_atoms_map

from multirefine.io.particles import open_particles
from multirefine.refine.batch import load_batch, origins_px_for_rows
from multirefine.refine.choice import LastReconstruction, choice_scores, leave_out_volumes
from multirefine.refine.scoring import make_band
from multirefine.refine.solvent import ModelMasks
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX, APIX = 32, 2.0
SUBUNIT, DISTRACTOR = (0, 0, 7), (0, 0, -7)  # voxel offsets from the centre (z, y, x)


def _blob(centre, sigma: float, mass: float) -> np.ndarray:
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    blob = np.exp(-r2 / (2 * sigma**2))
    return (mass * blob / blob.sum()).astype(np.float32)


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """A core, a subunit (a tenth of its mass) inside the focus region, a distractor (a third)
    outside it. Particles: the core alone (state 1) and core + subunit + distractor (state 2),
    SNR 0.5, with CTF."""
    core = random_atoms_map(BOX, 200, seed=4, spread_px=3.5)
    mass = float(core.clip(min=0).sum())
    subunit, distractor = _blob(SUBUNIT, 1.8, 0.1 * mass), _blob(DISTRACTOR, 2.2, 0.35 * mass)
    root = tmp_path_factory.mktemp("focus")
    params = SimulationParameters(n_particles=300, snr=0.5, fractions=[0.5, 0.5], pixel_size_angstrom=APIX, seed=5)
    simulate_dataset(root / "sim", [core, core + subunit + distractor], params)
    focus = ModelMasks(BOX, 0.0, [_blob(SUBUNIT, 3.0, 1.0) / _blob(SUBUNIT, 3.0, 1.0).max()])
    return core, subunit, distractor, focus, open_particles(root / "sim" / "truth.star")


def _scores(stack, maps, focus):
    """Each particle's choice score in every model at its true pose, with or without focus
    (the maps in the particles' units: divided by the simulation's noise sigma)."""
    sigma = json.loads((stack.path.parent / "simulation.json").read_text())["noise_sigma"]
    maps = [m / sigma for m in maps]
    last = LastReconstruction([None] * len(maps), [None] * len(maps), [m.astype(np.float32) for m in maps], [])
    band = make_band(BOX, BOX / 2 - 1)
    volumes = leave_out_volumes(last, 0, 0, [torch.eye(3)[None]] * len(maps), ModelMasks(BOX, 15.0), BOX / 2 - 1,
                                np.ones(len(maps)), "cpu", focus)
    rows = np.arange(len(stack))
    batch = load_batch(stack, rows, center=False)
    k = len(maps)
    rotations = np.repeat(batch.rotations.double().numpy()[:, None], k, 1)
    shifts = np.repeat(origins_px_for_rows(stack.metadata, APIX).double().numpy()[:, None], k, 1)
    return choice_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band, "ls", focus is not None)


def test_a_focus_over_the_whole_box_is_the_plain_score(states):
    core, subunit, _, _, stack = states
    maps = [core, core + subunit]
    whole = ModelMasks(BOX, 0.0, [np.ones((BOX,) * 3, np.float32)])
    plain, focused = _scores(stack, maps, None), _scores(stack, maps, whole)
    assert np.allclose(focused, plain, rtol=1e-4, atol=1e-3 * np.abs(plain).max())


def test_models_that_differ_only_outside_the_focus_score_alike(states):
    core, _, distractor, focus, stack = states
    plain = _scores(stack, [core, core + distractor], None)
    focused = _scores(stack, [core, core + distractor], focus)
    spread = np.abs(plain[:, 0] - plain[:, 1]).mean()
    assert spread > 0 and np.abs(focused[:, 0] - focused[:, 1]).max() < 1e-2 * spread  # the blobs' tails overlap


def test_the_focused_choice_follows_the_region_not_the_larger_change_outside(states):
    """Models: core + distractor, and core + subunit. State 1 (core) differs from the first by
    the distractor and from the second by the subunit; state 2 (all three) the other way round.
    The plain score sends each to the model nearer in mass (the wrong one); the focused score
    judges the subunit alone and sends each to its state's model."""
    core, subunit, distractor, focus, stack = states
    truth = stack.metadata["rlnClassNumber"].to_numpy() - 1  # 0: without the subunit
    maps = [core + distractor, core + subunit]
    plain = np.mean(_scores(stack, maps, None).argmax(1) == truth)
    focused = np.mean(_scores(stack, maps, focus).argmax(1) == truth)
    assert plain < 0.1 and focused > 0.9, (plain, focused)


def test_the_focused_choice_takes_one_pose_per_particle():
    """Its pose in the model its whole-map search scored best, given to every model."""
    from multirefine.refine.focus import shared_pose

    rotations = np.stack([np.eye(3) * (m + 1) for m in range(3)])[None].repeat(2, 0)  # (2, 3, 3, 3)
    shifts = np.arange(12, dtype=float).reshape(2, 3, 2)
    scores = np.array([[0.0, 5.0, 1.0], [9.0, 1.0, 2.0]])
    shared_rotations, shared_shifts = shared_pose(rotations, shifts, scores)
    assert np.array_equal(shared_rotations[0], np.repeat(rotations[0, 1][None], 3, 0))
    assert np.array_equal(shared_shifts[1], np.repeat(shifts[1, 0][None], 3, 0))


def test_subtracting_the_whole_map_leaves_the_noise_and_an_empty_outside_leaves_the_image(tmp_path, atoms_map):
    """relion_particle_subtract's operation at the particles' true poses: with a focus mask of
    zeros the whole map is the outside, and what is left of nearly noise-free particles is a
    few per cent of them; with a mask of ones nothing is subtracted."""
    from multirefine.refine.focus import common_outside, subtracted_images

    params = SimulationParameters(n_particles=20, snr=1e4, fractions=[1.0], pixel_size_angstrom=APIX, seed=6)
    simulate_dataset(tmp_path / "sim", [atoms_map], params)
    stack = open_particles(tmp_path / "sim" / "truth.star")
    sigma = json.loads((tmp_path / "sim" / "simulation.json").read_text())["noise_sigma"]
    rows, images = np.arange(20), np.asarray(stack[np.arange(20)])
    volume = (atoms_map / sigma).astype(np.float32)
    left = subtracted_images(stack, stack.metadata, common_outside([volume], np.zeros_like(volume), [20]), rows)
    assert np.linalg.norm(left) < 0.05 * np.linalg.norm(images)
    kept = subtracted_images(stack, stack.metadata, common_outside([volume], np.ones_like(volume), [20]), rows)
    assert np.allclose(kept, images, atol=1e-5)


def test_the_local_lattice_holds_the_pose_and_reaches_its_steps():
    from multirefine.geometry.conversions import matrix_to_axis_angle
    from multirefine.refine.focus import local_poses

    local = local_poses(12.0, 0.5, reach=3)
    angles = np.degrees(np.linalg.norm(np.asarray(matrix_to_axis_angle(local.rotations)), axis=1))
    assert len(local.rotations) == 123 and np.isclose(angles.min(), 0) and angles.max() <= 12 + 1e-6
    assert local.shifts_px.shape == (9, 2) and np.abs(local.shifts_px).max() == 0.5


def _marginal_inputs(states, n=40):
    core, subunit, distractor, focus, stack = states
    sigma = json.loads((stack.path.parent / "simulation.json").read_text())["noise_sigma"]
    maps = [(core + distractor) / sigma, (core + subunit) / sigma]
    last = LastReconstruction([None] * 2, [None] * 2, [m.astype(np.float32) for m in maps], [])
    band = make_band(BOX, 10.0)
    volumes = leave_out_volumes(last, 0, 0, [torch.eye(3)[None]] * 2, ModelMasks(BOX, 15.0), 10.0, np.ones(2), "cpu",
                                focus)
    batch = load_batch(stack, np.arange(n), center=False)
    rotations = np.repeat(batch.rotations.double().numpy()[:, None], 2, 1)
    shifts = np.repeat(origins_px_for_rows(stack.metadata.iloc[:n], APIX).double().numpy()[:, None], 2, 1)
    return batch, volumes, rotations, shifts, band


def test_the_focused_score_summed_over_local_poses_is_the_log_sum_of_each_poses_likelihood(states):
    """Each pose of the lattice scored on its own (the pose alone), then summed by hand as
    likelihoods under the noise splitmerge.log_likelihoods takes: the same as the lattice's."""
    from multirefine.refine.focus import LocalPoses, focused_scores, local_poses
    from multirefine.refine.splitmerge import log_likelihoods

    batch, volumes, rotations, shifts, band = _marginal_inputs(states)
    local = local_poses(5.0, 0.5, reach=1)
    summed = focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band, local)
    each = np.stack([
        focused_scores(batch.images_ft, batch.ctf, volumes, rotations @ turn, shifts + step, band,
                       LocalPoses.one())
        for turn in local.rotations for step in local.shifts_px
    ])  # (J S, n, K)
    power = band.power(batch.images_ft).numpy()
    n_pixels = float(band.weight.sum())
    by_hand = np.logaddexp.reduce(np.stack([log_likelihoods(e, power, n_pixels, "ls") for e in each]), axis=0)
    assert np.allclose(log_likelihoods(summed, power, n_pixels, "ls"), by_hand, rtol=1e-5, atol=1e-3)
    alone = focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band)
    assert np.allclose(alone, each[0], rtol=1e-6)  # the lattices start with the pose itself


def test_summed_over_local_poses_the_focused_choice_survives_poses_that_are_off(states):
    """Poses turned by 8° SD per axis and shifted by 0.5 px SD (a consensus refinement's error
    at low SNR): scored at those poses alone, the focused choice loses many particles (the
    subunit's signal is misplaced); summed over the poses within 12° and 0.5 px it keeps
    nearly all it has at the true poses."""
    from multirefine.geometry.conversions import axis_angle_to_matrix
    from multirefine.refine.focus import focused_scores, local_poses

    stack = states[-1]
    batch, volumes, rotations, shifts, band = _marginal_inputs(states, n=len(stack))
    truth = stack.metadata["rlnClassNumber"].to_numpy() - 1
    rng = np.random.default_rng(0)
    turned = rotations @ np.asarray(axis_angle_to_matrix(np.radians(8.0) * rng.normal(size=(len(truth), 3))))[:, None]
    moved = shifts + 0.5 * rng.normal(size=(len(truth), 1, 2))

    def accuracy(rot, shift, local=None):
        chosen = focused_scores(batch.images_ft, batch.ctf, volumes, rot, shift, band, local)
        return np.mean(chosen.argmax(1) == truth)

    at_truth, off = accuracy(rotations, shifts), accuracy(turned, moved)
    summed = accuracy(turned, moved, local_poses(12.0, 0.5))
    assert off < at_truth - 0.08 and summed > off + 0.1 and summed > at_truth - 0.04, (at_truth, off, summed)


def test_the_summed_score_is_the_same_taken_a_few_particles_and_rotations_at_a_time(states, monkeypatch):
    """Large boxes take particles and local rotations in pieces (SLICE_POINTS): the same scores."""
    import multirefine.refine.focus as focus_module

    batch, volumes, rotations, shifts, band = _marginal_inputs(states, n=30)
    local = focus_module.local_poses(12.0, 0.5)
    whole = focus_module.focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band, local)
    monkeypatch.setattr(focus_module, "SLICE_POINTS", 7 * len(local.shifts_px) * band.size)  # 7 particles, 9 rotations at a time
    pieces = focus_module.focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band, local)
    assert np.allclose(pieces, whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())
