"""Choosing the number of models from the data (``--nmodels auto``): grow K while a model
more explains the particles better.

In: one assignment with every particle's poses (:class:`~multirefine.refine.trial.Classified`,
K = 1 after a refinement against the one starting map) and how assignments become maps and
cross-validated scores at fixed poses (:class:`~multirefine.refine.trial.FixedPoses`). Each step:

* screen: every model of :data:`GROWTH_MIN_PARTICLES` particles or more is tried split in
  two: a half of its particles seeds a new model with its map, symmetry, mask, intensity
  scale and poses, and the K + 1 models get up to :data:`GROWTH_ROUNDS` rounds of hard
  classification at the fixed poses (each particle to its best model by its score against
  maps made without its fold, the maps made again: what ``--randclassify`` does over
  iterations, without the search). Up to :data:`GROWTH_SEEDS` halves are tried per model and
  the best settled one kept: a random half (fixed seed), and from two models on, the half of
  its particles that fits each of its nearest other models best relative to it
  (:func:`_seeds`): where a model holds two states, the one nearer another model's state
  leans towards that model, a direction a random half finds only by chance;
* confirm: the split that gains most is handed to the driver, which searches every particle
  again in all K + 1 models, assigns it and makes the maps
  (:func:`multirefine.refine.driver.count_models`); the split is kept if it then gains more
  than :data:`GROWTH_MIN_GAIN` per particle over the K models at the same new poses (its
  particles back in the model split: what the search gained for every model is not the
  split's), and the next step starts from there;
* growth stops at the first step that gains less, or at ``kmax`` models.

The gain is in the cross-validated *mixture* log-likelihood
(:func:`multirefine.refine.splitmerge.mixture_log_likelihood`): each particle scored against
maps rebuilt without its fold (so its own noise does not vote), its likelihoods in the
models weighted by the models' shares of the particles. The hard assignment's objective (each
particle's best model) is not a count: cutting one state in two along any direction raises it,
a particle always fitting one half's map better (measured: +0.14 per particle on a set of one
state, where the mixture's fell by 0.49). Why confirm by a search: at poses fixed by one map,
the particles posed wrongly there (a pseudo-symmetric particle turned about its near-axis)
gather in a model of their own and raise the likelihood as a state would (+0.18 per
particle on a set of two states, 103 particles 99 % of them posed more than 20° off); searched
in every model, they fit the original map as well as their own and the split gains nothing.
The per-step gains form the curve the report draws (:class:`GrowthStep`); what the threshold
is measured on is in BENCHMARKS.md ("Choosing the number of models").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from multirefine.refine.trial import Classified, FixedPoses

__all__ = ["GROWTH_MIN_GAIN", "GROWTH_MIN_MODEL", "GROWTH_MIN_PARTICLES", "GROWTH_ROUNDS", "GROWTH_SEEDS", "GrowthStep", "ModelCount", "grow"]

log = logging.getLogger(__name__)

GROWTH_ROUNDS = 8  # rounds of classification at fixed poses given to each split
GROWTH_SEEDS = 3  # halves screened per model: a random one, and one for each of the nearest other models
GROWTH_MIN_PARTICLES = 100  # a model is tried split only if each half would hold 50 or more
# A split whose settled assignment leaves any model with fewer particles is not counted: such a
# model's map is kept as it was (multirefine.refine.layers.reconstruct_models), not rebuilt
# without each particle's fold, so its particles' own noise votes for it (measured: a split
# leaving 6 particles in a model "gained" 3.05 per particle on a set of two states).
GROWTH_MIN_MODEL = 50
GROWTH_MIN_GAIN = 0.05  # per particle, cross-validated log-likelihood; BENCHMARKS.md "Choosing K"


@dataclass
class GrowthStep:
    """One step of the growth (models from 1): the best split tried from ``models - 1``
    models (None: the start, one model), what it gained per particle, and whether it was kept."""

    models: int
    log_likelihood_per_particle: float | None  # cross-validated, at ``models`` (None: no split counted)
    split: int | None = None
    gain_per_particle: float | None = None
    kept: bool = True
    particles_per_model: list[int] | None = None
    tried: dict[int, float | None] | None = None  # every split screened: model -> gain per particle at fixed poses
    seeded_by: str | None = None  # the best split's seed (:func:`_seeds`)


@dataclass
class ModelCount:
    """The growth's outcome: the number of models chosen, why, the steps, and the
    assignment at that number (its maps start the multi-model iterations)."""

    chosen: int
    reason: str
    steps: list[GrowthStep]
    classified: Classified

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "reason": self.reason, "min_gain_per_particle": GROWTH_MIN_GAIN,
                "rounds": GROWTH_ROUNDS, "seeds": GROWTH_SEEDS, "steps": [asdict(s) for s in self.steps]}


def _seeds(current: Classified, m: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """The halves of model ``m``'s particles that seed its split (rows of ``current``), each
    with what it is: a random half, then for each of the ``GROWTH_SEEDS - 1`` other models
    nearest to ``m`` (the highest mean cross-validated log-likelihood over ``m``'s particles;
    one scored for none of them is left out) the half whose likelihood in that model,
    relative to ``m``, is highest."""
    rows = np.nonzero(current.model == m)[0]
    seeds = [("a random half", rng.choice(rows, len(rows) // 2, replace=False))]
    ll = current.log_likelihood[rows]
    lean = ll - ll[:, [m]]
    with np.errstate(invalid="ignore"):
        nearness = lean.mean(axis=0)
    others = [j for j in np.argsort(-nearness, kind="stable") if j != m and np.isfinite(nearness[j])]
    for j in others[:GROWTH_SEEDS - 1]:
        half = rows[np.argsort(-lean[:, j], kind="stable")[:len(rows) // 2]]
        if not any(np.array_equal(np.sort(half), np.sort(h)) for _, h in seeds):
            seeds.append((f"the half nearer model {j + 1}", half))
    return seeds


def _split(fixed: FixedPoses, current: Classified, m: int, half: np.ndarray) -> tuple[Classified, FixedPoses]:
    """Model ``m`` of ``current`` split in two (the particles ``half`` into a new last model),
    then settled at the fixed poses."""
    grown, found = fixed.with_copy_of(m, current)
    model = current.model.copy()
    model[half] = current.log_likelihood.shape[1]  # the new last model
    return grown.settle(grown.classified(model, found), GROWTH_ROUNDS), grown


def _merged(fixed: FixedPoses, trial: Classified, m: int) -> Classified:
    """The ``K`` models of ``fixed`` at ``trial``'s poses (K + 1 models, searched again), its
    last model's particles back in model ``m``: what the split is judged against, so that
    what the search gained for every model is not counted as the split's."""
    k = len(fixed.maps)
    return fixed.classified(np.where(trial.model == k, m, trial.model), trial.found.of_models(list(range(k))))


