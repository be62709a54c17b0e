"""The noise model: the estimate from the images' backgrounds recovers the spectrum the
simulator drew, and whitened images of noise alone have a flat spectrum."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_atoms_map

from multirefine.fourier.fft import radial_index_2d
from multirefine.io.particles import open_particles
from multirefine.refine.batch import load_batch
from multirefine.refine.noise import NoiseModel, estimate_noise_from_edges, whitened_stacks
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX = 32


@pytest.fixture(scope="module")
def coloured(tmp_path_factory):
    """400 particles with coloured noise (more power at low frequency) and 100 empty boxes."""
    root = tmp_path_factory.mktemp("noise")
    params = SimulationParameters(n_particles=500, snr=0.1, fractions=[1.0], pixel_size_angstrom=2.0, seed=3,
                                  noise_spectrum="falloff:20,0.3,2", junk_fraction=0.2,
                                  junk_kind_weights={"empty": 1.0, "blobs": 0.0, "fragment": 0.0})
    simulate_dataset(root, [random_atoms_map(BOX, 200, seed=1, spread_px=3.0)], params)
    truth = np.asarray(json.loads((root / "simulation.json").read_text())["noise_power_per_shell"])
    return open_particles(root / "truth.star"), truth / truth[1:].mean()


def test_the_background_gives_the_noise_spectrum(coloured):
    stack, truth = coloured
    model = estimate_noise_from_edges(stack, radius_px=9.0)
    assert model.power.shape == (1, BOX // 2 + 1)
    assert truth[1] > 2 * truth[-1]  # coloured indeed
    np.testing.assert_allclose(model.power[0][2:], truth[2:], rtol=0.12)


def test_whitened_noise_is_white(coloured):
    """Empty boxes (noise only), whitened by the model, hold the same power in every shell;
    unwhitened they do not."""
    stack, _ = coloured
    empty = np.flatnonzero(stack.metadata["rlnClassNumber"].to_numpy() == 0)
    whitened = stack.with_noise(estimate_noise_from_edges(stack, radius_px=9.0))
    assert whitened.subset(empty[:5]).noise is whitened.noise  # subsets keep the model
    shells = radial_index_2d(BOX)

    def shell_power(s):
        batch = load_batch(s, empty, center=False)
        power = (batch.images_ft.abs() ** 2).mean(0)
        return np.array([float(power[shells == r].mean()) for r in range(2, BOX // 2)])

    raw, white = shell_power(stack), shell_power(whitened)
    assert raw.max() / raw.min() > 2
    assert white.max() / white.min() < 1.35
    batch = load_batch(whitened, empty[:3], center=False)
    plain = load_batch(stack, empty[:3], center=False)
    sigma = plain.images_ft.abs() / batch.images_ft.abs().clamp_min(1e-12)
    ctf_ratio = plain.ctf / batch.ctf  # the CTF is divided by the same noise amplitude
    assert torch.allclose(sigma[:, 1:, 1:], ctf_ratio[:, 1:, 1:], rtol=1e-3)


def test_optics_groups_get_their_own_spectra(coloured):
    stack, _ = coloured
    meta = stack.metadata.copy()
    meta["rlnOpticsGroup"] = np.where(np.arange(len(meta)) % 2 == 0, 1, 2)
    model = estimate_noise_from_edges(stack.with_metadata(meta), radius_px=9.0)
    assert model.group_values == (1, 2) and model.power.shape[0] == 2
    np.testing.assert_array_equal(model.group_index(meta.iloc[:4]), [0, 1, 0, 1])
    np.testing.assert_allclose(model.power[0][2:], model.power[1][2:], rtol=0.15)  # the same noise in both


def test_white_leaves_the_stacks_as_they_are(coloured):
    stack, _ = coloured
    assert whitened_stacks(stack, stack, 9.0, "white") == (stack, stack)
    a, b = whitened_stacks(stack, stack, 9.0, "coloured")
    assert a is b and isinstance(a.noise, NoiseModel)
