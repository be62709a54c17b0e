"""The model choice's maps: each model's last map rebuilt without a fold of particles
(multirefine.refine.choice.leave_out_volumes) must be the map itself when nothing is left out, and the map of
the other particles alone when a fold is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multirefine.fourier.masks import flatten_solvent, soft_sphere_mask
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.refine.choice import LastReconstruction, fold_edges, leave_out_volumes
from multirefine.refine.reconstruct import accumulate, gold_standard_reconstruction
from multirefine.refine.solvent import ModelMasks
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX, APIX = 32, 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, atoms_map):
    from multirefine.io.particles import open_particles

    volume = atoms_map
    root = tmp_path_factory.mktemp("choice")
    params = SimulationParameters(n_particles=240, snr=0.5, fractions=[1.0], pixel_size_angstrom=APIX, seed=2)
    simulate_dataset(root / "sim", [volume], params)
    return open_particles(root / "sim" / "truth.star")


def _last(stack, rows, weights, mask):
    halves = rows % 2 + 1
    groups = [rows[halves == 1], rows[halves == 2]]
    group_weights = [weights[halves == 1], weights[halves == 2]]
    acc1, acc2 = accumulate(stack, groups, 64, weights=group_weights)
    result = gold_standard_reconstruction(acc1, acc2)
    volume = flatten_solvent(torch.from_numpy(result.full_map), mask).numpy()  # as the driver masks
    acc1 += acc2
    entries = [(0, stack, g, w) for g, w in zip(groups, group_weights)]
    return LastReconstruction([acc1], [result.inverse_ssnr], [volume], entries), result.inverse_ssnr


def test_leaving_nothing_out_gives_the_map(stack):
    mask = soft_sphere_mask(BOX, BOX / 2 - 2, 3.0)
    rows = np.arange(len(stack))
    last, _ = _last(stack, rows, np.ones(len(rows)), mask)
    volumes = leave_out_volumes(last, 0, 0, [torch.eye(3)[None]], ModelMasks(BOX, BOX / 2 - 2), BOX / 2, np.array([2.0]), "cpu")
    expected = prepare_volume_ft(torch.from_numpy(last.maps[0]) * 2.0)
    assert torch.allclose(volumes[0], expected, atol=1e-4 * float(expected.abs().max()))


def test_leaving_a_fold_out_gives_the_map_of_the_rest(stack):
    """Rows 60-119 left out of a weighted reconstruction: the map from the other rows only,
    under the same Wiener filter (the filter is the full map's, not refitted)."""
    mask = soft_sphere_mask(BOX, BOX / 2 - 2, 3.0)
    rows = np.arange(len(stack))
    weights = np.linspace(0.5, 1.0, len(rows))
    last, inverse_ssnr = _last(stack, rows, weights, mask)
    volumes = leave_out_volumes(last, 60, 120, [torch.eye(3)[None]], ModelMasks(BOX, BOX / 2 - 2), BOX / 2, np.array([1.0]), "cpu")
    rest = np.concatenate([rows[:60], rows[120:]])
    (acc,) = accumulate(stack, [rest], 64, weights=[np.concatenate([weights[:60], weights[120:]])])
    expected = prepare_volume_ft(flatten_solvent(acc.reconstruct(None, inverse_ssnr), mask))
    assert torch.allclose(volumes[0], expected, atol=1e-3 * float(expected.abs().max()))
    full = prepare_volume_ft(torch.from_numpy(last.maps[0]))
    assert not torch.allclose(volumes[0], full, atol=1e-2 * float(full.abs().max()))


def test_maps_rebuilt_on_a_smaller_box_agree_within_the_band(stack):
    """Within a band of radius 8 px the rebuild needs a 20 px box, not 32: its Fourier
    samples inside the band are those of the whole-box rebuild (mask resampled aside)."""
    mask = soft_sphere_mask(BOX, BOX / 2 - 2, 3.0)
    rows = np.arange(len(stack))
    last, _ = _last(stack, rows, np.ones(len(rows)), mask)
    args = (last, 60, 120, [torch.eye(3)[None]], ModelMasks(BOX, BOX / 2 - 2))
    small = leave_out_volumes(*args, 8.0, np.array([1.0]), "cpu")[0]
    whole = leave_out_volumes(*args, BOX / 2, np.array([1.0]), "cpu")[0]
    size = 2 * BOX
    k = torch.arange(size, dtype=torch.float32) - size // 2
    z, y, x = torch.meshgrid(k, k, torch.arange(size // 2 + 1, dtype=torch.float32), indexing="ij")
    band = torch.sqrt(x**2 + y**2 + z**2) <= 2 * 8  # padded-grid units
    error = (small[band] - whole[band]).abs().pow(2).sum() / whole[band].abs().pow(2).sum()
    assert float(error) < 1e-3  # measured 3e-4
    outside = (z.abs() > 20) | (y.abs() > 20) | (x > 20)  # beyond the 20 px box (40 padded)
    assert float(small[outside].abs().max()) == 0.0 and float(whole[outside].abs().max()) > 0


def test_folds_cover_every_row_once():
    for n, folds in [(1000, 12), (5, 12), (6000, 12)]:
        edges = fold_edges(n, folds)
        assert edges[0] == 0 and edges[-1] == n and np.all(np.diff(edges) > 0)
        assert len(edges) - 1 == min(folds, n)


def test_sep_layers_take_the_best_poses_within_the_chosen_model():
    """--sep 2: each particle enters its chosen model at its two best poses there, weight 1/2;
    a particle with one pose in that model among its best gets the model's best pose twice.
    --sep 1: every model, at its best pose, weighted by the posterior."""
    from multirefine.refine.assignment import Searched
    from multirefine.refine.layers import make_layers

    def turn(angle):  # a rotation about z, to tell poses apart
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    n, k = 2, 2
    top_model = np.array([[0, 1, 0], [1, 0, 0]])  # particle 0: poses in 0, 1, 0; particle 1: 1, 0, 0
    top_rot = np.array([[turn(a) for a in (0.1, 0.2, 0.3)], [turn(a) for a in (0.4, 0.5, 0.6)]])
    top_shift = np.arange(n * 3 * 2, dtype=float).reshape(n, 3, 2)
    model_rot = np.array([[turn(0.1), turn(0.2)], [turn(0.5), turn(0.4)]])
    model_shift = np.array([[top_shift[0, 0], top_shift[0, 1]], [top_shift[1, 1], top_shift[1, 0]]])
    found = Searched(np.array([[3.0, 2.0], [2.5, 2.9]]), model_rot, model_shift, np.zeros((n, k)), np.ones(n),
                      top_model, top_rot, top_shift, np.array([[3.0, 2.0, 1.0], [2.9, 2.5, 2.0]]))
    chosen = np.array([0, 1])
    layers = make_layers(found, chosen, np.eye(k)[chosen], sep=2)
    assert len(layers) == 2
    for layer in layers:
        models, weights = layer.model, layer.weights
        np.testing.assert_array_equal(models, chosen)
        np.testing.assert_allclose(weights, 0.5)
    # particle 0 in model 0: its poses 0 and 2 (turns 0.1 and 0.3)
    np.testing.assert_allclose(layers[0].rotations[0], turn(0.1))
    np.testing.assert_allclose(layers[1].rotations[0], turn(0.3))
    np.testing.assert_allclose(layers[1].shifts_px[0], top_shift[0, 2])
    # particle 1 in model 1: only its first pose is there; the second layer is model 1's best
    np.testing.assert_allclose(layers[0].rotations[1], turn(0.4))
    np.testing.assert_allclose(layers[1].rotations[1], model_rot[1, 1])
    np.testing.assert_allclose(layers[1].scores[1], 2.9)
    hard = make_layers(found, chosen, np.eye(k)[chosen], sep=1)
    assert len(hard) == k
    np.testing.assert_allclose(hard[1].rotations, model_rot[:, 1])
    np.testing.assert_allclose(hard[1].weights, [0.0, 1.0])


def test_hypothesis_layers_weigh_the_distinct_poses_by_their_posteriors():
    """--hypotheses 3: each particle enters its chosen model at its distinct poses there
    (the search's tracks, best first, ``-inf`` where a track was dropped), weighted by the
    posteriors of the ls score (``exp(2 ls / sigma^2)``, sigma^2 the image power per band
    pixel), summing to 1; a missing hypothesis is the model's best at weight 0; every entry
    carries the particle's best score (so --m3dkeep keeps a particle whole)."""
    from multirefine.refine.assignment import Searched
    from multirefine.refine.layers import make_layers

    def turn(angle):
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    n, k, n_pixels = 2, 2, 100.0
    image_power = np.array([200.0, 400.0])  # sigma^2 = 2 and 4
    top_model = np.array([[0, 1, 0, 0], [1, 0, 1, 0]])
    top_scores = np.array([[10.0, 9.0, 9.5, -np.inf], [20.0, 19.0, 18.0, 17.0]])
    top_rot = np.array([[turn(a) for a in (0.1, 0.2, 0.3, 0.35)], [turn(a) for a in (0.4, 0.5, 0.6, 0.7)]])
    top_shift = np.arange(n * 4 * 2, dtype=float).reshape(n, 4, 2)
    model_rot = np.array([[turn(0.1), turn(0.2)], [turn(0.5), turn(0.4)]])
    model_shift = np.array([[top_shift[0, 0], top_shift[0, 1]], [top_shift[1, 1], top_shift[1, 0]]])
    found = Searched(np.array([[10.0, 9.0], [19.0, 20.0]]), model_rot, model_shift, np.zeros((n, k)), image_power,
                     top_model, top_rot, top_shift, top_scores)
    chosen = np.array([0, 1])
    layers = make_layers(found, chosen, np.eye(k)[chosen], sep=1, hypotheses=3, n_pixels=n_pixels)
    assert len(layers) == 3
    weights = np.stack([layer.weights for layer in layers], 1)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    # particle 0, model 0: poses 0 (10.0) and 2 (9.5); log-likelihoods 2 ls / 2: weights 1 : e^-0.5
    np.testing.assert_allclose(weights[0], [1 / (1 + np.exp(-0.5)), np.exp(-0.5) / (1 + np.exp(-0.5)), 0.0])
    np.testing.assert_allclose(layers[1].rotations[0], turn(0.3))
    np.testing.assert_allclose(layers[2].rotations[0], model_rot[0, 0])  # missing: the best, weight 0
    # particle 1, model 1: poses 0 (20.0) and 2 (18.0); 2 ls / 4: weights 1 : e^-1
    np.testing.assert_allclose(weights[1, :2], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))])
    np.testing.assert_allclose(layers[1].shifts_px[1], top_shift[1, 2])
    for layer in layers:
        np.testing.assert_array_equal(layer.model, chosen)
        np.testing.assert_allclose(layer.scores, [10.0, 20.0])


