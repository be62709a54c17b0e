"""Central slices, insertion and reconstruction: the physics invariants."""

import math

import numpy as np
import pytest
import torch

from multirefine.fourier.crop import crop_ft_2d, fourier_crop_images, pad_ft_2d, resample_volume
from multirefine.fourier.fft import irfft2_centered, rfft2_centered
from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
from multirefine.fourier.projection import (
    extract_central_slices,
    prepare_volume_ft,
    slice_coordinates,
)
from multirefine.fourier.reconstruction import FourierAccumulator
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.symmetry import symmetry_operators


def random_rotations(n, seed=0):
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    return torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)


def exact_slices(volume: np.ndarray, rotations: torch.Tensor) -> torch.Tensor:
    """Direct (non-uniform) DFT of the map at every slice frequency: slow, exact."""
    box = volume.shape[-1]
    coords, mask = slice_coordinates(rotations.double(), box, pad=1)
    grid = np.stack(np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij"), -1)  # z, y, x
    xyz = torch.as_tensor(grid[..., ::-1].reshape(-1, 3).copy(), dtype=torch.float64)
    values = torch.as_tensor(volume.reshape(-1), dtype=torch.complex128)
    out = []
    for c in coords.double():
        phase = -2 * math.pi * (c.reshape(-1, 3) @ xyz.T) / box
        out.append((torch.exp(1j * phase) @ values).reshape(mask.shape))
    return torch.stack(out) * mask


def test_projection_matches_direct_fourier_transform(atoms_map):
    rotations = random_rotations(6)
    slices = extract_central_slices(prepare_volume_ft(torch.from_numpy(atoms_map)), rotations, 32)
    exact = exact_slices(atoms_map, rotations)
    error = (slices - exact).abs().pow(2).sum() / exact.abs().pow(2).sum()
    assert error.sqrt() < 0.03


def test_projection_at_identity_is_sum_along_z(atoms_map):
    """Identity pose: the beam runs along z, the image is the sum over z (real space).

    (Not exact: the gridding correction is right for interpolated slices, slightly off for
    slices that fall on the grid, as this one does.)
    """
    ft = prepare_volume_ft(torch.from_numpy(atoms_map))
    image = irfft2_centered(extract_central_slices(ft, torch.eye(3)[None], 32)[0], 32)
    expected = torch.from_numpy(atoms_map).sum(0)
    assert torch.corrcoef(torch.stack([image.flatten(), expected.flatten()]))[0, 1] > 0.995


def test_pose_orientation_convention(atoms_map):
    """tilt = 90, rot = 0: the beam runs along x (row 2 of A), so the image sums over x."""
    ft = prepare_volume_ft(torch.from_numpy(atoms_map))
    rotation = torch.as_tensor(euler_to_matrix(np.array(0.0), np.array(90.0), np.array(0.0)), dtype=torch.float32)
    image = irfft2_centered(extract_central_slices(ft, rotation[None], 32)[0], 32)
    # Image axes: x_img = A[0] = (0, 0, -1) (minus map z), y_img = A[1] = map y.
    expected = torch.from_numpy(atoms_map).sum(2).T.flip(1)  # [z, y] -> [y, z] -> [y, -z]
    expected = torch.roll(expected, 1, dims=1)  # -z about the centre D//2 of an even box
    assert torch.corrcoef(torch.stack([image.flatten(), expected.flatten()]))[0, 1] > 0.995


def test_project_then_insert_recovers_the_map(atoms_map, device):
    rotations = random_rotations(3000).to(device)
    volume = torch.from_numpy(atoms_map).to(device)
    slices = extract_central_slices(prepare_volume_ft(volume), rotations, 32)
    acc = FourierAccumulator.zeros(32, device=device)
    for part in range(0, 3000, 1000):  # accumulators are sums over batches
        acc.insert(slices[part : part + 1000], None, rotations[part : part + 1000])
    fsc = fourier_shell_correlation(acc.reconstruct().cpu(), torch.from_numpy(atoms_map))
    assert fsc[1:16].min() > 0.99


def test_symmetry_imposed_reconstruction():
    """A C4 map from projections over a quarter of the orientations, C4 imposed."""
    from multirefine.simulate import AtomicModel, map_from_atoms

    rng = np.random.default_rng(3)
    atoms = rng.normal(0, 3, (80, 3)) + np.array([3.0, 0, 0])
    ops = symmetry_operators("c4")
    sym_atoms = np.concatenate([atoms @ op.T for op in ops])
    volume = map_from_atoms(AtomicModel(sym_atoms, np.full(len(sym_atoms), 6.0), "c4"), 32, 1.0, 2.0, np.zeros(3))
    n = 1500
    r = np.random.default_rng(0)
    rot = r.uniform(0, 90, n)  # a quarter of the rotations about z
    tilt = np.degrees(np.arccos(r.uniform(-1, 1, n)))
    psi = r.uniform(-180, 180, n)
    rotations = torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)
    slices = extract_central_slices(prepare_volume_ft(torch.from_numpy(volume)), rotations, 32)
    acc = FourierAccumulator.zeros(32)
    acc.insert(slices, None, rotations)
    with_sym = fourier_shell_correlation(acc.reconstruct(torch.as_tensor(ops)), torch.from_numpy(volume))
    without = fourier_shell_correlation(acc.reconstruct(), torch.from_numpy(volume))
    assert with_sym[1:15].min() > 0.98
    assert with_sym[10:15].mean() > without[10:15].mean()


