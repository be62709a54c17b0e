"""The search kernel: exact recovery on clean data, accuracy under noise, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multirefine.fourier.ctf import calculate_ctf_2d
from multirefine.fourier.fft import irfft2_centered, rfft2_centered
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.shift import phase_ramp_2d, shift_images_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.grids import angular_distance, local_rotations, orientation_grid
from multirefine.refine.scoring import (
    band_phase_ramp,
    band_slices,
    make_band,
    scale_terms,
    shift_grid,
)
from multirefine.refine.search import (
    make_references,
    refine_assignments,
    search_global,
    search_local,
)

BOX = 32
APIX = 2.0  # Å/px: declared for a realistic CTF (the maps themselves are built at 1 Å/px)
BAND = 12.0  # px of the 32 box: 5.3 Å at 2 Å/px


def random_atoms_map(seed: int) -> np.ndarray:
    """As ``tests/conftest.py``'s (300 carbon-like atoms, 1 Å/px, 2 Å), a little more compact."""
    from multirefine.simulate import AtomicModel, map_from_atoms

    positions = np.random.default_rng(seed).normal(0, 3.5, (300, 3))
    model = AtomicModel(positions, np.full(300, 6.0), "random atoms")
    return map_from_atoms(model, BOX, 1.0, 2.0, center_angstrom=np.zeros(3))


@pytest.fixture(scope="module")
def volumes_ft() -> torch.Tensor:
    maps = [random_atoms_map(seed) for seed in (0, 2)]
    return prepare_volume_ft(torch.as_tensor(np.stack(maps)))


@pytest.fixture(scope="module")
def grid_rotations() -> torch.Tensor:
    return torch.as_tensor(euler_to_matrix(*orientation_grid(15.0)), dtype=torch.float32)


def simulate(volumes_ft, models, rotations, shift_px, snr=None, seed=0):
    """Particle transforms whose centring shift (the shift to apply) is ``shift_px``, and CTFs."""
    n = len(models)
    rng = np.random.default_rng(seed)
    defocus = rng.uniform(10000, 20000, n)
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=torch.as_tensor(defocus),
        defocus_v_angstrom=torch.as_tensor(defocus - 300),
        defocus_angle_deg=torch.as_tensor(rng.uniform(0, 180, n)),
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_angstrom=APIX,
        box_size=BOX,
    )
    ft = torch.zeros((n, BOX, BOX // 2 + 1), dtype=torch.complex64)
    for k in range(len(volumes_ft)):
        sel = torch.as_tensor(models == k)
        ft[sel] = extract_central_slices(volumes_ft[k], rotations[sel], BOX)
    ft = shift_images_ft(ft, -shift_px) * ctf  # displaced by -shift: shifting by +shift centres it
    if snr is not None:
        images = irfft2_centered(ft, BOX)
        sigma = (images.var(dim=(-2, -1)).mean() / snr).sqrt()
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma
        ft = rfft2_centered(images + noise)
    return ft, ctf


def random_rotations(n, seed):
    rng = np.random.default_rng(seed)
    rot, psi = rng.uniform(-180, 180, n), rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    return torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)


@pytest.fixture(scope="module")
def clean_case(volumes_ft, grid_rotations):
    """40 noise-free particles at grid poses and integer shifts from the search grids."""
    rng = np.random.default_rng(1)
    n = 40
    models = rng.integers(0, 2, n)
    pose = torch.as_tensor(rng.integers(0, len(grid_rotations), n))
    shifts = shift_grid(3.0, 1.0)
    shift = shifts[torch.as_tensor(rng.integers(0, len(shifts), n))]
    ft, ctf = simulate(volumes_ft, models, grid_rotations[pose], shift)
    refs = make_references(volumes_ft, grid_rotations, BAND)
    return {"ft": ft, "ctf": ctf, "models": models, "pose": pose, "shift": shift, "shifts": shifts, "refs": refs}


def test_band_helpers_match_full_size_functions(volumes_ft):
    band = make_band(BOX, BAND)
    assert band.size == int(((band.kx**2 + band.ky**2) < BAND**2).sum()) and band.size > 0
    assert bool((band.kx**2 + band.ky**2 > 0).all())  # DC left out by default
    rot = random_rotations(5, 0)
    full = extract_central_slices(volumes_ft[0], rot, BOX)
    # Same interpolation, summed in another order: float32 rounding (5e-6 relative seen on a GPU
    # machine's CPU).
    scale = float(full.abs().max())
    torch.testing.assert_close(band_slices(volumes_ft[0], rot, band), band.gather(full), rtol=2e-5, atol=2e-6 * scale)
    shift = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    torch.testing.assert_close(band_phase_ramp(shift, band), band.gather(phase_ramp_2d(shift, BOX)))


def test_shift_grid():
    grid = shift_grid(3.0, 1.0)
    assert grid[0].tolist() == [0.0, 0.0]
    assert len(grid) == 29 and bool((grid.norm(dim=1) <= 3 + 1e-6).all())


def test_global_search_recovers_model_pose_shift_on_clean_data(clean_case, device):
    c = clean_case
    refs = c["refs"].to(device)
    result = search_global(c["ft"].to(device), c["ctf"].to(device), refs, c["shifts"])
    assert result.model[:, 0].cpu().tolist() == c["models"].tolist()
    assert result.pose_index[:, 0].cpu().tolist() == c["pose"].tolist()
    torch.testing.assert_close(result.shift_px[:, 0].cpu(), c["shift"])
    assert bool((result.score[:, 0] > 0.999).all())  # "cc" is a correlation: 1 at the truth
    assert result.model_scores.shape == (40, 2)
    torch.testing.assert_close(result.model_scores.amax(1), result.score[:, 0])
    # The applied shift centres the particle: shifting the image by it gives a centred projection.
    centred = shift_images_ft(c["ft"], result.shift_px[:, 0].cpu())
    direct = search_global(centred, c["ctf"], c["refs"], torch.zeros(1, 2))
    assert direct.pose_index[:, 0].tolist() == c["pose"].tolist()


def test_cc_and_ls_agree_and_chunking_changes_nothing(clean_case):
    c = clean_case
    args = (c["ft"], c["ctf"], c["refs"], c["shifts"])
    whole = search_global(*args, top=3, max_elements=2**30)
    chunked = search_global(*args, top=3, max_elements=40 * len(c["shifts"]) * 37)
    for name in ("model", "pose_index", "shift_px", "model_rotations", "model_shift_px"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))
    torch.testing.assert_close(chunked.score, whole.score)
    torch.testing.assert_close(chunked.model_scores, whole.model_scores)
    assert bool((whole.score[:, :-1] >= whole.score[:, 1:]).all())
    ls = search_global(*args, score="ls")
    assert ls.model[:, 0].tolist() == whole.model[:, 0].tolist()
    assert ls.pose_index[:, 0].tolist() == whole.pose_index[:, 0].tolist()
    torch.testing.assert_close(ls.shift_px[:, 0], whole.shift_px[:, 0])


