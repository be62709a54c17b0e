"""Split and merge on a mixture of three states where the models are known exactly.

Particles are noisy vectors of three states (A, B between A and C, C); a model is a mean
vector and its log-likelihood the Gaussian one. The merged optimum of the benchmark is built
by hand: two models on A, one on the blur of B and C.
"""

import numpy as np
import pytest

from multirefine.refine.splitmerge import (
    classification_log_likelihood,
    log_likelihoods,
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