Confirm = Callable[[Classified, FixedPoses], tuple[Classified, FixedPoses]]


def grow(fixed: FixedPoses, start: Classified, kmax: int, seed: int, confirm: Confirm | None = None) -> ModelCount:
    """Models added one split at a time from ``start`` while a split gains more than
    :data:`GROWTH_MIN_GAIN` per particle, up to ``kmax`` (see the module docstring).

    Each step screens every model's split at the fixed poses; the best is then handed to
    ``confirm`` (the driver's: every particle searched again in all the models, the maps made
    again, scored at the new poses), and its gain is what it holds over the models before it
    at those same poses (:func:`_merged`). Without ``confirm`` the screen's gain decides."""
    n = len(start.model)
    rng = np.random.default_rng(seed)
    k = start.log_likelihood.shape[1]
    current, steps = start, [GrowthStep(k, start.mixture / n, particles_per_model=np.bincount(start.model).tolist())]
    while True:
        if k >= kmax:
            reason = f"--kmax {kmax} reached"
            break
        counts = np.bincount(current.model, minlength=k)
        candidates = [m for m in range(k) if counts[m] >= GROWTH_MIN_PARTICLES]
        if not candidates:
            reason = f"no model holds {GROWTH_MIN_PARTICLES} particles or more to split"
            break
        gains, seed_of, best, best_trial, best_seed = {}, {}, None, None, None  # only the best split's maps kept: K + 1 accumulators each
        for m in candidates:
            for seeded_by, half in _seeds(current, m, rng):
                trial, grown = _split(fixed, current, m, half)
                gain = float(trial.mixture - current.mixture) / n
                if np.bincount(trial.model, minlength=k + 1).min() >= GROWTH_MIN_MODEL and gain > gains.get(m, -np.inf):
                    if best is None or gain > gains[best]:
                        best, best_trial, best_seed = m, (trial, grown), seeded_by
                    gains[m], seed_of[m] = gain, seeded_by
                del trial, grown
        tried = {m + 1: gains.get(m) for m in candidates}
        log.info("models: %d -> %d, gain per particle at fixed poses (cross-validated mixture log-likelihood) "
                 "splitting model %s", k, k + 1,
                 ", ".join(f"{m}: " + (f"a model left below {GROWTH_MIN_MODEL} particles" if g is None else
                                       f"{g:+.3f} ({seed_of[m - 1]})") for m, g in tried.items()))
        if best is None or gains[best] <= GROWTH_MIN_GAIN:
            reason = (f"every split tried left a model of fewer than {GROWTH_MIN_MODEL} particles" if best is None else
                      f"a model more gained {gains[best]:+.3f} per particle at best (splitting model {best + 1}, at "
                      f"fixed poses), not more than {GROWTH_MIN_GAIN}")
            steps.append(GrowthStep(k + 1, None, None if best is None else best + 1,
                                    None if best is None else gains[best], False, None, tried, best_seed))
            break
        trial, grown = best_trial
        baseline = current
        if confirm is not None:
            trial, grown = confirm(trial, grown)
            baseline = _merged(fixed, trial, best)
        gain = float(trial.mixture - baseline.mixture) / n
        kept = bool(gain > GROWTH_MIN_GAIN and np.bincount(trial.model, minlength=k + 1).min() >= GROWTH_MIN_MODEL)
        steps.append(GrowthStep(k + 1, trial.mixture / n, best + 1, gain, kept,
                                np.bincount(trial.model, minlength=k + 1).tolist(), tried, best_seed))
        log.info("models: %d -> %d, splitting model %d gains %+.3f per particle%s: %s", k, k + 1, best + 1, gain,
                 "" if confirm is None else " with the particles searched again in every model",
                 "kept" if kept else "not kept")
        if not kept:
            searched = "" if confirm is None else ", the particles searched again in every model"
            reason = (f"a model more gained {gain:+.3f} per particle (splitting model {best + 1}{searched}), not more "
                      f"than {GROWTH_MIN_GAIN}" if gain <= GROWTH_MIN_GAIN else
                      f"splitting model {best + 1} left a model of fewer than {GROWTH_MIN_MODEL} particles{searched}")
            break
        current, fixed, k = trial, grown, k + 1
    return ModelCount(k, reason, steps, current)
