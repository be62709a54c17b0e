"""Orientation grids: even coverage of the sphere, the asymmetric unit, in-plane and local grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from multirefine.errors import InputError
from multirefine.geometry import (
    angular_distance,
    angular_distance_symmetric,
    euler_to_matrix,
    inplane_angles,
    local_orientation_grid,
    local_rotations,
    orientation_grid,
    projection_directions,
    sphere_directions,
    symmetry_operators,
    symmetry_order,
    viewing_direction,
)


def _probes(n: int, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _largest_gap_deg(points: np.ndarray, probes: np.ndarray) -> float:
    best = (probes @ points.T).max(1)
    return float(np.degrees(np.arccos(np.clip(best, -1, 1))).max())


@pytest.mark.parametrize("step", [30.0, 15.0, 7.5])
def test_sphere_directions_even(step: float) -> None:
    d = sphere_directions(step)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    expected = 4 * np.pi / np.radians(step) ** 2
    assert abs(len(d) - expected) <= 1
    gap = _largest_gap_deg(d, _probes(20000))
    assert gap <= 1.5 * step
    assert gap <= 0.8 * step  # typical for an even grid (hexagonal lattice: 0.62)
    # No clumping: nearest-neighbour distances within a factor ~2 of each other.
    cos = d @ d.T
    np.fill_diagonal(cos, -1)
    nn = np.degrees(np.arccos(np.clip(cos.max(1), -1, 1)))
    assert nn.min() > 0.5 * step and nn.max() < 1.5 * step


@pytest.mark.parametrize(
    ("name", "step"),
    [("c1", 15.0), ("c7", 7.5), ("d3", 7.5), ("t", 7.5), ("o", 7.5), ("i", 7.5), ("i3", 5.0)],
)
def test_projection_directions_cover_the_sphere(name: str, step: float) -> None:
    rot, tilt = projection_directions(step, name)
    n_sphere = len(sphere_directions(step))
    order = symmetry_order(name)
    assert abs(len(rot) * order / n_sphere - 1) < 0.25
    assert np.all((tilt >= 0) & (tilt <= 180)) and np.all((rot > -180 - 1e-9) & (rot <= 180))
    d = viewing_direction(rot, tilt)
    images = np.einsum("gij,nj->gni", symmetry_operators(name), d).reshape(-1, 3)
    assert _largest_gap_deg(images, _probes(20000, seed=1)) <= 1.5 * step


def test_inplane_angles() -> None:
    psi = inplane_angles(10.0)
    np.testing.assert_allclose(psi, np.arange(36) * 10.0)
    psi = inplane_angles(7.0)  # 360 / 7 is not whole: 52 angles, spacing <= 7
    assert len(psi) == 52 and psi[0] == 0 and psi[-1] < 360
    assert np.allclose(np.diff(psi), 360 / 52)


def test_orientation_grid_is_the_product() -> None:
    rot, tilt, psi = orientation_grid(15.0, "d3", psi_step_deg=30.0)
    r1, t1 = projection_directions(15.0, "d3")
    p1 = inplane_angles(30.0)
    assert rot.shape == tilt.shape == psi.shape == (len(r1) * len(p1),)
    np.testing.assert_array_equal(rot.reshape(len(r1), -1)[:, 0], r1)
    np.testing.assert_array_equal(tilt.reshape(len(r1), -1)[:, -1], t1)
    np.testing.assert_array_equal(psi.reshape(len(r1), -1)[3], p1)
    assert len(orientation_grid(15.0)[0]) == len(sphere_directions(15.0)) * 24


def test_orientation_grid_covers_so3() -> None:
    """Every random pose is close to a symmetry-equivalent grid pose."""
    step = 15.0
    grid = euler_to_matrix(*orientation_grid(step, "c2"))
    poses = Rotation.random(300, random_state=3).as_matrix()
    dist = np.stack([angular_distance_symmetric(p, grid, "c2").min() for p in poses])
    # Worst case ~ direction gap (0.75 step) combined with half the in-plane step.
    assert dist.max() <= 1.5 * step


def test_local_rotations() -> None:
    d = local_rotations(6.0, 2.0)
    np.testing.assert_array_equal(d[0], np.eye(3))
    ang = angular_distance(d, np.eye(3))
    assert np.all(ang <= 6.0 + 1e-9) and np.all(np.diff(ang) >= -1e-9)
    assert len(d) == 123  # lattice points of spacing 2 in a ball of radius 6
    # Covering: random rotations inside the ball are near a grid rotation.
    v = _probes(2000, seed=4) * np.random.default_rng(5).uniform(0, np.radians(6.0), (2000, 1))
    probes = Rotation.from_rotvec(v).as_matrix()
    near = angular_distance(probes[:, None], d[None]).min(1)
    assert near.max() <= 0.9 * 2.0
    assert len(local_rotations(1.0, 2.0)) == 1


def test_local_orientation_grid() -> None:
    rot, tilt, psi = np.array([10.0, -100.0]), np.array([40.0, 120.0]), np.array([5.0, 170.0])
    r, t, p = local_orientation_grid(rot, tilt, psi, 4.0, 2.0)
    assert r.shape == t.shape == p.shape == (2, 33)
    centre = euler_to_matrix(rot, tilt, psi)
    poses = euler_to_matrix(r, t, p)
    np.testing.assert_allclose(poses[:, 0], centre, atol=1e-12)
    dist = angular_distance(poses, centre[:, None])
    assert np.all(dist <= 4.0 + 1e-9)
    assert dist[:, 1:].min() > 1.9  # no duplicates of the centre


def test_angular_distance() -> None:
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    for deg in (0.0, 1e-6, 0.3, 45.0, 179.9, 180.0):
        r = Rotation.from_rotvec(axis * np.radians(deg)).as_matrix()
        a = euler_to_matrix(20.0, 30.0, 40.0)
        assert abs(angular_distance(r @ a, a) - deg) < 1e-7
        assert abs(angular_distance(a, a @ r) - deg) < 1e-7
    a = torch.as_tensor(Rotation.random(10, random_state=6).as_matrix())
    b = torch.as_tensor(Rotation.random(10, random_state=7).as_matrix())
    np.testing.assert_allclose(
        angular_distance(a, b).numpy(), angular_distance(a.numpy(), b.numpy()), atol=1e-10
    )


@pytest.mark.parametrize("name", ["c4", "d3", "o", "i"])
def test_angular_distance_symmetric(name: str) -> None:
    ops = symmetry_operators(name)
    a = Rotation.random(20, random_state=8).as_matrix()
    idx = np.random.default_rng(9).integers(len(ops), size=20)
    equivalent = a @ ops[idx]
    assert np.all(angular_distance_symmetric(a, equivalent, name) < 1e-6)
    # Other side: a symmetric pose offset by 5 degrees is 5 degrees away.
    small = Rotation.from_rotvec([0, 0, np.radians(5.0)]).as_matrix()
    np.testing.assert_allclose(
        angular_distance_symmetric(a, small @ equivalent, name), 5.0, atol=1e-9
    )
    # Never more than the plain distance; torch gives the same.
    b = Rotation.random(20, random_state=10).as_matrix()
    assert np.all(angular_distance_symmetric(a, b, name) <= angular_distance(a, b) + 1e-12)
    np.testing.assert_allclose(
        angular_distance_symmetric(torch.as_tensor(a), torch.as_tensor(b), name).numpy(),
        angular_distance_symmetric(a, b, name),
        atol=1e-10,
    )


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), 400.0])
def test_bad_steps_raise(bad: float) -> None:
    with pytest.raises(InputError, match="expected"):
        sphere_directions(bad)
    with pytest.raises(InputError, match="in-plane step"):
        inplane_angles(bad)
