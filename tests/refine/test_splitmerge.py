"""Split and merge on a mixture of three states where the models are known exactly.

Particles are noisy vectors of three states (A, B between A and C, C); a model is a mean
vector and its log-likelihood the Gaussian one. The merged optimum of the benchmark is built
by hand: two models on A, one on the blur of B and C.
"""

import numpy as np
import pytest
from helpers import ADK_APIX as APIX
from helpers import ADK_BOX as BOX
from helpers import simulate_adk

from multirefine.refine.splitmerge import (
    classification_log_likelihood,
    log_likelihoods,
    mixture_log_likelihood,
    removal_costs,
    split_rows,
    trial_assignment,
)

DIM, SIGMA, PER_STATE = 400, 1.0, 600


def _states(rng):
    a = rng.normal(size=DIM)
    c = a + rng.normal(size=DIM) * 0.4
    return np.stack([a, (a + c) / 2, c])  # A, B between them, C


def _data(rng):
    states = _states(rng)
    truth = np.repeat(np.arange(3), PER_STATE)
    x = states[truth] + rng.normal(size=(len(truth), DIM)) * SIGMA
    return x, truth


def _log_likelihood(x, means, leave_out_of=None, model=None):
    """Gaussian log-likelihood of each row under each mean; with ``model``, each row's own
    model's mean is taken without that row (the driver's leave-out)."""
    ll = -((x[:, None, :] - means[None]) ** 2).sum(-1) / (2 * SIGMA**2)
    if model is not None:
        counts = np.bincount(model, minlength=len(means)).astype(float)
        rows = np.arange(len(x))
        own = means[model]
        n = counts[model][:, None]
        without = np.where(n > 1, (own * n - x) / np.maximum(n - 1, 1), own)
        ll[rows, model] = -((x - without) ** 2).sum(-1) / (2 * SIGMA**2)
    return ll


def _means(x, model, k):
    return np.stack([x[model == m].mean(0) for m in range(k)])


def _cross_validated(x, model, k):
    return _log_likelihood(x, _means(x, model, k), model=model)


@pytest.fixture
def merged():
    """Two models share A (split at random), the third holds B and C."""
    rng = np.random.default_rng(3)
    x, truth = _data(rng)
    model = np.where(truth == 0, rng.integers(0, 2, len(truth)), 2)
    return x, truth, model


def test_the_redundant_model_is_dissolved(merged):
    x, _, model = merged
    costs = removal_costs(_cross_validated(x, model, 3), model)
    assert np.argmin(costs) in (0, 1)  # one of the two models of A
    assert costs[2] > 10 * max(costs[0], costs[1])


def test_the_blur_parts_along_its_states(merged):
    x, truth, model = merged
    ll = _cross_validated(x, model, 3)
    dissolved = int(np.argmin(removal_costs(ll, model)))
    trial = trial_assignment(ll, model, dissolved, 2)
    keep = 1 - dissolved  # the model of A that stays
    assert np.mean(trial[truth == 0] == keep) > 0.99  # A's particles go to the other model of A
    moved = split_rows(ll, np.where(model == dissolved, keep, model), 2, dissolved)
    assert len(moved) == (truth > 0).sum() // 2
    # The half that prefers the blur least over A is B, the state between A and C.
    assert np.mean(truth[moved] == 1) > 0.9


def test_the_trial_wins_from_the_merged_optimum_and_loses_from_the_right_one(merged):
    x, truth, model = merged
    ll = _cross_validated(x, model, 3)
    dissolved = int(np.argmin(removal_costs(ll, model)))
    trial = trial_assignment(ll, model, dissolved, 2)
    gain = classification_log_likelihood(_cross_validated(x, trial, 3)) - classification_log_likelihood(ll)
    assert gain > 0
    # From the states separated, no trial is kept: each dissolves a state.
    right = _cross_validated(x, truth, 3)
    base = classification_log_likelihood(right)
    dissolved = int(np.argmin(removal_costs(right, truth)))
    for split in set(range(3)) - {dissolved}:
        trial = trial_assignment(right, truth, dissolved, split)
        assert classification_log_likelihood(_cross_validated(x, trial, 3)) < base


def test_an_empty_model_is_re_seeded():
    rng = np.random.default_rng(4)
    x, truth = _data(rng)
    model = np.where(truth == 0, 0, 1)  # model 2 (index 2) is empty, model 1 holds B and C
    ll = _log_likelihood(x, np.stack([x[model == 0].mean(0), x[model == 1].mean(0), np.zeros(DIM)]))
    costs = removal_costs(ll, model)
    assert costs[2] == 0 and np.argmin(costs) == 2
    trial = trial_assignment(ll, model, 2, 1)
    assert np.bincount(trial, minlength=3).tolist() == [PER_STATE, PER_STATE, PER_STATE]


