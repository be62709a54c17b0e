"""Pose conversions between EMAN2, cryoSPARC and RELION (the project's convention).

Everything goes through RELION's rotation matrix ``A`` (see :mod:`multirefine.geometry.euler`:
``A`` maps map coordinates into the particle frame, rows 0 and 1 span the central slice, row 2
is the projection direction).

EMAN2 ``(az, alt, phi)``, Transform type ``"eman"`` (degrees)
    EMAN2's ``libEM/transform.cpp`` (``Transform::set_rotation``) builds the ZXZ matrix ::

        M = R_z(phi) @ R_x(alt) @ R_z(az)
        R_z(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]
        R_x(b) = [[1, 0, 0], [0, cos b, sin b], [0, -sin b, cos b]]

    and its ``"spider"`` type (SPIDER ZYZ, the same angles as RELION's) is
    ``az = phi_spider + 90, alt = theta, phi = psi_spider - 90``. We checked element by element
    that ``M(rot + 90, tilt, psi - 90) == A(rot, tilt, psi)``: the EMAN2 projection transform *is*
    RELION's ``A``, and ::

        rot = az - 90,   tilt = alt,   psi = phi + 90      (degrees)

    The conversions below go through the matrices, so they are exact at gimbal lock too.

cryoSPARC ``alignments3D/pose`` (axis-angle vector, radians)
    The pose vector ``v`` is a rotation vector (axis times angle in radians). With the standard
    (right-handed, active) Rodrigues formula ``exp(v) = I + sin(t) K + (1 - cos(t)) K @ K``
    (``t = |v|``, ``K`` the cross-product matrix of ``v / t``), RELION's matrix is ::

        A = exp(v).T      i.e.   v = log(A.T)

    Sources: cryoDRGN ``commands/parse_pose_csparc.py`` transposes ``lie_tools.expmap(pose)``
    (the standard formula) to get its rotation, and cryoDRGN's ``R_from_relion`` equals RELION's
    ``Euler_angles2matrix``; pyem's ``csparc2star`` computes ``rot2euler(expmap(pose))`` with an
    ``expmap`` built on the transposed cross-product matrix, i.e. also ``A = exp(v).T``.
    (Shifts are not handled here: cryoSPARC's ``alignments3D/shift`` is in pixels and belongs to
    the particle reader.)

Functions accept numpy arrays or torch tensors with any leading batch dimensions and return the
same kind; no scipy at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from multirefine.geometry.euler import _lib, euler_to_matrix, matrix_to_euler

__all__ = [
    "axis_angle_to_matrix",
    "csparc_pose_to_matrix",
    "csparc_pose_to_relion",
    "eman_to_matrix",
    "eman_to_relion",
    "matrix_to_axis_angle",
    "matrix_to_csparc_pose",
    "matrix_to_eman",
    "relion_to_csparc_pose",
    "relion_to_eman",
]


def _as_float(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    return np.asarray(x, dtype=np.float64)


def _transpose(m: Any) -> Any:
    return m.transpose(-1, -2) if isinstance(m, torch.Tensor) else np.swapaxes(m, -1, -2)


def _eps(x: Any) -> float:
    return 1.2e-7 if x.dtype in (np.float32, torch.float32) else 2.2e-16


# --------------------------------------------------------------------------- axis-angle


def axis_angle_to_matrix(rotvec: Any) -> Any:
    """Rodrigues formula: rotation vectors ``(..., 3)`` (radians) -> matrices ``(..., 3, 3)``.

    Active, right-handed: ``axis_angle_to_matrix([0, 0, t]) @ [1, 0, 0] = [cos t, sin t, 0]``.
    Same result as ``scipy.spatial.transform.Rotation.from_rotvec(v).as_matrix()``.
    """
    v = _as_float(rotvec)
    lib = _lib(v)
    theta = lib.sqrt((v**2).sum(-1))
    # sin(t)/t and (1 - cos t)/t^2, both stable at t = 0 (sinc(x) = sin(pi x) / (pi x)).
    a = lib.sinc(theta / np.pi)[..., None, None]
    b = 0.5 * lib.sinc(theta / (2 * np.pi))[..., None, None] ** 2
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = lib.zeros_like(x)
    k = lib.stack(
        [
            lib.stack([zero, -z, y], -1),
            lib.stack([z, zero, -x], -1),
            lib.stack([-y, x, zero], -1),
        ],
        -2,
    )
    eye = lib.eye(3, dtype=v.dtype, device=v.device) if lib is torch else np.eye(3)
    return eye + a * k + b * (k @ k)


def _matrix_to_quaternion(m: Any) -> Any:
    """Unit quaternions ``(..., 4)`` as ``(w, x, y, z)`` with ``w >= 0`` (Shepperd's method)."""
    lib = _lib(m)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four candidates, each proportional to q; the one with the largest leading term is stable.
    cands = lib.stack(
        [
            lib.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            lib.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            lib.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            lib.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    lead = lib.stack([cands[..., i, i] for i in range(4)], -1)
    best = lead.argmax(-1)
    q: Any
    if lib is torch:
        q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    else:
        q = np.take_along_axis(cands, best[..., None, None], -2)[..., 0, :]
    q = q / lib.sqrt((q**2).sum(-1))[..., None]
    sign = lib.where(q[..., :1] < 0, -1.0, 1.0)
    return q * sign


def matrix_to_axis_angle(matrix: Any) -> Any:
    """Inverse of :func:`axis_angle_to_matrix`: ``(..., 3, 3)`` -> ``(..., 3)``, angle in [0, pi].

    At exactly pi the sign of the axis is arbitrary (both vectors give the same rotation).
    """
    m = _as_float(matrix)
    lib = _lib(m)
    q = _matrix_to_quaternion(m)
    w, vec = q[..., 0], q[..., 1:]
    n = lib.sqrt((vec**2).sum(-1))
    angle = 2 * lib.arctan2(n, w)
    small = n < 1e3 * _eps(m)
    # angle / n -> 2 / w as n -> 0 (w -> 1 there); the inner where()s keep both branches finite.
    one = lib.ones_like(n)
    factor = lib.where(small, 2.0 / lib.where(small, w, one), angle / lib.where(small, one, n))
    return vec * factor[..., None]


# --------------------------------------------------------------------------- EMAN2


def eman_to_matrix(az: Any, alt: Any, phi: Any) -> Any:
    """EMAN2 Transform ``"eman"`` angles (degrees, ``(...)``) -> matrices ``(..., 3, 3)``.

    Element by element EMAN2's ``Transform::set_rotation``; equals RELION's ``A`` for
    ``(rot, tilt, psi) = (az - 90, alt, phi + 90)``.
    """
    lib = _lib(az)
    if lib is np:
        az, alt, phi = np.broadcast_arrays(
            *(np.asarray(a, dtype=np.float64) for a in (az, alt, phi))
        )
    else:
        az, alt, phi = torch.broadcast_tensors(
            *(torch.as_tensor(a, dtype=az.dtype, device=az.device) for a in (az, alt, phi))
        )
    a, b, p = (lib.deg2rad(x) for x in (az, alt, phi))
    ca, sa, cb, sb, cp, sp = lib.cos(a), lib.sin(a), lib.cos(b), lib.sin(b), lib.cos(p), lib.sin(p)
    rows = [
        [cp * ca - cb * sa * sp, cp * sa + cb * ca * sp, sb * sp],
        [-sp * ca - cb * sa * cp, -sp * sa + cb * ca * cp, sb * cp],
        [sb * sa, -sb * ca, cb],
    ]
    return lib.stack([lib.stack(r, -1) for r in rows], -2)


def matrix_to_eman(matrix: Any) -> tuple[Any, Any, Any]:
    """Matrices ``(..., 3, 3)`` -> EMAN2 ``(az, alt, phi)`` (degrees), as EMAN2's ``get_rotation``.

    ``alt`` is in [0, 180], ``az`` and ``phi`` in [0, 360). At gimbal lock (alt 0 or 180) az is
    set to 0 and phi carries the in-plane rotation, as EMAN2 does.
    """
    m = _as_float(matrix)
    lib = _lib(m)
    sin_alt = lib.sqrt(m[..., 2, 0] ** 2 + m[..., 2, 1] ** 2)
    alt = lib.arctan2(sin_alt, m[..., 2, 2])
    regular = sin_alt > 16 * _eps(m)
    az_reg = lib.arctan2(m[..., 2, 0], -m[..., 2, 1])
    phi_reg = lib.arctan2(m[..., 0, 2], m[..., 1, 2])
    # alt = 0: M = R_z(az + phi); alt = 180: M[0, :2] = (cos(phi - az), -sin(phi - az)).
    sign = lib.where(m[..., 2, 2] > 0, 1.0, -1.0)
    phi_lock = sign * lib.arctan2(m[..., 0, 1], m[..., 0, 0])
    az = lib.where(regular, az_reg, lib.zeros_like(alt))
    phi = lib.where(regular, phi_reg, phi_lock)
    return lib.rad2deg(az) % 360.0, lib.rad2deg(alt), lib.rad2deg(phi) % 360.0


def eman_to_relion(az: Any, alt: Any, phi: Any) -> tuple[Any, Any, Any]:
    """EMAN2 ``(az, alt, phi)`` -> RELION ``(rot, tilt, psi)``, degrees, ``(...)`` each.

    Through the matrix (``rot = az - 90, tilt = alt, psi = phi + 90`` up to RELION's
    normalisation: angles in (-180, 180], tilt in [0, 180], gimbal lock put into psi).
    """
    return matrix_to_euler(eman_to_matrix(az, alt, phi))


def relion_to_eman(rot: Any, tilt: Any, psi: Any) -> tuple[Any, Any, Any]:
    """RELION ``(rot, tilt, psi)`` -> EMAN2 ``(az, alt, phi)``, degrees, ``(...)`` each."""
    return matrix_to_eman(euler_to_matrix(rot, tilt, psi))


# --------------------------------------------------------------------------- cryoSPARC


def csparc_pose_to_matrix(pose: Any) -> Any:
    """cryoSPARC ``alignments3D/pose`` ``(..., 3)`` (radians) -> RELION ``A`` ``(..., 3, 3)``."""
    return _transpose(axis_angle_to_matrix(pose))


def matrix_to_csparc_pose(matrix: Any) -> Any:
    """RELION ``A`` ``(..., 3, 3)`` -> cryoSPARC pose vector ``(..., 3)`` (radians)."""
    return matrix_to_axis_angle(_transpose(_as_float(matrix)))


def csparc_pose_to_relion(pose: Any) -> tuple[Any, Any, Any]:
    """cryoSPARC pose vector ``(..., 3)`` (radians) -> RELION ``(rot, tilt, psi)`` (degrees)."""
    return matrix_to_euler(csparc_pose_to_matrix(pose))


def relion_to_csparc_pose(rot: Any, tilt: Any, psi: Any) -> Any:
    """RELION ``(rot, tilt, psi)`` (degrees) -> cryoSPARC pose vector ``(..., 3)`` (radians)."""
    return matrix_to_csparc_pose(euler_to_matrix(rot, tilt, psi))