def test_shift_then_shift_back_is_identity(device):
    images = torch.randn(4, 32, 32, device=device)
    shift = torch.tensor([[1.5, -2.25], [0, 0], [3, 1], [-0.5, 0.5]], device=device)
    ft = rfft2_centered(images)
    back = irfft2_centered(shift_images_ft(shift_images_ft(ft, shift), -shift), 32)
    torch.testing.assert_close(back, images, atol=1e-4, rtol=1e-4)


def test_integer_shift_moves_pixels():
    image = torch.zeros(16, 16)
    image[8, 8] = 1.0
    moved = irfft2_centered(shift_images_ft(rfft2_centered(image), torch.tensor([2.0, -3.0])), 16)
    assert moved.argmax().item() == (8 - 3) * 16 + (8 + 2)  # y - 3, x + 2


def test_crop_pad_round_trip():
    ft = rfft2_centered(torch.randn(2, 32, 32))
    small = crop_ft_2d(ft, 16)
    back = crop_ft_2d(pad_ft_2d(small, 32), 16)
    torch.testing.assert_close(back, small)
    assert small.shape == (2, 16, 9)


def test_fourier_crop_preserves_smooth_images(atoms_map):
    image = torch.from_numpy(atoms_map).sum(0)
    half = fourier_crop_images(image, 16)
    up = fourier_crop_images(half, 32)  # padding adds no information: cropping again is exact
    torch.testing.assert_close(fourier_crop_images(up, 16), half, atol=1e-4, rtol=1e-4)
    assert torch.corrcoef(torch.stack([up.flatten(), image.flatten()]))[0, 1] > 0.95
    assert float(half.sum()) == pytest.approx(float(image.sum()) / 4, rel=1e-3)  # density per pixel: 4x the area
    vol = resample_volume(torch.from_numpy(atoms_map), 24)
    assert vol.shape == (24, 24, 24)


def test_fsc_limits(atoms_map):
    a = torch.from_numpy(atoms_map)
    assert fourier_shell_correlation(a, a).min() > 0.999999
    noise = fourier_shell_correlation(torch.randn(32, 32, 32), torch.randn(32, 32, 32))
    assert noise[4:].abs().max() < 0.25
    curve = np.array([1, 1, 0.9, 0.5, 0.1, 0, 0, 0, 0])
    # Shells of a 16 px box at 2 Å/px: shell s is at s / 32 1/Å; 0.143 between shells 3 and 4.
    assert resolution_at_threshold(curve, 2.0, 0.143) == pytest.approx(1 / ((3 + (0.5 - 0.143) / 0.4) / 32))


