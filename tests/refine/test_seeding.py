"""Starting models: maps fitted to the particles' box and pixel size, and the seeds made
from one map (random phases, a fragment removed)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from multirefine.fourier.fft import frequency_grid_3d, rfftn3_centered
from multirefine.refine.seeding import fit_to_box, randomize_phases, remove_fragment


def blob(box: int, center_px: tuple[float, float, float], sigma_px: float) -> np.ndarray:
    idx = np.arange(box) - box // 2
    z, y, x = np.meshgrid(idx, idx, idx, indexing="ij")
    cz, cy, cx = center_px
    return np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma_px**2)).astype(np.float32)


def centroid_px(volume: np.ndarray) -> np.ndarray:
    box = volume.shape[-1]
    idx = np.arange(box) - box // 2
    grids = np.meshgrid(idx, idx, idx, indexing="ij")
    weight = np.clip(volume, 0, None)
    return np.array([(g * weight).sum() / weight.sum() for g in grids])


def test_fit_to_box_resamples_and_clips_keeping_the_density_where_it_was(caplog):
    """A 32 px map at 3 Å/px, fitted to 1.5 Å/px in a 48 box: resampled to 64 px, then
    clipped to 48; a blob 9 Å off centre stays 9 Å off centre. The log says both."""
    volume = blob(32, (3.0, -2.0, 1.0), 2.0)  # px at 3 Å
    with caplog.at_level(logging.INFO, logger="multirefine.refine.seeding"):
        fitted = fit_to_box(volume, 3.0, 1.5, 48, "start.mrc")
    assert fitted.shape == (48, 48, 48)
    np.testing.assert_allclose(centroid_px(fitted) * 1.5, np.array([3.0, -2.0, 1.0]) * 3.0, atol=0.15)
    assert abs(fitted.sum() * 1.5**3 - volume.sum() * 3.0**3) < 0.01 * volume.sum() * 3.0**3  # same mass in Å³
    text = caplog.text
    assert "start.mrc: resampled from 3 to 1.5 Å/px (32 -> 64 px)" in text and "clipped from 64 to 48 px" in text


def test_fit_to_box_pads_and_clips_at_the_same_pixel_size():
    volume = blob(40, (0.0, 0.0, 0.0), 3.0)
    clipped = fit_to_box(volume, 1.0, 1.0, 32, "a")
    np.testing.assert_array_equal(clipped, volume[4:36, 4:36, 4:36])
    padded = fit_to_box(clipped, 1.0, 1.0, 40, "b")
    np.testing.assert_array_equal(padded[4:36, 4:36, 4:36], clipped)
    assert padded.sum() == clipped.sum()
    unchanged = fit_to_box(volume, None, 1.0, 40, "no voxel size in the header")
    np.testing.assert_array_equal(unchanged, volume)


def test_randomize_phases_keeps_amplitudes_and_the_low_resolution():
    """Below the limit the transform is the map's; beyond it the amplitudes are, the phases new."""
    volume = blob(32, (2.0, 0.0, -3.0), 1.5) + blob(32, (-4.0, 3.0, 0.0), 1.0)
    apix, beyond = 2.0, 16.0
    seeds = [randomize_phases(volume, apix, beyond, seed) for seed in (1, 2)]
    ft, ft1 = (rfftn3_centered(torch.from_numpy(v).double()) for v in (volume, seeds[0]))
    kx, ky, kz = frequency_grid_3d(32, dtype=torch.float64)
    radius = torch.sqrt(kx**2 + ky**2 + kz**2)
    low, high = radius <= 32 * apix / beyond, radius > 32 * apix / beyond + 1
    # (off the kx = 0 and Nyquist planes: there irfftn keeps one of each Friedel pair, see randomize_phases)
    planes = (kx == 0) | (kx.abs() == 16)
    high &= ~planes
    torch.testing.assert_close(ft1[low], ft[low])
    torch.testing.assert_close(ft1[high].abs(), ft[high].abs(), rtol=1e-6, atol=1e-6)
    phase_change = (ft1[high] * ft[high].conj()).angle().abs().mean()
    assert phase_change > 1.0  # random phases: mean |change| is pi/2 for uniform ones
    assert not np.allclose(seeds[0], seeds[1])  # one draw per model


def test_remove_fragment_cuts_a_different_dense_part_for_each_seed():
    volume = blob(40, (6.0, 0.0, 0.0), 2.5) + blob(40, (-6.0, 0.0, 0.0), 2.5) + blob(40, (0.0, 7.0, 0.0), 2.5)
    cut = [remove_fragment(volume, seed) for seed in range(6)]
    for c in cut:
        assert np.all(c <= volume + 1e-7) and np.all(c >= 0)
        removed = 1 - c.sum() / volume.sum()
        assert 0.02 < removed < 0.6, removed
    holes = {tuple(np.round(centroid_px(volume - c)).astype(int)) for c in cut}
    assert len(holes) >= 2  # different seeds, different parts
