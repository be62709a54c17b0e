"""Each model's own refinement (refine/single.py): gold standard means each half-set is
searched against its own half map only and each half map is made from its own half-set
only; then the half-map FSC at 0.143 estimates the resolution the FSC against the truth
reaches at 0.5. Simulated: adenylate kinase (open), one state, box 40, 2.4 Å/px, CTF."""

from __future__ import annotations

import numpy as np
import pytest

from multirefine.geometry.euler import euler_to_matrix, rotation_change_deg
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.io.maps import read_map, write_stack
from multirefine.io.star import read_particles_star, write_particles_star
from multirefine.refine.options import RefineOptions
from multirefine.refine.single import refine_single
from multirefine.runfolder.writer import ModelFolder

pytest.importorskip("MDAnalysisTests", reason="the adenylate kinase models come from mdanalysistests")

APIX, BOX = 2.4, 40


@pytest.fixture(scope="module")
def one_state(tmp_path_factory):
    from multirefine.cli.demo import adenylate_kinase_models
    from multirefine.simulate import (
        SimulationParameters,
        maps_from_models,
        read_atomic_model,
        simulate_dataset,
    )

    root = tmp_path_factory.mktemp("single")
    (volume,) = maps_from_models([read_atomic_model(adenylate_kinase_models()[0])], BOX, APIX, 2 * APIX)
    params = SimulationParameters(n_particles=600, snr=0.1, fractions=[1.0], pixel_size_angstrom=APIX, seed=3)
    simulate_dataset(root / "sim", [volume], params)
    return root, volume


def _options(path, iterations, start_resolution=10.0, hypotheses=0) -> RefineOptions:
    return RefineOptions(input="", path=str(path), symmetries=["c1"], single_iterations=iterations,
                         single_start_resolution_angstrom=start_resolution, hypotheses=hypotheses)


def _pose_error_deg(table, truth) -> np.ndarray:
    def matrices(t):
        return euler_to_matrix(*(t[c].to_numpy() for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))

    return rotation_change_deg(matrices(table), matrices(truth), np.eye(3)[None])


def test_rotation_change_counts_symmetry_mates_as_one():
    rng = np.random.default_rng(0)
    poses = euler_to_matrix(rng.uniform(-180, 180, 20), rng.uniform(0, 180, 20), rng.uniform(-180, 180, 20))
    ops = symmetry_operators("c4")
    mates = poses @ ops[1].T  # the same image: R S^T projects an S-invariant map as R does
    assert np.allclose(rotation_change_deg(poses, mates, ops), 0, atol=1e-3)
    assert np.all(rotation_change_deg(poses, mates, np.eye(3)[None]) > 89)
    turned = euler_to_matrix(np.zeros(20), np.zeros(20), np.full(20, 30.0)) @ poses
    assert np.allclose(rotation_change_deg(poses, turned, np.eye(3)[None]), 30, atol=1e-3)


def test_each_half_set_is_searched_against_its_own_half_map(one_state, tmp_path):
    """Half-set 2 starts from the map turned 90 degrees about z; half-set 1 from the map.
    Each finds poses in its own map's frame: half 1 near the true poses, half 2 about 90
    degrees away. A search against the other half's map, or both, would not."""
    from multirefine.io.particles import open_particles

    root, volume = one_state
    stack = open_particles(root / "sim" / "particles.star")
    pair = np.stack([volume, np.rot90(volume, 1, axes=(1, 2))])
    refine_single(stack, stack, pair, "c1", _options(tmp_path, 1), ModelFolder(tmp_path / "run", APIX, stack.optics))
    table = read_particles_star(tmp_path / "run" / "particles_final.star").metadata
    truth = read_particles_star(root / "sim" / "truth.star").metadata
    error = _pose_error_deg(table, truth)
    half = table["rlnRandomSubset"].to_numpy()
    assert np.median(error[half == 1]) < 15, np.median(error[half == 1])
    assert np.median(error[half == 2]) > 60, np.median(error[half == 2])


@pytest.mark.parametrize("hypotheses", [0, pytest.param(3, marks=pytest.mark.slow)])
def test_half_set_one_does_not_see_half_set_two(one_state, tmp_path, hypotheses):
    """Half-set 2's images replaced by noise: half-set 1's poses and half map are the same
    to the bit (one iteration: after it both halves share the FSC-based filter, as in RELION),
    also when each particle's map entry is spread over its distinct best poses (--hypotheses)."""
    from multirefine.io.particles import open_particles

    root, volume = one_state
    stack = open_particles(root / "sim" / "particles.star")
    opts = _options(tmp_path, 1, hypotheses=hypotheses)
    refine_single(stack, stack, volume, "c1", opts, ModelFolder(tmp_path / "a", APIX, stack.optics))
    halves = read_particles_star(tmp_path / "a" / "particles_final.star").metadata["rlnRandomSubset"].to_numpy()
    images = stack.read(np.arange(len(stack)))
    images[halves == 2] = np.random.default_rng(1).normal(size=images[halves == 2].shape)
    write_stack(tmp_path / "noisy.mrcs", images, APIX)
    metadata = stack.metadata.copy()
    metadata["rlnImageName"] = [f"{i + 1:06d}@{tmp_path / 'noisy.mrcs'}" for i in range(len(stack))]
    write_particles_star(tmp_path / "noisy.star", metadata, stack.optics)
    noisy = open_particles(tmp_path / "noisy.star")
    refine_single(noisy, noisy, volume, "c1", opts, ModelFolder(tmp_path / "b", APIX, noisy.optics))
    a = read_particles_star(tmp_path / "a" / "particles_final.star").metadata
    b = read_particles_star(tmp_path / "b" / "particles_final.star").metadata
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    assert np.array_equal(a[columns].to_numpy()[halves == 1], b[columns].to_numpy()[halves == 1])
    assert not np.allclose(a[columns].to_numpy()[halves == 2], b[columns].to_numpy()[halves == 2])
    assert np.array_equal(read_map(tmp_path / "a" / "half1_unfil.mrc")[0], read_map(tmp_path / "b" / "half1_unfil.mrc")[0])
    assert not np.allclose(read_map(tmp_path / "a" / "half2_unfil.mrc")[0], read_map(tmp_path / "b" / "half2_unfil.mrc")[0])


def test_half_map_fsc_estimates_the_resolution_against_the_truth(one_state, tmp_path):
    """From the true map low-passed to 15 Å: the half-map FSC at 0.143 and the FSC of the
    final map against the truth at 0.5 name the same resolution (within 15 %), and the
    files of the contract are there."""
    from multirefine.evaluate import map_resolution_against
    from multirefine.io.particles import open_particles

    root, volume = one_state
    stack = open_particles(root / "sim" / "particles.star")
    result = refine_single(stack, stack, volume, "c1", _options(tmp_path, 4, 15.0), ModelFolder(tmp_path / "run", APIX, stack.optics))
    for name in ("threed_00.mrc", "threed_01.mrc", "fsc_01.json", "convergence.json", "threed_final.mrc",
                 "half1_unfil.mrc", "half2_unfil.mrc", "particles_final.star"):
        assert (tmp_path / "run" / name).exists(), name
    at_05, _ = map_resolution_against(read_map(tmp_path / "run" / "threed_final.mrc")[0], volume, APIX)
    estimate = result.resolution_0143_angstrom
    assert abs(estimate - at_05) / at_05 < 0.15, (estimate, at_05)
    assert at_05 < 12, at_05  # it refined beyond the 15 Å start