def test_log_likelihood_units():
    scores = np.array([[1.0, 3.0]])
    assert np.allclose(log_likelihoods(scores, np.array([8.0]), 4.0, "ls"), [[1.0, 3.0]])  # sigma^2 = 2
    assert np.allclose(log_likelihoods(np.array([[0.5, -0.5]]), np.zeros(1), 10.0, "cc"), [[2.5, -2.5]])
    with pytest.raises(ValueError):
        trial_assignment(np.zeros((4, 3)), np.zeros(4, dtype=int), 1, 1)


# --- The driver's trial on particle images (adenylate kinase open, intermediate, closed) ---



@pytest.fixture(scope="module")
def three_states(tmp_path_factory):
    """1500 particles of adk open, half-way and closed (0.4 / 0.3 / 0.3), SNR 0.1, CTF."""
    root = tmp_path_factory.mktemp("three_states")
    simulate_adk(root, 1500, [0.4, 0.3, 0.3], seed=5, half_way=True)
    return root


def _trial_at_true_poses(root, model, tmp_path, executor=None):
    """:func:`multirefine.refine.trial.split_and_merge` from ``model`` with every particle at
    its true pose in every model, searched to 10 Å (its loops run by ``executor``)."""
    import torch

    from multirefine.geometry.symmetry import symmetry_operators
    from multirefine.io.particles import open_particles
    from multirefine.refine.assignment import Searched
    from multirefine.refine.batch import load_batch, origins_px_for_rows, rotations_for_rows
    from multirefine.refine.choice import FoldMaps
    from multirefine.refine.layers import layer_stacks, make_layers, reconstruct_models
    from multirefine.refine.options import RefineOptions, SweepSettings
    from multirefine.refine.plan import plan_search
    from multirefine.refine.reconstruct import half_set_of_rows
    from multirefine.refine.solvent import ModelMasks
    from multirefine.refine.trial import FixedPoses, split_and_merge

    truth = open_particles(root / "truth.star")
    stack = open_particles(root / "particles.star")
    n, k, radius_px = len(stack), 3, 12.0
    opts = RefineOptions(input=str(root / "particles.star"), path=str(tmp_path), symmetries=["C1"] * k,
                                m3dkeep=1.0)
    plan = plan_search(BOX, APIX, 10.0, radius_px, opts.speed, opts.symmetries, opts.max_shift_px)
    rotations = rotations_for_rows(truth.metadata).double().numpy()
    shifts = origins_px_for_rows(truth.metadata, APIX).numpy()
    found = Searched(
        np.zeros((n, k)), np.repeat(rotations[:, None], k, 1), np.repeat(shifts[:, None], k, 1), np.zeros((n, k)),
        np.zeros(n),
    )
    for start in range(0, n, 500):
        rows = np.arange(start, min(n, start + 500))
        x = plan.band.gather(load_batch(stack, rows, center=False).images_ft)
        found.image_power[rows] = (plan.band.weight * x.abs() ** 2).sum(-1).numpy()
    halves = half_set_of_rows(stack.metadata, 0)
    operators = [torch.as_tensor(symmetry_operators("C1"), dtype=torch.float32)] * k
    mask = ModelMasks(BOX, radius_px + 3)
    maps = [np.zeros((BOX,) * 3, np.float32)] * k
    layers = make_layers(found, model, np.eye(k)[model], 1)
    _, stacks = layer_stacks(stack, layers, halves, APIX)
    made = reconstruct_models(stack, layers, stacks, halves, maps, operators, mask, 1.0, "cpu", None, "", executor)
    fold_maps = FoldMaps(operators, mask, np.ones(k))
    fixed = FixedPoses(stack, stack, plan, halves, maps, operators, mask, fold_maps, SweepSettings.of(opts),
                       opts.m3dkeep, executor)
    return split_and_merge(fixed, found, model, layers, made, 3)


@pytest.mark.slow
def test_the_trial_leaves_the_merged_optimum_of_particle_images(three_states, dask_scheduler, tmp_path):
    """One state in two models, two in the third (the benchmark's merged optimum, built by
    hand at the true poses): the trial is kept and parts the blurred states. Its loops run
    as tasks on a Dask cluster of two worker processes (the other tests here run them in
    this process)."""
    from multirefine.evaluate import classification_accuracy
    from multirefine.io.star import read_particles_star
    from multirefine.parallel import DaskCluster

    truth = read_particles_star(three_states / "truth.star").metadata["rlnClassNumber"].to_numpy() - 1
    rng = np.random.default_rng(0)
    merged = np.where(truth == 0, rng.integers(0, 2, len(truth)), 2)
    before = classification_accuracy(truth + 1, merged + 1).accuracy  # classes from 1 (0 is junk)
    cluster = DaskCluster(dask_scheduler)
    try:
        chosen, tried = _trial_at_true_poses(three_states, merged, tmp_path, cluster)
    finally:
        cluster.close()
    after = classification_accuracy(truth + 1, chosen.model + 1).accuracy
    print(f"accuracy {before:.3f} -> {after:.3f}", tried)
    assert tried.kept and tried.gain > 0
    assert tried.split == 3 and tried.dissolved in (1, 2)
    assert before < 0.55 and after > before + 0.15


