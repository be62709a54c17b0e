"""Orientation grids for the search, and distances between poses.

Angles are RELION's ``(rot, tilt, psi)`` in degrees, matrices RELION's ``A`` (see
:mod:`multirefine.geometry.euler`); grid steps are in degrees.

Projection directions come from a spherical Fibonacci (golden-spiral) lattice: ``n`` points with
equal area ``4 pi / n`` each, ``n = round(4 pi / step^2)`` (step in radians), so ``n`` is about
RELION's HEALPix count at the same nominal step (15 deg: 183 here, 192 for HEALPix order 2).
Its largest gap (the angular distance from the worst-placed direction to the nearest grid point)
is about 0.7-0.75 x step. Restricted to a point group's asymmetric unit (see
:func:`multirefine.geometry.symmetry.in_asymmetric_unit`), the grid's symmetry images cover the
sphere with the same largest gap.

In-plane angles are ``psi = k * 360 / m``, ``m = ceil(360 / step)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.geometry.euler import _lib, euler_to_matrix, matrix_to_euler
from multirefine.geometry.symmetry import in_asymmetric_unit, symmetry_operators

__all__ = [
    "angular_distance",
    "angular_distance_symmetric",
    "directions_to_angles",
    "inplane_angles",
    "local_orientation_grid",
    "local_rotations",
    "orientation_grid",
    "projection_directions",
    "sphere_directions",
]


def _check_step(step_deg: float, what: str = "angular step") -> float:
    step = float(step_deg)
    if not (math.isfinite(step) and 0 < step <= 360):
        raise InputError(f"{what} {step_deg!r}: expected a number of degrees in (0, 360]")
    return step


def sphere_directions(step_deg: float) -> np.ndarray:
    """Evenly spread unit vectors ``(n, 3)`` (x, y, z), ``n = round(4 pi / step_rad^2)``, n >= 2.

    Spherical Fibonacci lattice: ``z_i = 1 - (2 i + 1) / n``, azimuth ``i`` times the golden
    angle. Deterministic; the largest gap is about 0.7-0.75 x ``step_deg``.
    """
    step = math.radians(_check_step(step_deg))
    n = max(2, round(4 * math.pi / step**2))
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * (math.pi * (3.0 - math.sqrt(5.0)))  # golden angle
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def directions_to_angles(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit projection directions ``(..., 3)`` -> ``(rot, tilt)`` in degrees, ``(...)`` each.

    Inverse of :func:`multirefine.geometry.euler.viewing_direction`: rot in (-180, 180],
    tilt in [0, 180].
    """
    d = np.asarray(directions, dtype=np.float64)
    rot = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
    tilt = np.degrees(np.arctan2(np.hypot(d[..., 0], d[..., 1]), d[..., 2]))
    return rot, tilt


def projection_directions(step_deg: float, symmetry: str = "C1") -> tuple[np.ndarray, np.ndarray]:
    """Directions covering the asymmetric unit of ``symmetry``: ``(rot, tilt)``, degrees, ``(n,)``.

    The directions of :func:`sphere_directions` that lie in the group's asymmetric unit
    (about ``1 / order`` of them); every direction on the sphere is within the grid's largest gap
    of ``R d`` for some grid direction ``d`` and group operator ``R``.
    """
    d = sphere_directions(step_deg)
    return directions_to_angles(d[in_asymmetric_unit(d, symmetry)])


def inplane_angles(step_deg: float) -> np.ndarray:
    """In-plane angles ``psi`` (degrees) ``(m,)``: ``k * 360 / m`` with ``m = ceil(360 / step)``.

    Covers [0, 360) with an even spacing of at most ``step_deg``.
    """
    step = _check_step(step_deg, "in-plane step")
    m = max(1, math.ceil(360.0 / step - 1e-9))
    return np.arange(m, dtype=np.float64) * (360.0 / m)


