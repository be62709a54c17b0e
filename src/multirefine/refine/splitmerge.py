"""Split and merge: leaving a merged optimum of hard assignment.

With K models seeded from one map (``--randclassify``, ``--randphase``), hard assignment can
settle where one state is shared by two models and two states are blurred together in a
third: a particle of either blurred state then fits the blur better than a map of the other
state, and each half of the shared state fits its own model as well as the other half's.
(Seen on the three-state benchmark, BENCHMARKS.md.) This is the local optimum that split
and merge EM (Ueda et al., Neural Computation 2000) leaves by a trial: one model is merged
into the rest and another split in two, and the trial is kept only if the likelihood grows.

Here, in the units of :func:`log_likelihoods` (one row per particle, one column per model,
each particle scored against maps rebuilt without its own fold, so a particle's own noise
does not vote):

* the model to dissolve is the one whose particles lose least when each goes to its next
  best model (:func:`removal_costs`);
* the model to split gives its particles that prefer it least over the remaining models
  (:func:`split_rows`): the half nearest to another state, which is where a blur of two
  states parts;
* the trial (:func:`trial_assignment`) is kept when the cross-validated classification
  log-likelihood (:func:`classification_log_likelihood`) of its maps beats that of the
  iteration's own maps, after both were given a few rounds of classification at fixed
  poses (a fresh split is blurred, the assignment it competes with has had iterations to
  sharpen); the driver makes the maps, scores them and decides
  (:func:`multirefine.refine.trial.split_and_merge`).

Everything here is arithmetic on arrays; the maps and scores come from
:mod:`multirefine.refine.trial`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MIN_MODELS",
    "classification_log_likelihood",
    "log_likelihoods",
    "mixture_log_likelihood",
    "removal_costs",
    "split_rows",
    "trial_assignment",
]

MIN_MODELS = 3  # with two models there is no third to split against


def log_likelihoods(scores: np.ndarray, image_power: np.ndarray, n_pixels: float, score: str) -> np.ndarray:
    """Log-likelihood of each particle under each model ``(n, K)`` from its scores ``(n, K)``.

    White Gaussian noise of variance ``sigma^2`` per Fourier pixel, estimated per particle
    as its mean power in the band (at low SNR nearly all of it is noise). Then
    ``log p(X | model) = 2 ls / sigma^2`` up to a constant per particle for the
    least-squares score, and, with the best amplitude for each model,
    ``n_pixels * cc * |cc|`` for the normalised correlation.
    """
    if score == "ls":
        sigma2 = np.maximum(image_power / n_pixels, 1e-30)[:, None]
        return 2 * scores / sigma2
    return n_pixels * scores * np.abs(scores)


def classification_log_likelihood(log_likelihood: np.ndarray) -> float:
    """The hard-assignment objective: each particle's log-likelihood in its best model, summed."""
    return float(log_likelihood.max(axis=1).sum())


def mixture_log_likelihood(log_likelihood: np.ndarray, model: np.ndarray) -> float:
    """The mixture's log-likelihood ``sum_i log sum_k pi_k p(X_i | k)``, each model's weight
    ``pi_k`` the fraction of the particles ``model`` assigns it (models without particles left
    out). Unlike :func:`classification_log_likelihood` it does not grow, in expectation, when
    one state is cut in two: each particle's likelihood is averaged over the halves' maps,
    not maximised, and those maps hold more noise than the whole's (measured: -0.46 to -0.53
    per particle on sets of one state, where the hard objective gained +0.14; ``--nmodels
    auto``, :mod:`multirefine.refine.growth`)."""
    k = log_likelihood.shape[1]
    counts = np.bincount(model, minlength=k)
    used = counts > 0
    z = log_likelihood[:, used] + np.log(counts[used] / len(model))
    top = z.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(z - top).sum(axis=1))).sum())


def _best_excluding(log_likelihood: np.ndarray, excluded: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best model not in ``excluded`` and its log-likelihood."""
    masked = log_likelihood.copy()
    masked[:, excluded] = -np.inf
    best = masked.argmax(axis=1)
    return best, masked[np.arange(len(masked)), best]


def removal_costs(log_likelihood: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Per model ``(K,)``, what its particles lose in log-likelihood, summed, when each goes to
    its best other model (the other models' maps as they are)."""
    k = log_likelihood.shape[1]
    costs = np.zeros(k)
    for m in range(k):
        rows = np.nonzero(model == m)[0]
        if len(rows):
            _, other = _best_excluding(log_likelihood[rows], [m])
            costs[m] = float((log_likelihood[rows, m] - other).sum())
    return costs


def split_rows(log_likelihood: np.ndarray, model: np.ndarray, split: int, dissolved: int) -> np.ndarray:
    """Rows of model ``split``'s particles that leave it for the re-seeded model ``dissolved``:
    the half (rounded down) whose preference for ``split`` over the best remaining model (not
    ``split``, not ``dissolved``) is smallest."""
    rows = np.nonzero(model == split)[0]
    _, other = _best_excluding(log_likelihood[rows], [split, dissolved])
    margin = log_likelihood[rows, split] - other
    order = np.argsort(margin, kind="stable")
    return np.sort(rows[order[: len(rows) // 2]])


def trial_assignment(log_likelihood: np.ndarray, model: np.ndarray, dissolved: int, split: int) -> np.ndarray:
    """The trial's assignment: model ``dissolved``'s particles go to their best other model;
    then half of model ``split``'s particles (:func:`split_rows`) re-seed ``dissolved``."""
    if dissolved == split:
        raise ValueError("the model dissolved and the model split must differ")
    trial = np.asarray(model).copy()
    rows = np.nonzero(trial == dissolved)[0]
    trial[rows] = _best_excluding(log_likelihood[rows], [dissolved])[0]
    trial[split_rows(log_likelihood, trial, split, dissolved)] = dissolved
    return trial
