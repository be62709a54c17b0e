"""RELION ZYZ Euler angles: round trips, gimbal lock, orthonormality, and scipy's ZYZ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from multirefine.geometry import euler_to_matrix, matrix_to_euler, viewing_direction


def _random_angles(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)


def test_matrices_are_rotations() -> None:
    a = euler_to_matrix(*_random_angles(200))
    assert a.shape == (200, 3, 3)
    np.testing.assert_allclose(
        a @ np.swapaxes(a, -1, -2), np.broadcast_to(np.eye(3), a.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=1e-12)


def test_matches_scipy_intrinsic_zyz_transposed() -> None:
    rot, tilt, psi = _random_angles(50, seed=1)
    ref = Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], -1), degrees=True).as_matrix()
    np.testing.assert_allclose(
        euler_to_matrix(rot, tilt, psi), np.swapaxes(ref, -1, -2), atol=1e-12
    )


def test_round_trip_numpy() -> None:
    rot, tilt, psi = _random_angles(500, seed=2)
    r2, t2, p2 = matrix_to_euler(euler_to_matrix(rot, tilt, psi))
    np.testing.assert_allclose(t2, tilt, atol=1e-9)
    np.testing.assert_allclose(
        euler_to_matrix(r2, t2, p2), euler_to_matrix(rot, tilt, psi), atol=1e-12
    )
    np.testing.assert_allclose(r2, rot, atol=1e-8)
    np.testing.assert_allclose(p2, psi, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_torch(dtype: torch.dtype) -> None:
    rot, tilt, psi = (torch.as_tensor(x, dtype=dtype) for x in _random_angles(300, seed=3))
    a = euler_to_matrix(rot, tilt, psi)
    assert isinstance(a, torch.Tensor) and a.dtype == dtype
    b = euler_to_matrix(*matrix_to_euler(a))
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert (a - b).abs().max() < tol
    np.testing.assert_allclose(
        a.double().numpy(),
        euler_to_matrix(*(x.double().numpy() for x in (rot, tilt, psi))),
        atol=tol,
    )


@pytest.mark.parametrize("tilt", [0.0, 180.0])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_gimbal_lock(tilt: float, lib: str) -> None:
    rot = np.array([0.0, 30.0, -120.0, 75.0])
    psi = np.array([10.0, -40.0, 170.0, 0.0])
    t = np.full(4, tilt)
    args = (rot, t, psi) if lib == "numpy" else tuple(torch.as_tensor(x) for x in (rot, t, psi))
    a = euler_to_matrix(*args)
    r2, t2, p2 = matrix_to_euler(a)
    np.testing.assert_allclose(np.asarray(r2), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(t2), tilt, atol=1e-9)
    np.testing.assert_allclose(np.asarray(euler_to_matrix(r2, t2, p2)), np.asarray(a), atol=1e-12)


def test_viewing_direction_is_row_2() -> None:
    rot, tilt, psi = _random_angles(100, seed=4)
    np.testing.assert_allclose(
        viewing_direction(rot, tilt), euler_to_matrix(rot, tilt, psi)[:, 2, :], atol=1e-12
    )