def test_fsc_filtered_full_map_is_closer_to_the_truth(atoms_map):
    """gold_standard_reconstruction: the full map (twice the data), Wiener-filtered by the SSNR
    the half-map FSC implies, is much nearer the true map than either raw half map."""
    from multirefine.refine.reconstruct import gold_standard_reconstruction

    rotations = random_rotations(2000, seed=3)
    slices = extract_central_slices(prepare_volume_ft(torch.from_numpy(atoms_map)), rotations, 32)
    gen = torch.Generator().manual_seed(0)
    noise_sigma = 2.0 * float(slices.abs().pow(2).mean().sqrt())
    slices = slices + noise_sigma * torch.complex(
        torch.randn(slices.shape, generator=gen), torch.randn(slices.shape, generator=gen)
    )
    halves = [FourierAccumulator.zeros(32), FourierAccumulator.zeros(32)]
    halves[0].insert(slices[:1000], None, rotations[:1000])
    halves[1].insert(slices[1000:], None, rotations[1000:])
    result = gold_standard_reconstruction(*halves)

    def error(volume):
        return float(((volume - atoms_map) ** 2).mean())

    print([error(result.full_map) / error(raw) for raw in result.half_maps])
    for raw in result.half_maps:
        assert error(result.full_map) < 0.35 * error(raw)  # measured 0.25 x; unfiltered, ~0.5 x


@pytest.mark.parametrize(("box", "pad"), [(16, 2), (15, 2), (12, 3)])
def test_wiener_reconstruction_is_the_shell_regularised_quotient(box, pad):
    """reconstruct_volume against the formula written out voxel by voxel: inside the box's
    Nyquist sphere ``data / (weight + inverse_ssnr[s] * mean weight of shell s)``, zero beyond
    it and where nothing was inserted; then the inverse transform, centred and cropped, over
    the gridding correction. Equal to the bit (the working arrays are cut, not the sums)."""
    from multirefine.fourier.reconstruction import gridding_correction, reconstruct_volume

    size = pad * box
    g = torch.Generator().manual_seed(box)
    shape = (size, size, size // 2 + 1)
    data = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    weight = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) > 0.3)
    inverse_ssnr = np.linspace(0.01, 5, box // 2 + 1).astype(np.float32)
    k = torch.arange(size, dtype=torch.float32) - size // 2
    z, y, x = torch.meshgrid(k, k, torch.arange(size // 2 + 1, dtype=torch.float32), indexing="ij")
    shells = torch.round(torch.sqrt(x**2 + y**2 + z**2)).long()
    inside = shells < pad * box // 2
    shell = torch.div(shells, pad, rounding_mode="floor")
    sums = torch.zeros(box // 2 + 1).index_add_(0, shell[inside], weight[inside])
    counts = torch.zeros(box // 2 + 1).index_add_(0, shell[inside], torch.ones_like(weight[inside]))
    regulariser = (torch.from_numpy(inverse_ssnr) * sums / counts.clamp(min=1))[shell.clamp(max=box // 2)]
    denominator = weight + regulariser
    ft = torch.where(inside & (denominator > 0), data / denominator.clamp(min=1e-30), 0)
    full = torch.fft.fftshift(torch.fft.irfftn(torch.fft.ifftshift(ft, dim=(-3, -2)), s=(size,) * 3), dim=(-3, -2, -1))
    start = size // 2 - box // 2
    expected = full[start:start + box, start:start + box, start:start + box] / gridding_correction(box, size, "cpu")
    got = reconstruct_volume(data, weight, box, pad, inverse_ssnr, mask_radius=float("inf"))
    assert torch.equal(got, expected)
