"""The polar global search: its in-plane FFT gives the Cartesian scores, and it finds poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.refine.test_search import BAND, BOX, random_atoms_map, random_rotations, simulate

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.grids import angular_distance, projection_directions
from multirefine.refine.polar import (
    make_polar_grid,
    make_polar_references,
    sample_polar,
    search_global_polar,
)
from multirefine.refine.scoring import make_band, shift_grid
from multirefine.refine.search import make_references, search_global


@pytest.fixture(scope="module")
def volumes_ft():
    return prepare_volume_ft(torch.as_tensor(np.stack([random_atoms_map(s) for s in (0, 2)])))


def directions(step: float) -> torch.Tensor:
    rot, tilt = projection_directions(step)
    return torch.as_tensor(euler_to_matrix(rot, tilt, np.zeros_like(rot)), dtype=torch.float32)


def test_polar_samples_of_a_plane_wave():
    """Bilinear polar samples of a transform linear in k on each half plane are exact, the half
    with kx < 0 read through Friedel symmetry."""
    grid = make_polar_grid(BOX, BAND, 10.0)
    band = make_band(BOX, BOX / 2, 0.0)
    ft = torch.zeros(BOX * (BOX // 2 + 1), dtype=torch.complex64)
    # i (0.3 kx + 0.7 ky) + 0.2 kx: Hermitian (f(-k) = conj f(k)) in the real part's sign.
    ft[band.index] = torch.complex(0.2 * band.kx.abs(), 0.3 * band.kx + 0.7 * band.ky)
    got = sample_polar(ft.reshape(BOX, BOX // 2 + 1), grid)
    want = torch.complex(0.2 * grid.kx.abs(), 0.3 * grid.kx + 0.7 * grid.ky)
    torch.testing.assert_close(got, want.to(torch.complex64), atol=1e-5, rtol=1e-5)
    assert grid.n_angles % 8 == 0 and grid.n_angles >= 2 * np.pi * float(grid.radii[-1])


def test_polar_scores_are_the_cartesian_scores_at_every_inplane_angle(volumes_ft):
    """The in-plane FFT: the polar score at (direction, t) is the Cartesian band score at pose
    Rz(-t 360/T) A0, up to the sampling (bilinear particle side, polar vs square pixels)."""
    rot = random_rotations(6, 3)
    ft, ctf = simulate(volumes_ft[:1], np.zeros(6, dtype=int), rot, torch.zeros(6, 2), snr=2.0, seed=4)
    dirs = directions(30.0)[:5]
    grid = make_polar_grid(BOX, BAND, 10.0)
    polar = make_polar_references(volumes_ft[:1], dirs, grid)
    found = search_global_polar(ft, ctf, polar, torch.zeros(1, 2), score="ls", top=5 * grid.n_inplane)
    t = torch.arange(grid.n_inplane, dtype=torch.float64) * (-360 / grid.n_inplane)
    psi = euler_to_matrix(torch.zeros_like(t), torch.zeros_like(t), t).float()
    poses = (psi[None] @ dirs[:, None]).reshape(-1, 3, 3)  # j-major, as the polar codes
    cartesian = search_global(ft, ctf, make_references(volumes_ft[:1], poses, BAND), torch.zeros(1, 2),
                              score="ls", top=len(poses))
    for i in range(6):  # measured 0.98-0.995 (exact but for the sampling)
        a = torch.zeros(len(poses))
        a[found.pose_index[i]] = found.score[i]
        b = torch.zeros(len(poses))
        b[cartesian.pose_index[i]] = cartesian.score[i]
        r = np.corrcoef(a.numpy(), b.numpy())[0, 1]
        assert r > 0.97, (i, r)
    # The poses returned are those poses.
    torch.testing.assert_close(found.rotations[:, 0], poses[found.pose_index[:, 0]])


@pytest.mark.parametrize("snr", [None, 1.0])
def test_polar_search_finds_model_pose_and_shift(volumes_ft, device, snr):
    """Off-grid poses and shifts: the best polar pose is within the grid's reach of the truth."""
    n = 40
    rng = np.random.default_rng(5)
    models = rng.integers(0, 2, n)
    truth = random_rotations(n, 6)
    shift = torch.as_tensor(rng.uniform(-2.5, 2.5, (n, 2))).float()
    ft, ctf = simulate(volumes_ft, models, truth, shift, snr=snr, seed=7)
    grid = make_polar_grid(BOX, BAND, 10.0, device=device)
    polar = make_polar_references(volumes_ft.to(device), directions(10.0).to(device), grid)
    found = search_global_polar(ft.to(device), ctf.to(device), polar, shift_grid(3.0, 1.0), score="ls", top=3)
    correct = found.model[:, 0].cpu().numpy() == models
    assert correct.mean() >= 0.95
    error = angular_distance(found.rotations[:, 0].cpu(), truth).numpy()[correct]
    assert np.median(error) < 8.0 and np.quantile(error, 0.9) < 12.0, error
    shift_error = (found.shift_px[:, 0].cpu() - shift).norm(dim=1).numpy()[correct]
    assert np.median(shift_error) < 1.0, shift_error
    # Per-model bests: the chosen model's is the best overall.
    torch.testing.assert_close(found.model_scores.amax(1), found.score[:, 0])
    torch.testing.assert_close(found.model_rotations[torch.arange(n), found.model[:, 0].cpu()], found.rotations[:, 0])


@pytest.mark.parametrize("with_ctf", [True, False])
def test_polar_search_in_particle_chunks_gives_the_same_result(volumes_ft, device, with_ctf):
    """A budget smaller than one batch's shifted polar images splits the particles (here into
    chunks of 3 of 10): every field of the result is the whole batch's."""
    n = 10
    rng = np.random.default_rng(8)
    ft, ctf = simulate(volumes_ft, rng.integers(0, 2, n), random_rotations(n, 9), torch.zeros(n, 2), snr=1.0, seed=3)
    ft, ctf = ft.to(device), ctf.to(device) if with_ctf else None
    grid = make_polar_grid(BOX, BAND, 15.0, device=device)
    polar = make_polar_references(volumes_ft.to(device), directions(15.0).to(device), grid)
    shifts = shift_grid(2.0, 1.0, device=device)
    whole = search_global_polar(ft, ctf, polar, shifts, score="ls", top=3)
    budget = 3 * len(shifts) * grid.kx.numel()
    chunked = search_global_polar(ft, ctf, polar, shifts, score="ls", top=3, max_elements=budget)
    for name in vars(whole):
        # Float sums of thousands of terms round differently when the matrix products are cut
        # otherwise (seen on a 16-core CPU): within 1e-5 of the field's largest value.
        a, b = getattr(chunked, name), getattr(whole, name)
        atol = 1e-5 * b.abs().max().item() if b.is_floating_point() else 0
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)
