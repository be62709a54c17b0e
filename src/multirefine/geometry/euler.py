"""Euler angles: RELION's ZYZ convention, the one convention of this project.

A pose is ``(rot, tilt, psi)`` in degrees, RELION's ``rlnAngleRot``, ``rlnAngleTilt``,
``rlnAnglePsi``. The rotation matrix ``A`` is RELION/Xmipp's ``Euler_angles2matrix``::

    A = R_z(psi) @ R_y(tilt) @ R_z(rot)      (passive, "rotate the map into the particle frame")

written out element by element below. The 2-D central slice of a map's Fourier
transform that a particle with this pose sees is the plane spanned by rows 0 and 1
of ``A``: the image frequency ``(kx, ky)`` sits at the 3-D frequency
``kx * A[0, :] + ky * A[1, :]`` (vectors in ``(x, y, z)`` order). The projection
direction (the beam, in map coordinates) is row 2 of ``A``.

Functions accept numpy arrays or torch tensors with any leading batch dimensions and
return the same kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "rotation_change_deg",
    "viewing_direction",
]


def _lib(x: Any) -> Any:
    return torch if isinstance(x, torch.Tensor) else np


def euler_to_matrix(rot: Any, tilt: Any, psi: Any) -> Any:
    """RELION ``Euler_angles2matrix``: angles in degrees ``(...)`` -> matrices ``(..., 3, 3)``."""
    lib = _lib(rot)
    if lib is np:
        rot, tilt, psi = (np.asarray(a, dtype=np.float64) for a in (rot, tilt, psi))
        rot, tilt, psi = np.broadcast_arrays(rot, tilt, psi)
    else:
        rot, tilt, psi = torch.broadcast_tensors(
            *(torch.as_tensor(a, dtype=rot.dtype, device=rot.device) for a in (rot, tilt, psi))
        )
    a, b, g = (lib.deg2rad(v) for v in (rot, tilt, psi))
    ca, cb, cg = lib.cos(a), lib.cos(b), lib.cos(g)
    sa, sb, sg = lib.sin(a), lib.sin(b), lib.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return lib.stack([lib.stack(r, -1) for r in rows], -2)


def matrix_to_euler(matrix: Any) -> tuple[Any, Any, Any]:
    """RELION ``Euler_matrix2angles``: ``(..., 3, 3)`` -> ``(rot, tilt, psi)`` in degrees.

    Tilt is in ``[0, 180]``; at tilt 0 or 180 (gimbal lock) rot is set to 0 and psi carries
    the whole in-plane rotation, as RELION does.
    """
    lib = _lib(matrix)
    m = matrix if lib is torch else np.asarray(matrix, dtype=np.float64)
    abs_sb = lib.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    tilt = lib.arctan2(abs_sb, m[..., 2, 2])
    regular = abs_sb > 16 * (1.2e-7 if m.dtype in (np.float32, torch.float32) else 2.2e-16)
    rot_reg = lib.arctan2(m[..., 2, 1], m[..., 2, 0])
    psi_reg = lib.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # Gimbal lock: A = R_z(psi + sign * rot) with tilt 0 (sign +1) or 180 (sign -1).
    sign = lib.where(m[..., 2, 2] > 0, 1.0, -1.0)
    psi_lock = lib.arctan2(-sign * m[..., 1, 0], sign * m[..., 0, 0])
    zero = lib.zeros_like(tilt)
    rot = lib.where(regular, rot_reg, zero)
    psi = lib.where(regular, psi_reg, psi_lock)
    return lib.rad2deg(rot), lib.rad2deg(tilt), lib.rad2deg(psi)


def viewing_direction(rot: Any, tilt: Any) -> Any:
    """Unit projection direction (row 2 of ``A``) in map ``(x, y, z)``: ``(...)`` -> ``(..., 3)``."""
    lib = _lib(rot)
    a, b = lib.deg2rad(rot), lib.deg2rad(tilt)
    return lib.stack([lib.sin(b) * lib.cos(a), lib.sin(b) * lib.sin(a), lib.cos(b)], -1)


def rotation_change_deg(before: np.ndarray, after: np.ndarray, operators: np.ndarray) -> np.ndarray:
    """Angle in degrees between rotations ``(n, 3, 3)``, the smallest over the symmetry's
    ``operators`` ``(S, 3, 3)`` (a pose and its symmetry mate give the same image)."""
    # A pose R and R' = R @ S^T project the same map (the map is S-invariant).
    traces = np.einsum("nij,sjk,nik->ns", before, operators, after)
    return np.degrees(np.arccos(np.clip((traces.max(1) - 1) / 2, -1.0, 1.0)))