def orientation_grid(
    step_deg: float, symmetry: str = "C1", psi_step_deg: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full search grid over the asymmetric unit: ``(rot, tilt, psi)`` in degrees, ``(n * m,)``.

    Cartesian product of :func:`projection_directions` ``(n)`` with :func:`inplane_angles`
    ``(m)``, direction-major (index ``i * m + k`` is direction ``i``, in-plane angle ``k``).
    ``psi_step_deg`` defaults to ``step_deg``.
    """
    rot, tilt = projection_directions(step_deg, symmetry)
    psi = inplane_angles(step_deg if psi_step_deg is None else psi_step_deg)
    m = len(psi)
    return np.repeat(rot, m), np.repeat(tilt, m), np.tile(psi, len(rot))


def local_rotations(range_deg: float, step_deg: float) -> np.ndarray:
    """Small rotations ``(k, 3, 3)`` within ``range_deg`` of the identity, identity first.

    The rotation vectors of a cubic lattice of spacing ``step_deg`` (in radians) inside the ball of
    radius ``range_deg``; the geodesic angle of each rotation is the length of its vector, so all
    lie within ``range_deg`` and every rotation within ``range_deg`` is within about
    ``0.87 x step_deg`` of one of them. Sorted by angle, then lexicographically.
    """
    step = _check_step(step_deg, "local step")
    rng = float(range_deg)
    if not (math.isfinite(rng) and 0 <= rng <= 180):
        raise InputError(f"local search range {range_deg!r}: expected degrees in [0, 180]")
    k = math.floor(rng / step + 1e-9)
    ax = np.arange(-k, k + 1, dtype=np.float64)
    v = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3) * step
    length = np.sqrt((v**2).sum(-1))
    v = v[length <= rng + 1e-9]
    order = np.lexsort((v[:, 2], v[:, 1], v[:, 0], np.round(np.sqrt((v**2).sum(-1)), 9)))
    v = np.radians(v[order])
    # Rodrigues, as multirefine.geometry.conversions.axis_angle_to_matrix (kept local: numpy only).
    theta = np.sqrt((v**2).sum(-1))[:, None, None]
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    zero = np.zeros_like(x)
    kmat = np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )
    a = np.sinc(theta / np.pi)
    b = 0.5 * np.sinc(theta / (2 * np.pi)) ** 2
    return np.eye(3) + a * kmat + b * (kmat @ kmat)


def local_orientation_grid(
    rot: Any, tilt: Any, psi: Any, range_deg: float, step_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses within ``range_deg`` (geodesic) of each centre pose, the centre first.

    ``rot, tilt, psi``: centre poses in degrees, ``(...)`` (broadcast). Returns ``(rot, tilt, psi)``
    in degrees, each ``(..., k)``, ``k = len(local_rotations(range_deg, step_deg))``; entry
    ``[..., 0]`` is the centre itself (up to RELION's angle normalisation). The poses are
    ``D @ A`` for the small rotations ``D`` of :func:`local_rotations` (the geodesic distance is
    bi-invariant, so ``angle(D @ A, A) = angle(D)``).
    """
    a = euler_to_matrix(
        *np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (rot, tilt, psi)))
    )
    d = local_rotations(range_deg, step_deg)
    poses = np.einsum("kij,...jl->...kil", d, a)
    return matrix_to_euler(poses)


def angular_distance(a: Any, b: Any) -> Any:
    """Geodesic angle in degrees between rotation matrices ``(..., 3, 3)`` (broadcast) -> ``(...)``.

    ``angle(A @ B.T)``, in [0, 180], from ``atan2`` of the skew and symmetric parts (accurate at
    0 and 180). numpy or torch.
    """
    lib = _lib(a)
    if lib is np:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        m = a @ np.swapaxes(b, -1, -2)
    else:
        m = a @ b.to(a.dtype).transpose(-1, -2)
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    skew = lib.sqrt(
        (m[..., 2, 1] - m[..., 1, 2]) ** 2
        + (m[..., 0, 2] - m[..., 2, 0]) ** 2
        + (m[..., 1, 0] - m[..., 0, 1]) ** 2
    )
    return lib.rad2deg(lib.arctan2(skew, tr - 1))


def angular_distance_symmetric(a: Any, b: Any, symmetry: str) -> Any:
    """Smallest geodesic angle (degrees) between ``A @ R`` and ``B`` over the group's ``R``.

    ``a, b``: rotation matrices ``(..., 3, 3)`` (broadcast) -> ``(...)``. ``A @ R`` is the pose
    equivalent to ``A`` under the map symmetry ``R`` (see :mod:`multirefine.geometry.symmetry`).
    numpy or torch.
    """
    ops: Any = symmetry_operators(symmetry)
    lib = _lib(a)
    if lib is not np:
        ops = torch.as_tensor(ops, dtype=a.dtype, device=a.device)
        b = b.to(a.dtype)
        ar = a[..., None, :, :] @ ops
        return angular_distance(ar, b[..., None, :, :]).amin(-1)
    ar = np.asarray(a, dtype=np.float64)[..., None, :, :] @ ops
    return angular_distance(ar, np.asarray(b, dtype=np.float64)[..., None, :, :]).min(-1)