def test_scale_terms_give_the_least_squares_intensity_factor(clean_case, volumes_ft, grid_rotations):
    """References in other units (x 0.01 for model 0, x 5 for model 1): per model,
    sum cross / sum refpower is the factor back to the particles' units (100 and 0.2)."""
    c = clean_case
    factors = torch.tensor([0.01, 5.0])[:, None, None, None]
    refs = make_references(volumes_ft * factors, grid_rotations, BAND)
    found = search_global(c["ft"], c["ctf"], refs, c["shifts"], score="cc")
    model = found.model[:, 0]
    assert model.tolist() == c["models"].tolist()  # found by cc, which ignores the scale
    cross, refpower = scale_terms(c["ft"], c["ctf"], volumes_ft * factors, refs.band, model, found.rotations[:, 0],
                                  found.shift_px[:, 0])
    for k, expected in ((0, 100.0), (1, 0.2)):
        own = model == k
        assert float(cross[own].sum() / refpower[own].sum()) == pytest.approx(expected, rel=1e-3)


def test_models_with_different_pose_sets(clean_case, volumes_ft, grid_rotations):
    """Model 1 searched over half the grid: padding is never chosen, poses index each set."""
    c = clean_case
    half = len(grid_rotations) // 2
    refs = make_references(volumes_ft, [grid_rotations, grid_rotations[:half]], BAND)
    assert refs.counts == [len(grid_rotations), half]
    result = search_global(c["ft"], c["ctf"], refs, c["shifts"])
    pose, model = result.pose_index[:, 0], result.model[:, 0]
    assert bool((pose[model == 1] < half).all())
    ok = torch.as_tensor((c["models"] == 0) | (c["pose"].numpy() < half))
    assert pose[ok].tolist() == c["pose"][ok].tolist()


