"""--scale: each particle's intensity scale. The posterior mean shrinks a noisy fit to 1,
the loaded CTF carries the scale, and on particles of known contrast the estimates follow it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_atoms_map

from multirefine.refine.batch import load_batch
from multirefine.refine.intensity import (
    INTENSITY_COLUMN,
    PRIOR_SD,
    next_scales,
    scales_of,
    with_scales,
)
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX, APIX = 32, 2.0


def test_the_posterior_mean_weighs_the_fit_by_its_precision():
    scales = np.ones(3)
    cross, power, sigma2 = np.array([1.5e4, 1.5, 0.0]), np.array([1e4, 1.0, 0.0]), np.ones(3)
    out = next_scales(scales, cross, power, sigma2)
    assert out[0] == pytest.approx(1.5, rel=1e-3)  # much signal: the fit
    prior = 1 / PRIOR_SD**2
    assert out[1] == pytest.approx((1.5 + prior) / (1.0 + prior))  # little: near 1
    assert out[2] == 1.0  # none: the prior
    assert next_scales(np.array([2.0]), np.array([0.5e4]), np.array([1e4]), np.ones(1))[0] == pytest.approx(1.0, rel=2e-3)


@pytest.fixture(scope="module")
def contrasted(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrast")
    params = SimulationParameters(n_particles=200, snr=1.0, fractions=[1.0], pixel_size_angstrom=APIX, seed=4,
                                  contrast_sd=0.3)
    simulate_dataset(root, [random_atoms_map(BOX, 300, seed=5, spread_px=4.0)], params)
    return root


def test_the_loaded_ctf_carries_the_scale(contrasted):
    from multirefine.io.particles import open_particles

    stack = open_particles(contrasted / "particles.star")
    assert np.all(scales_of(stack) == 1.0)  # no column: 1 for every particle
    scales = np.linspace(0.5, 2.0, len(stack))
    scaled = with_scales(stack, scales)
    np.testing.assert_array_equal(scales_of(scaled), scales)
    rows = np.array([0, 10, 199])
    plain, loaded = load_batch(stack, rows), load_batch(scaled.subset(np.arange(len(stack))), rows)
    torch.testing.assert_close(loaded.ctf, plain.ctf * torch.tensor(scales[rows], dtype=torch.float32)[:, None, None])
    torch.testing.assert_close(loaded.images_ft, plain.images_ft)
    assert INTENSITY_COLUMN in scaled.metadata.columns


@pytest.mark.slow
def test_estimates_follow_the_particles_contrast(contrasted, tmp_path):
    """Contrast SD 0.3 at SNR 1, from the true map: after 2 iterations the scales written
    correlate with the simulator's contrast factors."""
    from multirefine.cli.main import main
    from multirefine.io.star import read_particles_star

    gt = contrasted / "gt_01.mrc"
    run = tmp_path / "run"
    assert main(["refine", "--input", str(contrasted / "particles.star"), "--models", f"{gt},{gt}", "--iter", "2",
                 "--scale", "--nosingle", "--path", str(run)]) == 0
    truth = read_particles_star(contrasted / "truth.star").metadata["mrContrastScale"].to_numpy()
    found = read_particles_star(run / "particles_02.star").metadata[INTENSITY_COLUMN].to_numpy()
    r = np.corrcoef(truth, found)[0, 1]
    print(f"r = {r:.3f}")
    assert r > 0.8


@pytest.mark.slow
def test_continue_with_noise_norm_and_scales_is_the_uninterrupted_run(contrasted, tmp_path):
    """--noise coloured --norm --scale: 1 iteration and --continue to 2 gives the classes,
    poses, scales and maps of 2 iterations in one go (the last maps rebuilt from the stack as
    the run loaded it)."""
    from multirefine.cli.main import main
    from multirefine.io.maps import read_map
    from multirefine.io.star import read_particles_star

    gt = contrasted / "gt_01.mrc"
    common = ["--input", str(contrasted / "particles.star"), "--models", f"{gt},{gt}", "--nosingle",
              "--noise", "coloured", "--norm", "--scale"]
    assert main(["refine", *common, "--iter", "2", "--path", str(tmp_path / "whole")]) == 0
    assert main(["refine", *common, "--iter", "1", "--path", str(tmp_path / "cut")]) == 0
    assert main(["refine", "--continue", str(tmp_path / "cut"), "--iter", "2"]) == 0
    a = read_particles_star(tmp_path / "whole" / "particles_02.star").metadata
    b = read_particles_star(tmp_path / "cut" / "particles_02.star").metadata
    columns = ["rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", INTENSITY_COLUMN]
    np.testing.assert_array_equal(a[columns].to_numpy(), b[columns].to_numpy())
    for m in (1, 2):
        name = f"threed_02_{m:02d}.mrc"
        np.testing.assert_array_equal(read_map(tmp_path / "whole" / name)[0], read_map(tmp_path / "cut" / name)[0])
