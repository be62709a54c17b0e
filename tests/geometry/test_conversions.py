"""EMAN2 and cryoSPARC pose conversions against hand-checked cases and independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from multirefine.geometry import (
    axis_angle_to_matrix,
    csparc_pose_to_matrix,
    csparc_pose_to_relion,
    eman_to_matrix,
    eman_to_relion,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_csparc_pose,
    matrix_to_eman,
    relion_to_csparc_pose,
    relion_to_eman,
)


def _angles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)


def _random_rotations(n: int, seed: int) -> np.ndarray:
    return Rotation.random(n, random_state=seed).as_matrix()


# ----------------------------------------------------------------------------- EMAN2


def test_eman_identity_hand_case() -> None:
    # rot = az - 90, psi = phi + 90: EMAN (90, 0, -90) is RELION (0, 0, 0), the identity.
    np.testing.assert_allclose(eman_to_matrix(90.0, 0.0, -90.0), np.eye(3), atol=1e-15)
    rot, tilt, psi = eman_to_relion(90.0, 0.0, -90.0)
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), np.eye(3), atol=1e-15)


def test_eman_alt90_hand_case() -> None:
    # Worked out by hand from EMAN2's transform.cpp formula and RELION's Euler_angles2matrix.
    expected = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    np.testing.assert_allclose(eman_to_matrix(0.0, 90.0, 0.0), expected, atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix(-90.0, 90.0, 90.0), expected, atol=1e-15)
    rot, tilt, psi = eman_to_relion(0.0, 90.0, 0.0)
    np.testing.assert_allclose([rot, tilt, psi], [-90.0, 90.0, 90.0], atol=1e-12)


def test_eman_relation_rot_az_minus_90() -> None:
    rot, tilt, psi = _angles(300, seed=1)
    np.testing.assert_allclose(
        eman_to_matrix(rot + 90, tilt, psi - 90), euler_to_matrix(rot, tilt, psi), atol=1e-12
    )
    az, alt, phi = relion_to_eman(rot, tilt, psi)
    np.testing.assert_allclose(alt, tilt, atol=1e-9)
    np.testing.assert_allclose((az - rot - 90 + 180) % 360 - 180, 0, atol=1e-8)
    np.testing.assert_allclose((phi - psi + 90 + 180) % 360 - 180, 0, atol=1e-8)


@pytest.mark.parametrize("alt", [0.0, 180.0, 37.0])
def test_eman_round_trip(alt: float) -> None:
    rng = np.random.default_rng(2)
    az, phi = rng.uniform(0, 360, 50), rng.uniform(0, 360, 50)
    m = eman_to_matrix(az, np.full(50, alt), phi)
    az2, alt2, phi2 = matrix_to_eman(m)
    assert np.all((az2 >= 0) & (az2 < 360) & (phi2 >= 0) & (phi2 < 360))
    np.testing.assert_allclose(alt2, alt, atol=1e-9)
    np.testing.assert_allclose(eman_to_matrix(az2, alt2, phi2), m, atol=1e-12)
    # RELION and back, through the matrices.
    r, t, p = eman_to_relion(az, np.full(50, alt), phi)
    np.testing.assert_allclose(euler_to_matrix(r, t, p), m, atol=1e-12)
    np.testing.assert_allclose(eman_to_matrix(*relion_to_eman(r, t, p)), m, atol=1e-12)


def test_eman_torch() -> None:
    az, alt, phi = (torch.as_tensor(x) for x in _angles(20, seed=3))
    m = eman_to_matrix(az, alt.abs(), phi)
    assert isinstance(m, torch.Tensor)
    np.testing.assert_allclose(
        m.numpy(), eman_to_matrix(az.numpy(), alt.abs().numpy(), phi.numpy()), atol=1e-12
    )
    np.testing.assert_allclose(eman_to_matrix(*matrix_to_eman(m)).numpy(), m.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- axis-angle


def test_axis_angle_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(size=(200, 3)) * rng.uniform(0, np.pi, (200, 1)) / np.sqrt(3)
    v[0] = 0.0
    v[1] = [1e-12, 0, 0]
    np.testing.assert_allclose(
        axis_angle_to_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-12
    )


def test_axis_angle_is_right_handed() -> None:
    m = axis_angle_to_matrix(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(m @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-15)


def test_matrix_to_axis_angle_round_trip() -> None:
    r = _random_rotations(500, seed=5)
    np.testing.assert_allclose(axis_angle_to_matrix(matrix_to_axis_angle(r)), r, atol=1e-12)
    np.testing.assert_allclose(
        matrix_to_axis_angle(r), Rotation.from_matrix(r).as_rotvec(), atol=1e-10
    )
    # Near 0 and near pi.
    v = np.array(
        [[0, 0, 0], [1e-9, -2e-9, 0], [np.pi, 0, 0], [0, np.pi - 1e-7, 0], [1, 1, 1]], float
    )
    v[-1] *= (np.pi - 1e-9) / np.sqrt(3)
    back = matrix_to_axis_angle(axis_angle_to_matrix(v))
    np.testing.assert_allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(v), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(back, axis=-1), np.linalg.norm(v, axis=-1), atol=1e-8)


def test_axis_angle_torch() -> None:
    r = torch.as_tensor(_random_rotations(100, seed=6))
    v = matrix_to_axis_angle(r)
    assert isinstance(v, torch.Tensor)
    assert (axis_angle_to_matrix(v) - r).abs().max() < 1e-12
    assert (axis_angle_to_matrix(torch.zeros(3)) - torch.eye(3)).abs().max() == 0


# ----------------------------------------------------------------------------- cryoSPARC


def _pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem.geom.expmap as published (cross-product matrix transposed); A = pyem_expmap(pose)."""
    theta = np.linalg.norm(e)
    if theta < 1e-16:
        return np.eye(3)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def test_csparc_matches_pyem_and_cryodrgn() -> None:
    rng = np.random.default_rng(7)
    poses = rng.normal(size=(30, 3))
    a = csparc_pose_to_matrix(poses)
    for p, m in zip(poses, a):
        np.testing.assert_allclose(m, _pyem_expmap(p), atol=1e-12)
    # cryoDRGN: rot = expmap(pose).T with the standard formula (scipy's from_rotvec).
    np.testing.assert_allclose(
        a, np.swapaxes(Rotation.from_rotvec(poses).as_matrix(), -1, -2), atol=1e-12
    )


def test_csparc_hand_case() -> None:
    # A rotation vector along z is an in-plane rotation: A = R_z(t).T = RELION (0, 0, t).
    rot, tilt, psi = csparc_pose_to_relion(np.array([0.0, 0.0, 0.5]))
    np.testing.assert_allclose([rot, tilt, psi], [0.0, 0.0, np.degrees(0.5)], atol=1e-12)


def test_csparc_round_trip() -> None:
    rot, tilt, psi = _angles(300, seed=8)
    pose = relion_to_csparc_pose(rot, tilt, psi)
    assert pose.shape == (300, 3)
    assert np.all(np.linalg.norm(pose, axis=-1) <= np.pi + 1e-12)
    np.testing.assert_allclose(
        euler_to_matrix(*csparc_pose_to_relion(pose)), euler_to_matrix(rot, tilt, psi), atol=1e-12
    )
    a = _random_rotations(50, seed=9)
    np.testing.assert_allclose(csparc_pose_to_matrix(matrix_to_csparc_pose(a)), a, atol=1e-12)