def test_m3dkeep_makes_each_map_from_its_best_scored_particles(stack):
    """--m3dkeep 0.5: each model's map comes from the half of its particles with the best
    scores, and is the map made from those particles alone; the count made from is reported."""
    from multirefine.geometry.euler import euler_to_matrix
    from multirefine.refine.layers import Layer, layer_stacks, reconstruct_models

    meta, n = stack.metadata, len(stack)
    rotations = euler_to_matrix(meta["rlnAngleRot"], meta["rlnAngleTilt"], meta["rlnAnglePsi"])
    shifts = meta[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / APIX
    model = (np.arange(n) >= n // 2).astype(np.int64)  # two models, 120 particles each
    score = np.random.default_rng(0).random(n)
    halves = np.arange(n) % 2 + 1
    masks = ModelMasks(BOX, BOX / 2 - 2)
    start = [np.zeros((BOX,) * 3, np.float32)] * 2

    def made(models, keep):
        layers = [Layer(models, rotations, shifts, score, np.ones(n))]
        _, stacks = layer_stacks(stack, layers, halves, APIX)
        return reconstruct_models(stack, layers, stacks, halves, start, [torch.eye(3)[None]] * 2, masks, keep,
                                   "cpu", None, "test")

    kept = made(model, 0.5)
    assert kept.particles_in_maps == [n // 4, n // 4]
    best_half = model.copy()
    for m in (0, 1):
        own = np.nonzero(model == m)[0]
        best_half[own[score[own] < np.median(score[own])]] = -1  # in no model
    alone = made(best_half, 1.0)
    assert alone.particles_in_maps == [n // 4, n // 4]
    for a, b in zip(kept.maps, alone.maps):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()))
    every = made(model, 1.0)
    assert every.particles_in_maps == [n // 2, n // 2]
    assert not np.allclose(every.maps[0], kept.maps[0], atol=1e-3 * float(np.abs(every.maps[0]).max()))
