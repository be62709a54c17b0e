"""Local searches from given poses (a consensus refinement's, RELION's --sigma_ang): they find
the pose near the prior and never leave its neighbourhood; the command line starts them
where the input holds poses, unless --globalsearch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_atoms_map

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import euler_to_matrix, rotation_change_deg
from multirefine.io.particles import open_particles
from multirefine.refine.assignment import Priors
from multirefine.refine.batch import load_batch
from multirefine.refine.plan import plan_search
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX, APIX = 32, 2.0


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    volume = random_atoms_map(BOX, 300, seed=5, spread_px=4.0)
    simulate_dataset(root, [volume], SimulationParameters(n_particles=60, snr=5.0, fractions=[1.0],
                                                          pixel_size_angstrom=APIX, seed=1, max_shift_px=2.0))
    return open_particles(root / "truth.star"), volume


def _search(stack, volume, priors, hypotheses=0, found_too=False):
    plan = plan_search(BOX, APIX, 6.0, 10.0, 5, ["C1"], 3.0)
    volume_ft = prepare_volume_ft(torch.from_numpy(volume))[None]
    batch = load_batch(stack, np.arange(len(stack)), center=False)
    rows = np.arange(len(stack))
    found = plan.search(batch.images_ft, batch.ctf, plan.references(volume_ft), volume_ft, "ls",
                        priors=None if priors is None else priors.at(rows, "cpu"), hypotheses=hypotheses)
    poses = plan, found.model_rotations[:, 0].double().numpy(), found.model_shift_px[:, 0].double().numpy()
    return (*poses, found) if found_too else poses


def _turned(priors: Priors, degrees: float, seed: int) -> Priors:
    """Each prior turned by ``degrees`` about a random axis."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(len(priors.rotations), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angle = np.radians(degrees)
    k = np.zeros((len(axes), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    k = k - k.transpose(0, 2, 1)
    turn = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return Priors(turn[:, None] @ priors.rotations, priors.shifts_px.copy())


def test_local_search_recovers_the_pose_near_its_prior(clean):
    stack, volume = clean
    truth = Priors.of_table(stack.metadata, APIX, 1)
    true_rotations = truth.rotations[:, 0]
    plan, rotations, shifts = _search(stack, volume, _turned(truth, 6.0, 0))
    error = rotation_change_deg(true_rotations, rotations, np.eye(3)[None])
    assert np.median(error) < plan.fine_step_deg and np.mean(error < 3 * plan.fine_step_deg) > 0.9
    assert np.median(np.abs(shifts - truth.shifts_px[:, 0])) < 0.6


def test_local_search_stays_near_a_wrong_prior(clean):
    """Priors 90 degrees off: a global search finds the true poses, the local one does not
    leave the neighbourhood of its priors (no global pass)."""
    stack, volume = clean
    truth = Priors.of_table(stack.metadata, APIX, 1)
    wrong = _turned(truth, 90.0, 1)
    plan, rotations, _ = _search(stack, volume, wrong)
    assert np.all(rotation_change_deg(wrong.rotations[:, 0], rotations, np.eye(3)[None]) < plan.coarse_step_deg + 5)
    _, found, _ = _search(stack, volume, None)
    assert np.median(rotation_change_deg(truth.rotations[:, 0], found, np.eye(3)[None])) < plan.fine_step_deg


def test_hypotheses_from_priors_are_the_local_search_alone(clean):
    """Local searches from priors have no global candidates: with --hypotheses the search
    keeps its width (K + H - 1 tracks) but only each model's track is scored, at the poses
    the local search finds without hypotheses (within its last step: without, the second pass
    also refines the first's runner-up)."""
    stack, volume = clean
    priors = _turned(Priors.of_table(stack.metadata, APIX, 1), 6.0, 0)
    plan, rotations, shifts = _search(stack, volume, priors)
    _, rotations_h, shifts_h, found = _search(stack, volume, priors, hypotheses=3, found_too=True)
    assert found.score.shape == (len(stack), 3)
    assert bool(torch.isfinite(found.score[:, 0]).all()) and not bool(torch.isfinite(found.score[:, 1:]).any())
    assert np.median(rotation_change_deg(rotations, rotations_h, np.eye(3)[None])) < 0.5 * plan.local_steps_deg[1]
    assert np.median(np.abs(shifts_h - shifts)) < 0.25


def test_priors_of_a_table_and_of_layers():
    rot = euler_to_matrix(np.array([10.0, 20.0]), np.array([30.0, 40.0]), np.array([50.0, 60.0]))
    import pandas as pd

    table = pd.DataFrame({"rlnAngleRot": [10.0, 20.0], "rlnAngleTilt": [30.0, 40.0], "rlnAnglePsi": [50.0, 60.0],
                          "rlnOriginXAngst": [2.0, -4.0], "rlnOriginYAngst": [0.0, 6.0]})
    priors = Priors.of_table(table, 2.0, 3)
    assert priors.rotations.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(priors.rotations[:, 2], rot, atol=1e-6)
    np.testing.assert_allclose(priors.shifts_px[:, 0], [[1.0, 0.0], [-2.0, 3.0]])
    layers = [(np.full(2, m), rot + m, np.full((2, 2), m), np.zeros(2), np.ones(2)) for m in range(2)]
    from_layers = Priors.of_layers(layers, 2)
    np.testing.assert_allclose(from_layers.rotations[:, 1], rot + 1)
    assert Priors.of_layers(layers, 3) is None  # not one layer per model (--sep)


@pytest.mark.parametrize(("extra", "local"), [([], True), (["--globalsearch"], False)])
def test_the_command_line_starts_local_searches_where_the_input_has_poses(clean, tmp_path, capsys, extra, local):
    from multirefine.cli.main import main

    stack, _ = clean
    root = stack.path.parent
    code = main(["refine", "--input", str(root / "truth.star"), "--models", f"{root}/gt_01.mrc,{root}/gt_01.mrc",
                 "--path", str(tmp_path / "run"), "--check", *extra])
    assert code == 0
    assert ("local searches from the input's poses" in capsys.readouterr().out) == local
    code = main(["refine", "--input", str(root / "particles.star"), "--models", f"{root}/gt_01.mrc,{root}/gt_01.mrc",
                 "--path", str(tmp_path / "run"), "--check"])
    assert code == 0 and "local searches" not in capsys.readouterr().out  # no poses in particles.star


def test_consensus_first_then_local_searches_from_its_poses(clean, tmp_path):
    """--consensus: all particles refined against the one map (consensus/, gold standard),
    then the models seeded from its map, searched locally around its poses."""
    import json

    from multirefine.cli.main import main
    from multirefine.io.star import read_particles_star

    stack, _ = clean
    root = stack.path.parent
    run = tmp_path / "run"
    code = main(["refine", "--input", str(root / "particles.star"), "--model", f"{root}/gt_01.mrc", "--nmodels", "2",
                 "--consensus", "--iter", "1", "--singleiter", "1", "--nosingle", "--path", str(run)])
    assert code == 0
    parms = json.loads((run / "0_refine_parms.json").read_text())
    assert parms["consensus"] and parms["local_search"] and parms["sigma_ang_deg"] == 2.0  # the prior by default
    for name in ("threed_01.mrc", "half1_unfil.mrc", "particles_final.star", "convergence.json"):
        assert (run / "consensus" / name).exists(), name
    consensus = read_particles_star(run / "consensus" / "particles_final.star").metadata
    table = read_particles_star(run / "particles_01.star").metadata
    np.testing.assert_array_equal(table["rlnRandomSubset"], consensus["rlnRandomSubset"])  # the same half-sets
    two = ["--models", f"{root}/gt_01.mrc,{root}/gt_01.mrc", "--consensus", "--path", str(tmp_path / "r2")]
    assert main(["refine", "--input", str(root / "particles.star"), *two]) == 2  # one map only


def test_pose_prior_is_a_gaussian_of_the_geodesic_angle_and_the_shift():
    from multirefine.refine.scoring import PosePrior

    centre = torch.as_tensor(euler_to_matrix(np.array([30.0]), np.array([50.0]), np.array([70.0])),
                             dtype=torch.float32)
    turned = _turned(Priors(centre.double().numpy()[:, None], np.zeros((1, 1, 2))), 7.0, 3).rotations
    prior = PosePrior(centre[:, None], torch.tensor([[[1.0, -1.0]]]), 5.0, 2.0)
    poses = torch.stack([centre[0], torch.as_tensor(turned[0, 0], dtype=torch.float32)])[None, None]
    shifts = torch.tensor([[1.0, -1.0], [4.0, 3.0]])[None, None]
    log_rotation, log_shift = prior.log_prior(slice(0, 1), torch.zeros((1, 1), dtype=torch.long), poses, shifts)
    np.testing.assert_allclose(log_rotation.numpy().ravel(), [0.0, -0.5 * (7.0 / 5.0) ** 2], atol=2e-3)
    np.testing.assert_allclose(log_shift.numpy().ravel(), [0.0, -0.5 * 25 / 4], atol=1e-5)


def _noise_stack(stack, folder, seed: int):
    """``stack``'s particles (their table, in ``folder``) with white noise for images, 30 times the
    SD of theirs: the references' signal (SNR 5 on the particles) says next to nothing there."""
    import shutil

    from multirefine.io.maps import write_stack

    images = np.asarray(stack[np.arange(len(stack))], dtype=np.float32)
    noise = np.random.default_rng(seed).normal(size=images.shape).astype(np.float32) * 30 * images.std()
    write_stack(folder / "particles.mrcs", noise, APIX)
    shutil.copy(stack.path, folder / "truth.star")
    return open_particles(folder / "truth.star")


def _local(stack, volume, priors, sigma):
    plan = plan_search(BOX, APIX, 6.0, 10.0, 5, ["C1"], 3.0)
    volume_ft = prepare_volume_ft(torch.from_numpy(volume))[None]
    batch = load_batch(stack, np.arange(len(stack)), center=False)
    found = plan.search(batch.images_ft, batch.ctf, plan.references(volume_ft), volume_ft, "ls",
                        priors=priors.at(np.arange(len(stack)), "cpu"), sigma_ang_deg=sigma)
    return found.model_rotations[:, 0].double().numpy()


def test_a_pose_prior_keeps_the_pose_where_the_data_say_nothing_and_yields_where_they_do(clean, tmp_path):
    """--sigma_ang: on images of pure noise the local search without a prior lands anywhere in
    its window, with one it stays at the prior (the log-likelihood's differences between poses
    are a fraction of a unit there: the prior's scale); on real images whose priors are 6 degrees off
    the data still move the poses to the truth."""
    stack, volume = clean
    truth = Priors.of_table(stack.metadata, APIX, 1)
    noise = _noise_stack(stack, tmp_path, 7)
    free = rotation_change_deg(truth.rotations[:, 0], _local(noise, volume, truth, None), np.eye(3)[None])
    held = rotation_change_deg(truth.rotations[:, 0], _local(noise, volume, truth, 3.0), np.eye(3)[None])
    assert np.median(free) > 5.0 and np.median(held) < 0.25 * np.median(free)
    turned = _turned(truth, 6.0, 0)
    found = _local(stack, volume, turned, 5.0)
    error = rotation_change_deg(truth.rotations[:, 0], found, np.eye(3)[None])
    assert np.median(error) < 3.0


def test_sigma_ang_is_checked():
    from multirefine.errors import InputError
    from multirefine.refine.options import RefineOptions, SweepSettings

    base = {"input": "p.star", "path": "run", "symmetries": ["C1", "C1"]}
    with pytest.raises(InputError, match="--sigma_ang -1"):
        RefineOptions(**base, sigma_ang_deg=-1.0)
    with pytest.raises(InputError, match="--sigma_ang with --score cc"):
        RefineOptions(**base, sigma_ang_deg=5.0, score="cc")
    RefineOptions(**base, sigma_ang_deg=0.0, score="cc")
    assert SweepSettings.of(RefineOptions(**base, sigma_ang_deg=5.0)).sigma_ang_deg is None  # no local searches
    assert SweepSettings.of(RefineOptions(**base, sigma_ang_deg=5.0, local_search=True)).sigma_ang_deg == 5.0
    assert SweepSettings.of(RefineOptions(**base, sigma_ang_deg=0.0, local_search=True)).sigma_ang_deg is None
