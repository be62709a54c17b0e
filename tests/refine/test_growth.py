"""--nmodels auto's growth (multirefine.refine.growth) on a stand-in for maps at fixed poses.

Each "particle" is a noisy vector from one of a few states; a model's "map" is the mean of
its particles left out fold by fold, as the real model choice rebuilds maps without each
particle's fold (multirefine.refine.choice), and a particle's log-likelihood in a model is
its Gaussian log-density about that mean. The growth sees only ``classified``, ``settle`` and
``with_copy_of``, as it does of :class:`multirefine.refine.trial.FixedPoses`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest

from multirefine.refine.choice import CHOICE_FOLDS, fold_edges
from multirefine.refine.growth import GROWTH_MIN_GAIN, grow
from multirefine.refine.trial import Classified, FixedPoses

DIM, SIGMA = 40, 1.0


@dataclass
class _Vectors:
    """Fixed poses, as vectors: ``x`` (n, DIM)."""

    x: np.ndarray

    def classified(self, model: np.ndarray, found=None) -> Classified:
        n, k = len(self.x), int(model.max()) + 1 if len(model) else 1
        k = max(k, getattr(found, "k", k))
        edges = fold_edges(n, CHOICE_FOLDS)
        ll = np.full((n, k), -np.inf)
        for a, b in itertools.pairwise(edges):
            keep = np.ones(n, bool)
            keep[a:b] = False
            for m in range(k):
                members = keep & (model == m)
                if members.sum() < 2:
                    continue
                mean = self.x[members].mean(0)
                ll[a:b, m] = -((self.x[a:b] - mean) ** 2).sum(1) / (2 * SIGMA**2)
        return Classified(model, _Models(k), [], None, ll)

    settle = FixedPoses.settle

    def with_copy_of(self, m: int, current: Classified):
        return self, _Models(current.log_likelihood.shape[1] + 1)


@dataclass
class _Models:
    k: int


def _states(n_states: int, n: int, separation: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_states, DIM))
    if n_states > 1:
        centres *= separation / np.linalg.norm(centres[:, None] - centres[None], axis=-1).max()
    truth = rng.integers(n_states, size=n)
    return centres[truth] + rng.normal(scale=SIGMA, size=(n, DIM)), truth


@pytest.mark.parametrize("n_states", [1, 2, 3])
def test_growth_counts_the_states(n_states):
    x, truth = _states(n_states, 900, separation=6.0, seed=n_states)
    vectors = _Vectors(x)
    count = grow(vectors, vectors.classified(np.zeros(len(x), np.int64), _Models(1)), kmax=6, seed=0)
    assert count.chosen == n_states, count.steps
    assert [s.models for s in count.steps] == list(range(1, n_states + 2))
    last = count.steps[-1]  # the split refused
    assert not last.kept and (last.gain_per_particle is None or last.gain_per_particle <= GROWTH_MIN_GAIN)
    assert all(s.kept and s.gain_per_particle > GROWTH_MIN_GAIN for s in count.steps[1:-1])
    if n_states > 1:  # the states found are the true ones
        confusion = np.zeros((n_states, n_states))
        np.add.at(confusion, (truth, count.classified.model), 1)
        assert confusion.max(1).sum() / len(x) > 0.97
    assert json.loads(json.dumps(count.to_json()))["chosen"] == n_states  # what nmodels.json holds


def test_growth_stops_at_kmax_and_says_so():
    x, _ = _states(4, 900, separation=6.0, seed=1)
    vectors = _Vectors(x)
    count = grow(vectors, vectors.classified(np.zeros(len(x), np.int64), _Models(1)), kmax=2, seed=0)
    assert count.chosen == 2 and "--kmax 2" in count.reason


def test_growth_leaves_small_models_unsplit():
    x, _ = _states(2, 150, separation=8.0, seed=2)
    vectors = _Vectors(x)
    count = grow(vectors, vectors.classified(np.zeros(len(x), np.int64), _Models(1)), kmax=6, seed=0)
    assert count.chosen == 2 and "100 particles or more" in count.reason


def test_a_split_is_seeded_by_the_half_that_leans_towards_a_neighbour():
    """Model 0 holds two groups; the second fits model 1 better relative to model 0 than the
    first does: the neighbour's seed is that group, the random seed a half of the model. A
    model that scores none of model 0's particles seeds nothing, nor does a half seeded twice."""
    from multirefine.refine.growth import GROWTH_SEEDS, _seeds

    model = np.array([0] * 8 + [1] * 4 + [2] * 4)
    ll = np.zeros((16, 3))
    ll[:8, 0] = -1.0
    ll[4:8, 1] = 2.0  # rows 4-7 lean towards model 1
    ll[:8, 2] = -5.0  # model 2 is farther from model 0's particles than model 1
    ll[[0, 1, 2, 4], 2] = -4.0  # and leans another way
    seeds = _seeds(Classified(model, None, [], None, ll), 0, np.random.default_rng(0))
    assert [name for name, _ in seeds] == ["a random half", "the half nearer model 2", "the half nearer model 3"][
        :GROWTH_SEEDS]
    assert all(len(s) == 4 and set(s) <= set(range(8)) for _, s in seeds)
    assert sorted(seeds[1][1]) == [4, 5, 6, 7]
    one = _seeds(Classified(np.zeros(8, np.int64), None, [], None, np.zeros((8, 1))), 0, np.random.default_rng(0))
    assert len(one) == 1  # one model: only the random half
    ll[:8, 2] = -np.inf  # model 2 scored none of them
    assert [name for name, _ in _seeds(Classified(model, None, [], None, ll), 0, np.random.default_rng(0))] == [
        "a random half", "the half nearer model 2"]
    same = np.zeros((8, 3))
    same[4:, 1] = same[4:, 2] = 1.0  # both neighbours lean the same half: screened once
    twice = _seeds(Classified(np.array([0] * 6 + [1, 2]), None, [], None, same), 0, np.random.default_rng(0))
    assert len(twice) <= 2