def test_the_trial_is_not_kept_where_the_states_are_apart(three_states, tmp_path):
    from multirefine.io.star import read_particles_star

    truth = read_particles_star(three_states / "truth.star").metadata["rlnClassNumber"].to_numpy() - 1
    chosen, tried = _trial_at_true_poses(three_states, truth, tmp_path)
    print(tried)
    assert not tried.kept
    assert np.mean(chosen.model == truth) > 0.9


@pytest.mark.slow
def test_a_run_of_three_models_records_its_trials(three_states, tmp_path):
    """`multirefine refine` with three models from the true maps: the trial of iteration 3
    (the only one due in five iterations) is in convergence.json and the report, it is not
    kept (the states are apart: measured -2837), the particle table is the assignment the
    iteration ended with, and the accuracy stays (measured 93.1 % after 5 iterations)."""
    import json

    from multirefine.cli.main import main
    from multirefine.evaluate import classification_accuracy
    from multirefine.io.star import read_particles_star

    run = tmp_path / "run"
    code = main(["refine", "--input", str(three_states / "particles.star"), "--models",
                 ",".join(str(three_states / f"gt_{i:02d}.mrc") for i in (1, 2, 3)), "--nosingle", "--iter", "5",
                 "--targetres", "12", "--path", str(run), "--parallel", "thread:2"])
    assert code == 0
    assert json.loads((run / "0_refine_parms.json").read_text())["split_merge"] is True
    stats = json.loads((run / "convergence.json").read_text())
    trials = {s["iteration"]: s["split_merge"] for s in stats if s["split_merge"] is not None}
    assert list(trials) == [3]
    assert set(trials[3]) == {"dissolved", "split", "gain", "kept"}
    assert trials[3]["dissolved"] != trials[3]["split"]
    classes = read_particles_star(run / "particles_03.star").metadata["rlnClassNumber"].to_numpy()
    assert np.bincount(classes, minlength=4)[1:].tolist() == stats[2]["particles_per_model"]
    assert f"model {trials[3]['dissolved']} merged, model {trials[3]['split']} split" in (run / "index.html").read_text()
    assert trials[3]["kept"] is False
    # The table's posteriors after the trial: those of the iteration's own assignment against
    # its maps after the rounds at fixed poses, still lower for particles in the wrong model.
    table = read_particles_star(run / "particles_03.star").metadata
    confidence = table["rlnMaxValueProbDistribution"].to_numpy()
    assert np.all((confidence >= 0) & (confidence <= 1 + 1e-6))
    truth3 = read_particles_star(three_states / "truth.star").metadata["rlnClassNumber"].to_numpy()
    score = classification_accuracy(truth3, table["rlnClassNumber"].to_numpy())
    right = np.asarray(score.matching)[truth3 - 1] == table["rlnClassNumber"].to_numpy() - 1
    assert confidence[~right].mean() < confidence[right].mean()
    truth = read_particles_star(three_states / "truth.star").metadata["rlnClassNumber"].to_numpy()
    classes = read_particles_star(run / "particles_05.star").metadata["rlnClassNumber"].to_numpy()
    assert classification_accuracy(truth, classes).accuracy > 0.9


def test_the_mixture_likelihood_does_not_grow_when_a_state_is_cut_in_two():
    """Two copies of one model, each holding half the particles, give the one model's
    log-likelihood (log(1/2 p + 1/2 p) = log p), where the hard assignment's grows by what
    each particle's better copy adds; separate states are the one model's plus what their
    maps add, less log 2 per particle at most."""
    rng = np.random.default_rng(0)
    one = rng.normal(size=(200, 1)) * 3
    model = rng.integers(2, size=200)
    noisy = np.hstack([one, one]) + rng.normal(scale=0.5, size=(200, 2))  # two maps of one state
    assert mixture_log_likelihood(np.hstack([one, one]), model) == pytest.approx(float(one.sum()))
    assert mixture_log_likelihood(noisy, model) < classification_log_likelihood(noisy)
    assert classification_log_likelihood(noisy) > float(one.sum())  # the hard objective's bias
    states = np.where(np.eye(2)[model] > 0, 5.0, -5.0) + one  # each particle fits its own state's map
    weights = np.bincount(model) / len(model)
    expected = float((one[:, 0] + 5 + np.log(weights[model])).sum())
    assert mixture_log_likelihood(states, model) == pytest.approx(expected, abs=0.05)
