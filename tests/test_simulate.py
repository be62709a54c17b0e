"""The simulator's realism options, checked by what they do to the images (physics), not
only that they run: the noise spectrum measured on empty boxes, the envelope's power ratio,
contrast factors recovered from the images, backgrounds measured outside the particle, junk
rows; and bad values as one-line errors naming the option."""

from __future__ import annotations

import json
import math

import mrcfile
import numpy as np
import pytest
import starfile
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.errors import InputError
from multirefine.io.maps import write_map
from multirefine.simulate import TRUTH_COLUMNS, SimulationParameters, simulate_dataset

BOX = 24
MAPS = [random_atoms_map(BOX, 150, seed=s, spread_px=3.0) for s in (1, 2)]


def simulate(folder, **options):
    """Simulate two classes (0.7, 0.3) at 1 Å/px into ``folder``; returns the truth table
    (as read back from truth.star), the images and simulation.json."""
    settings = {"n_particles": 200, "snr": 1.0, "fractions": [0.7, 0.3], "pixel_size_angstrom": 1.0, "seed": 5}
    settings.update(options)
    simulate_dataset(folder, MAPS, SimulationParameters(**settings))
    truth = starfile.read(folder / "truth.star")["particles"]
    images = mrcfile.read(folder / "particles.mrcs").astype(np.float64)
    return truth, images, json.loads((folder / "simulation.json").read_text())