def test_local_search_composes_in_the_particle_frame(clean_case, volumes_ft, grid_rotations):
    """Centre = Delta_j^T @ A_true: the local search must find Delta_j @ centre = A_true."""
    c = clean_case
    delta = torch.as_tensor(local_rotations(9.0, 3.0), dtype=torch.float32)
    j = torch.as_tensor(np.random.default_rng(4).integers(1, len(delta), 40))
    truth = grid_rotations[c["pose"]]
    centres = delta[j].transpose(-1, -2) @ truth
    offsets = shift_grid(1.0, 1.0)
    start = c["shift"] + offsets[2]  # off by one pixel
    models = torch.as_tensor(c["models"])
    for max_elements in (2**30, 5000):
        result = search_local(
            c["ft"], c["ctf"], volumes_ft, c["refs"].band, centres, start, models, delta, offsets,
            max_elements=max_elements, top=2,
        )
        assert result.pose_index[:, 0].tolist() == j.tolist()
        assert float(angular_distance(result.rotations[:, 0], truth).max()) < 0.1
        torch.testing.assert_close(result.shift_px[:, 0], c["shift"])
        assert result.model[:, 0].tolist() == c["models"].tolist()
        other = 1 - models
        assert bool(torch.isinf(result.model_scores[torch.arange(40), other]).all())


@pytest.mark.parametrize(
    ("snr", "max_median_deg", "max_q90_deg"),
    # clean: within the final 1.5-degree step; SNR 1: noise-limited (median ~2-2.8 deg)
    [(None, 1.5, 2.0), (1.0, 3.0, 6.0)],
)
def test_off_grid_global_then_local(volumes_ft, grid_rotations, snr, max_median_deg, max_q90_deg):
    """Off-grid poses and shifts: 15-degree global grid, then local passes of 4 and 1.5 degrees
    around the best pose per model and the 5 best coarse poses."""
    n = 60
    rng = np.random.default_rng(7)
    models = rng.integers(0, 2, n)
    truth = random_rotations(n, 8)
    radius, angle = 2.5 * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
    shift = torch.as_tensor(np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)).float()
    ft, ctf = simulate(volumes_ft, models, truth, shift, snr=snr, seed=9)
    refs = make_references(volumes_ft, grid_rotations, BAND)
    coarse = search_global(ft, ctf, refs, shift_grid(3.0, 1.0))
    result = refine_assignments(
        ft, ctf, refs, volumes_ft,
        coarse_shifts_px=shift_grid(3.0, 1.0),
        local_range_deg=(12.0, 4.0),
        local_step_deg=(4.0, 1.5),
        fine_shift_offsets_px=(shift_grid(1.0, 0.5), shift_grid(0.5, 0.25)),
        candidates=5,
    )
    correct = result.model[:, 0].numpy() == models
    assert correct.mean() >= 0.95
    error = angular_distance(result.rotations[:, 0], truth).numpy()[correct]
    coarse_error = angular_distance(coarse.rotations[:, 0], truth).numpy()[correct]
    shift_error = (result.shift_px[:, 0] - shift).norm(dim=1).numpy()[correct]
    assert np.median(error) < max_median_deg and np.quantile(error, 0.9) < max_q90_deg, error
    assert error.max() < 15.0, error  # no particle left at a wrong coarse pose
    assert np.median(error) < 0.5 * np.median(coarse_error)
    assert np.median(shift_error) < 0.25 and np.quantile(shift_error, 0.9) < 0.5, shift_error
    assert bool(torch.isfinite(result.model_scores).all())


def test_intensity_scales_put_the_starting_maps_in_the_particles_units(tmp_path):
    """The first iteration's factors (poses by ``cc`` in the polar pass, then least squares
    at each particle's pose): maps given x 0.01 and x 5 get 100 and 0.2 times the factors of
    the maps as they are, each model its own."""
    from multirefine.io.particles import open_particles
    from multirefine.refine.plan import plan_search
    from multirefine.refine.scales import reference_scales
    from multirefine.simulate import SimulationParameters, simulate_dataset

    maps = [random_atoms_map(seed) for seed in (0, 2)]
    simulate_dataset(tmp_path / "sim", maps, SimulationParameters(n_particles=300, snr=1.0, fractions=[0.5, 0.5],
                                                                  pixel_size_angstrom=1.0, seed=2))
    stack = open_particles(tmp_path / "sim" / "particles.star")
    plan = plan_search(32, 1.0, 6.0, 8.0, 5, ["C1", "C1"], 2.0)
    volumes = torch.as_tensor(np.stack(maps))
    base = reference_scales(stack, plan, volumes, 500)
    scaled = reference_scales(stack, plan, volumes * torch.tensor([0.01, 5.0])[:, None, None, None], 500)
    assert np.all(base > 0)
    np.testing.assert_allclose(scaled / base, [100.0, 0.2], rtol=1e-3)