def shell_power(images: np.ndarray) -> np.ndarray:
    """Mean ``|F(k)|^2 / D^2`` per shell ``round(|k|)`` = 0 .. D/2 over the full DFT grid."""
    box = images.shape[-1]
    power = (np.abs(np.fft.fft2(images)) ** 2).mean(0) / box**2
    k = np.fft.fftfreq(box, 1 / box)
    shell = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    return np.array([power[shell == i].mean() for i in range(box // 2 + 1)])


def test_defaults_draw_nothing_new(tmp_path):
    """Off by default: no truth columns beyond RELION's, no junk, white noise recorded."""
    truth, _, record = simulate(tmp_path)
    assert not [c for c in truth.columns if c.startswith("mr")]
    assert (truth["rlnClassNumber"] > 0).all() and (truth["rlnCtfBfactor"] == 0).all()
    assert record["noise_power_per_shell"] == [1.0] * (BOX // 2 + 1)
    assert record["noise_shell_frequency_per_angstrom"][-1] == pytest.approx(0.5)
    for name in ("bfactor_angstrom2", "contrast_sd", "background_sd_noise_sigmas",
                 "ramp_sd_noise_sigmas_per_box", "junk_fraction"):
        assert record[name] == 0.0
    assert record["noise_spectrum"] == "white" and record["junk_fragment_pieces"] == []


@pytest.mark.parametrize("spectrum", ["falloff:6,0.2", "shells", "frequencies"])
def test_noise_of_empty_boxes_has_the_recorded_spectrum(tmp_path, spectrum):
    """Empty junk boxes are noise only: their power per shell matches the spectrum recorded in
    simulation.json (which has the requested shape), and their variance is 1 (the SNR's noise
    variance, in the written units); particle images have variance 1 + SNR."""
    shape = None
    if spectrum == "shells":  # one column: power of shells 0, 1, ... of this box
        shape = 1.0 + 4.0 * np.exp(-np.arange(BOX // 2 + 1) / 3.0)
        (tmp_path / "shells.txt").write_text("# power per shell\n" + "\n".join(f"{v:.6f}" for v in shape) + "\n")
        spectrum = str(tmp_path / "shells.txt")
    elif spectrum == "frequencies":  # frequency in 1/Å, power
        (tmp_path / "freq.txt").write_text("0 3\n0.5 1  # linear between\n")
        spectrum = str(tmp_path / "freq.txt")
        shape = 3 - 4 * np.arange(BOX // 2 + 1) / BOX
    else:
        shape = 1 / (1 + np.arange(BOX // 2 + 1) / BOX * 6) + 0.2
    truth, images, record = simulate(tmp_path / "sim", n_particles=300, noise_spectrum=spectrum,
                                     junk_fraction=0.5, junk_kind_weights={"empty": 1, "blobs": 0, "fragment": 0})
    empty = images[(truth["mrJunkKind"] == "empty").to_numpy()]
    assert len(empty) == 150
    expected = np.asarray(record["noise_power_per_shell"])
    measured = shell_power(empty)
    np.testing.assert_allclose(measured[1:], expected[1:], rtol=0.15)  # shell 1 holds 8 pixels
    assert expected.max() / expected.min() > 2  # coloured, not white
    # The recorded spectrum has the shape asked for (a shell's mean against its centre value).
    np.testing.assert_allclose(expected / expected[1], shape / shape[1], rtol=0.06)
    assert empty.var(axis=(1, 2)).mean() == pytest.approx(1.0, rel=0.05)
    particles = images[(truth["rlnClassNumber"] > 0).to_numpy()]
    assert particles.var(axis=(1, 2)).mean() == pytest.approx(1.0 + 1.0, rel=0.1)


def test_bfactor_scales_signal_power_by_the_envelope(tmp_path):
    """The envelope multiplies the amplitude by exp(-B k^2 / 4): summed over the same particles
    (noise negligible), every pixel's power drops by exp(-B k^2 / 2) against B = 0; the CTF the
    STAR files give does not carry it."""
    bfactor = 60.0
    spectra = {}
    for b in (0.0, bfactor):
        truth, images, record = simulate(tmp_path / f"b{b:g}", n_particles=60, snr=1e6, bfactor_angstrom2=b)
        spectra[b] = (np.abs(np.fft.fft2(images * record["noise_sigma"])) ** 2).sum(0)
        assert (truth["rlnCtfBfactor"] == 0).all()
    k = np.fft.fftfreq(BOX, 1.0)  # 1/Å at 1 Å/px
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    band = (k2 > 0.05**2) & (k2 < 0.3**2)
    np.testing.assert_allclose(spectra[bfactor][band] / spectra[0.0][band], np.exp(-bfactor * k2[band] / 2), rtol=0.02)
    assert np.exp(-bfactor * 0.3**2 / 2) < 0.1  # the band reaches well into the envelope


def test_contrast_factors_have_the_mean_and_sd_asked_and_scale_the_signal(tmp_path):
    """Factors: mean 1, SD 0.2, all positive; each image (noise negligible) is its factor times
    the same particle without it, and the SNR counts the factors (noise sigma scaled by
    sqrt(mean c^2))."""
    n, sd = 500, 0.2
    truth, images, record = simulate(tmp_path / "c", n_particles=n, snr=1e6, contrast_sd=sd)
    _, plain, plain_record = simulate(tmp_path / "plain", n_particles=n, snr=1e6)
    scale = truth["mrContrastScale"].to_numpy()
    assert (scale > 0).all()
    assert scale.mean() == pytest.approx(1.0, abs=3 * sd / math.sqrt(n))
    assert scale.std() == pytest.approx(sd, rel=0.1)
    signal, reference = images * record["noise_sigma"], plain * plain_record["noise_sigma"]
    fitted = (signal * reference).sum((1, 2)) / (reference**2).sum((1, 2))
    np.testing.assert_allclose(fitted, scale, rtol=1e-3)
    ratio = (record["noise_sigma"] / plain_record["noise_sigma"]) ** 2
    assert ratio == pytest.approx((scale**2).mean(), rel=0.05)


def test_background_offsets_and_ramps_match_truth(tmp_path):
    """The offset and ramp are added exactly (the image minus the same simulation without them
    is the plane in truth.star), and a plane fitted outside the particle's radius recovers
    them."""
    truth, images, _ = simulate(tmp_path / "bg", n_particles=100, snr=0.1, background_sd_noise_sigmas=2.0,
                                ramp_sd_noise_sigmas_per_box=3.0)
    _, plain, _ = simulate(tmp_path / "plain", n_particles=100, snr=0.1)
    axis = np.arange(BOX) - BOX // 2
    y, x = np.meshgrid(axis, axis, indexing="ij")
    offset, ramp_x, ramp_y = (truth[c].to_numpy()[:, None, None] for c in
                              ("mrBackgroundOffset", "mrBackgroundRampX", "mrBackgroundRampY"))
    np.testing.assert_allclose(images - plain, offset + (ramp_x * x + ramp_y * y) / BOX, atol=1e-5)
    outside = np.hypot(x, y) > 9  # the atoms lie within ~3 sigma = 9 px of the centre
    design = np.column_stack([np.ones(outside.sum()), x[outside] / BOX, y[outside] / BOX])
    fitted, *_ = np.linalg.lstsq(design, images[:, outside].T, rcond=None)
    standard_error = np.sqrt(np.diag(np.linalg.inv(design.T @ design)))  # of unit white noise
    for row, column in enumerate(("mrBackgroundOffset", "mrBackgroundRampX", "mrBackgroundRampY")):
        error = fitted[row] - truth[column].to_numpy()
        # The noise's scatter, and a bias from the particle's CTF fringes (measured -0.1 for
        # the offset at SNR 0.1, 0.006 at SNR 1e-4).
        assert error.std() < 1.5 * standard_error[row], column
        assert abs(error.mean()) < 0.15, column
        assert np.corrcoef(fitted[row], truth[column])[0, 1] > 0.97, column


def test_junk_rows_are_class_0_of_the_kinds_asked(tmp_path):
    """An exact junk count, class 0 with its kind; the class fractions apply to the rest;
    empty boxes hold noise only, aggregates as much signal as a particle, fragments less;
    particles.star has none of the truth."""
    n, snr = 600, 10.0
    truth, images, record = simulate(tmp_path, n_particles=n, snr=snr, junk_fraction=0.25)
    junk = (truth["rlnClassNumber"] == 0).to_numpy()
    assert junk.sum() == n // 4
    assert (truth["mrJunkKind"][junk] != "none").all() and (truth["mrJunkKind"][~junk] == "none").all()
    kinds = truth["mrJunkKind"][junk].value_counts(normalize=True)
    np.testing.assert_allclose(kinds[["empty", "blobs", "fragment"]], 1 / 3, atol=0.1)
    fractions = truth["rlnClassNumber"][~junk].value_counts(normalize=True).sort_index()
    np.testing.assert_allclose(fractions, [0.7, 0.3], atol=0.06)
    fragment = (truth["mrJunkKind"] == "fragment").to_numpy()
    pieces = record["junk_fragment_pieces"]
    assert 1 <= len(pieces) <= 4 and set(truth["mrFragmentPiece"][fragment]) <= set(range(1, len(pieces) + 1))
    assert (truth["mrFragmentPiece"][~fragment] == 0).all()
    blobs = (truth["mrJunkKind"] == "blobs").to_numpy()
    assert truth["mrBlobCount"][blobs].between(2, 6).all() and (truth["mrBlobCount"][~blobs] == 0).all()
    variance = images.var(axis=(1, 2))
    empty = (truth["mrJunkKind"] == "empty").to_numpy()
    assert variance[empty].mean() == pytest.approx(1.0, rel=0.05)
    assert variance[~junk].mean() == pytest.approx(1 + snr, rel=0.15)
    assert variance[blobs].mean() == pytest.approx(variance[~junk].mean(), rel=0.05)
    assert 1.5 < variance[fragment].mean() < 0.9 * variance[~junk].mean()
    user = starfile.read(tmp_path / "particles.star")["particles"]
    assert not [c for c in user.columns if c.startswith(("mr", "rlnClass", "rlnAngle", "rlnOrigin"))]
    assert set(TRUTH_COLUMNS) - {"mrContrastScale", "mrBackgroundOffset", "mrBackgroundRampX",
                                 "mrBackgroundRampY"} <= set(truth.columns)


@pytest.fixture(scope="module")
def map_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    for k, volume in enumerate(MAPS, 1):
        write_map(root / f"map{k}.mrc", volume, 1.0)
    return f"{root}/map1.mrc,{root}/map2.mrc"


def test_cli_draws_and_records_every_option(tmp_path, map_files, capsys):
    code = main(["simulate", str(tmp_path / "sim"), "--maps", map_files, "--n", "200", "--snr", "0.1",
                 "--bfactor", "40", "--noise-spectrum", "falloff:8,0.3", "--contrast-sd", "0.2",
                 "--background-sd", "1", "--ramp-sd", "1", "--junk", "0.15", "--junk-mix", "2,1,1",
                 "--defocus", "0.5,3.5", "--seed", "2"])
    assert code == 0
    assert "junk: 30" in capsys.readouterr().out
    truth = starfile.read(tmp_path / "sim" / "truth.star")["particles"]
    assert set(TRUTH_COLUMNS) <= set(truth.columns)
    assert truth["rlnDefocusU"].between(5000, 35000).all()
    assert truth["rlnDefocusU"].min() < 10000 and truth["rlnDefocusU"].max() > 25000
    record = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert record["defocus_min_angstrom"] == 5000 and record["defocus_max_angstrom"] == 35000
    assert record["bfactor_angstrom2"] == 40 and record["noise_spectrum"] == "falloff:8,0.3"
    assert record["contrast_sd"] == 0.2 and record["junk_fraction"] == 0.15
    assert record["background_sd_noise_sigmas"] == 1 and record["ramp_sd_noise_sigmas_per_box"] == 1
    assert record["junk_kind_weights"] == {"empty": 2, "blobs": 1, "fragment": 1}
    assert len(record["noise_power_per_shell"]) == BOX // 2 + 1


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--junk", "1"], "--junk 1"),
        (["--junk", "-0.1"], "--junk"),
        (["--junk-mix", "0,0,0"], "--junk-mix"),
        (["--junk-mix", "1,2"], "--junk-mix"),
        (["--junk-mix", "1,x,1"], "--junk-mix"),
        (["--contrast-sd", "-0.2"], "--contrast-sd"),
        (["--background-sd", "nan"], "--background-sd"),
        (["--ramp-sd", "-1"], "--ramp-sd"),
        (["--bfactor", "-10"], "--bfactor"),
        (["--fractions=-1,2"], "--fractions"),
        (["--defocus", "3,1"], "--defocus"),
        (["--defocus", "1"], "--defocus"),
        (["--noise-spectrum", "pink"], "--noise-spectrum pink"),
        (["--noise-spectrum", "falloff:x,1"], "--noise-spectrum"),
        (["--noise-spectrum", "falloff:10"], "--noise-spectrum"),
        (["--noise-spectrum", "falloff:-10,0.1"], "--noise-spectrum"),
        (["--noise-spectrum", "{tmp}/bad.txt"], "--noise-spectrum"),
        (["--noise-spectrum", "{tmp}/negative.txt"], "--noise-spectrum"),
        (["--noise-spectrum", "{tmp}/short.txt"], "--noise-spectrum"),
    ],
)
def test_bad_option_gives_one_line_error_naming_it(tmp_path, map_files, capsys, options, expected):
    (tmp_path / "bad.txt").write_text("0 1\n0.1 2 3\n")
    (tmp_path / "negative.txt").write_text("1\n-2\n1\n")
    (tmp_path / "short.txt").write_text("1\n2\n3\n")  # fewer shells than the box's 13
    argv = ["simulate", str(tmp_path / "out"), "--maps", map_files, "--n", "10", "--snr", "1"]
    assert main(argv + [o.format(tmp=tmp_path) for o in options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and "Traceback" not in err


def test_parameters_check_themselves():
    """The library's callers get the same errors as the command line."""
    with pytest.raises(InputError, match="--junk"):
        SimulationParameters(n_particles=10, snr=1, fractions=[1.0], pixel_size_angstrom=1, junk_fraction=1.0)
    with pytest.raises(InputError, match="--junk-mix"):
        SimulationParameters(n_particles=10, snr=1, fractions=[1.0], pixel_size_angstrom=1,
                             junk_kind_weights={"empty": 1.0})


def test_the_difference_mask_covers_where_the_states_differ(tmp_path, atoms_map):
    """Two states, the second with a blob added off-centre: ``difference_mask.mrc`` is 1 over the
    blob and 0 over the far side of the particle; one state writes none."""
    from multirefine.io.maps import read_map
    from multirefine.simulate import SimulationParameters, simulate_dataset

    c = np.arange(32) - 16
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blob = (0.5 * atoms_map.max() * np.exp(-((x - 6) ** 2 + y**2 + z**2) / 4.0)).astype(np.float32)
    params = SimulationParameters(n_particles=10, snr=1.0, fractions=[0.5, 0.5], pixel_size_angstrom=1.0, seed=1)
    simulate_dataset(tmp_path / "two", [atoms_map, atoms_map + blob], params)
    mask = read_map(tmp_path / "two" / "difference_mask.mrc")[0]
    assert mask[16, 16, 22] == 1 and np.all(mask[:, :, :14] == 0) and 0 <= mask.min() and mask.max() == 1
    simulate_dataset(tmp_path / "one", [atoms_map], SimulationParameters(n_particles=5, snr=1.0, fractions=[1.0],
                                                                          pixel_size_angstrom=1.0, seed=1))
    assert not (tmp_path / "one" / "difference_mask.mrc").exists()