def test_shrink_and_speed_set_the_band_and_the_angular_steps():
    """--shrink N keeps the search within the Nyquist of a box N times smaller (5 % short of
    it, as the full box is); --speed scales the angular steps (5: the fine step moves the
    particle's edge by a third of the band's resolution)."""
    from multirefine.refine.plan import plan_search

    def plan(band_res, speed=5, shrink=1):
        return plan_search(64, 1.0, band_res, 20.0, speed, ["C1"], 2.0, shrink=shrink)

    assert plan(2.0).band_resolution_angstrom == pytest.approx(2.1)
    shrunk = plan(2.0, shrink=2)
    assert shrunk.band_resolution_angstrom == pytest.approx(4.2)
    assert shrunk.band_radius_px < 64 / 4
    assert plan(8.0, shrink=2).band_resolution_angstrom == 8.0  # coarser than that: as asked
    normal, fast, slow = plan(4.0), plan(4.0, speed=10), plan(4.0, speed=1)
    assert normal.fine_step_deg == pytest.approx(np.degrees(4.0 / (3 * 20.0)))
    assert fast.fine_step_deg == pytest.approx(2 * normal.fine_step_deg)
    assert slow.fine_step_deg == pytest.approx(0.76394, rel=1e-4)
    assert fast.coarse_step_deg == pytest.approx(2.5 * fast.fine_step_deg)
    assert slow.coarse_step_deg == 7.5  # the global step's floor
    assert len(fast.directions[0]) < len(normal.directions[0]) < len(slow.directions[0])


def test_hypotheses_are_distinct_tracks_and_find_both_poses_of_a_twofold_map():
    """``hypotheses``: each global candidate refined on its own. A map with an exact two-fold
    axis gives every image two equally good poses 180 degrees apart; both are among a
    particle's distinct hypotheses with about equal posteriors (what a reconstruction
    marginalised over them needs), while on an asymmetric map the best one holds the weight."""
    from multirefine.refine.choice import normalised
    from multirefine.refine.splitmerge import log_likelihoods

    atoms = random_atoms_map(5)
    twofold = 0.5 * (atoms + np.rot90(atoms, 2, axes=(1, 2)))  # 180 degrees about the first axis
    grid = torch.as_tensor(euler_to_matrix(*orientation_grid(15.0)), dtype=torch.float32)
    n, hypotheses = 30, 4
    truth = random_rotations(n, 3)
    for volume, ambiguous in ((twofold, True), (atoms, False)):
        vol_ft = prepare_volume_ft(torch.as_tensor(volume[None].copy()))
        ft, ctf = simulate(vol_ft, np.zeros(n, dtype=int), truth, torch.zeros(n, 2), snr=3.0, seed=4)
        result = refine_assignments(
            ft, ctf, make_references(vol_ft, grid, BAND), vol_ft, coarse_shifts_px=shift_grid(2.0, 1.0),
            local_range_deg=(15.0, 5.0), local_step_deg=(5.0, 2.0),
            fine_shift_offsets_px=(shift_grid(1.0, 0.5), shift_grid(0.5, 0.25)),
            candidates=2, score="ls", hypotheses=hypotheses, separation_deg=15.0,
        )
        assert result.model.shape == (n, hypotheses)  # one model: its best and 3 more candidates
        assert bool((result.score[:, :-1] >= result.score[:, 1:]).all())  # best first
        assert torch.allclose(result.score[:, 0], result.model_scores[:, 0])
        finite = torch.isfinite(result.score)
        for i in range(n):  # the finite tracks are hypotheses at least one global step apart
            rot = result.rotations[i, finite[i]]
            apart = angular_distance(rot[:, None].expand(-1, len(rot), -1, -1).reshape(-1, 3, 3),
                                     rot[None].expand(len(rot), -1, -1, -1).reshape(-1, 3, 3)).reshape(len(rot), -1)
            assert bool((apart + 1e3 * torch.eye(len(rot)) >= 15.0).all())
        x_power = (make_band(BOX, BAND).weight * make_band(BOX, BAND).gather(ft).abs() ** 2).sum(-1)
        weights = normalised(log_likelihoods(result.score.numpy(), x_power.numpy(), float(make_band(BOX, BAND).weight.sum()),
                                             "ls"))
        best_error = angular_distance(result.rotations[:, 0], truth).numpy()
        second = angular_distance(result.rotations[:, 1], result.rotations[:, 0]).numpy()
        if ambiguous:  # the true pose or its two-fold mate first, the other second, near-equal weights
            assert np.mean(np.minimum(best_error, np.abs(180 - best_error)) < 6) >= 0.9, best_error
            assert np.mean(second > 170) >= 0.9, second
            assert np.median(weights[:, 1]) > 0.2, weights[:, :2]
        else:
            assert np.mean(best_error < 6) >= 0.9, best_error
            assert np.median(weights[:, 0]) > 0.99, weights[:, :2]
