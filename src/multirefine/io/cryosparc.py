"""cryoSPARC ``.cs`` particle files (numpy structured arrays) -> the canonical table.

Fields used (all optional except ``blob/path`` and ``blob/idx``):

* ``blob/path`` (bytes; relative to the cryoSPARC *project* folder; a leading ``>``, which
  cryoSPARC writes for imported files, is dropped), ``blob/idx`` (0-based) ->
  ``rlnImageName = f"{idx + 1}@{path}"``; ``blob/shape`` (D, D) -> box size;
  ``blob/psize_A`` -> ``rlnImagePixelSize`` (Å).
* ``ctf/df1_A``, ``ctf/df2_A`` -> ``rlnDefocusU/V`` (Å); ``ctf/df_angle_rad`` ->
  ``rlnDefocusAngle`` (degrees); ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``
  -> voltage (kV), Cs (mm), Q; ``ctf/phase_shift_rad`` -> ``rlnPhaseShift`` (degrees);
  ``ctf/bfactor`` -> ``rlnCtfBfactor``; ``ctf/exp_group_id`` (0-based) -> ``rlnOpticsGroup``.
* ``alignments3D/pose``: axis-angle vector ``r`` (radians). **Convention**: with
  ``R = rotvec_to_matrix(r)`` (Rodrigues, ``R = I + sin|r| K + (1 - cos|r|) K^2``,
  ``K`` the cross-product matrix of ``r/|r|``), RELION's matrix (``Euler_angles2matrix`` of
  ``rot, tilt, psi``, see :mod:`multirefine.geometry.euler`) is ``A = R.T``. This is what
  cryoDRGN (``parse_pose_csparc``: ``lie_tools.expmap(pose)`` then transpose, equated with
  its ``R_from_relion``, which equals RELION's ``A``) and pyem (``csparc2star``: its
  ``expmap`` builds ``R.T`` directly, then RELION's ``Euler_matrix2angles``) both do.
* ``alignments3D/shift`` (pixels of the alignment, ``alignments3D/psize_A`` Å each, else
  ``blob/psize_A``): cryoDRGN and pyem both use it unchanged as RELION's ``rlnOriginX/Y``
  (pixels), i.e. ``-(displacement of the particle from the box centre)``. So
  ``rlnOriginXAngst = shift[0] * psize``, ``rlnOriginYAngst = shift[1] * psize``.
* ``alignments3D/class`` (0-based) -> ``rlnClassNumber`` (1-based);
  ``alignments3D/class_posterior`` -> ``rlnMaxValueProbDistribution``;
  ``alignments3D/split`` (0/1) -> ``rlnRandomSubset`` (1/2).

Images are not touched here: the metadata is readable without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multirefine.errors import InputError
from multirefine.geometry.euler import euler_to_matrix, matrix_to_euler
from multirefine.io.columns import (
    AMPLITUDE_CONTRAST,
    ANGLE_PSI,
    ANGLE_ROT,
    ANGLE_TILT,
    CLASS_NUMBER,
    CTF_BFACTOR,
    DEFOCUS_ANGLE,
    DEFOCUS_U,
    DEFOCUS_V,
    IMAGE_NAME,
    IMAGE_PIXEL_SIZE,
    IMAGE_SIZE,
    MAX_VALUE_PROB_DISTRIBUTION,
    OPTICS_GROUP,
    ORIGIN_X_ANGST,
    ORIGIN_Y_ANGST,
    PHASE_SHIFT,
    RANDOM_SUBSET,
    SPHERICAL_ABERRATION,
    VOLTAGE,
    canonicalize,
)

__all__ = [
    "cs_pose_to_euler",
    "euler_to_cs_pose",
    "matrix_to_rotvec",
    "read_cs",
    "rotvec_to_matrix",
]


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: axis-angle vectors ``(..., 3)`` (radians) -> rotation matrices ``(..., 3, 3)``.

    ``R = I + sin(t) K + (1 - cos(t)) K @ K`` with ``t = |v|`` and ``K`` the cross-product
    matrix of ``v / t`` (``K @ x = (v/t) x x``): an active rotation by ``t`` about ``v``.
    """
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)
    safe = np.where(theta > 0, theta, 1.0)
    k = v / safe[..., None]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    cross = np.stack(
        [
            np.stack([zero, -kz, ky], -1),
            np.stack([kz, zero, -kx], -1),
            np.stack([-ky, kx, zero], -1),
        ],
        -2,
    )
    s = np.sin(theta)[..., None, None]
    c = (1.0 - np.cos(theta))[..., None, None]
    return np.eye(3) + s * cross + c * (cross @ cross)


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_matrix`: ``(..., 3, 3)`` -> ``(..., 3)``, angle in [0, pi].

    Goes through the unit quaternion (Shepperd's method), stable at every angle.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    lead = matrix.shape[:-2]
    m = matrix.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    diag = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    choice = np.argmax(np.concatenate([tr[:, None], diag], -1), axis=-1)
    q = np.empty((len(m), 4))  # (w, x, y, z)
    # Case trace largest.
    t = choice == 0
    s = np.sqrt(np.maximum(1.0 + tr[t], 0.0)) * 2
    q[t] = np.stack(
        [
            s / 4,
            (m[t][:, 2, 1] - m[t][:, 1, 2]) / s,
            (m[t][:, 0, 2] - m[t][:, 2, 0]) / s,
            (m[t][:, 1, 0] - m[t][:, 0, 1]) / s,
        ],
        -1,
    )
    for axis in range(3):
        sel = choice == axis + 1
        if not sel.any():
            continue
        i, j, k = axis, (axis + 1) % 3, (axis + 2) % 3
        mm = m[sel]
        s = np.sqrt(np.maximum(1.0 + mm[:, i, i] - mm[:, j, j] - mm[:, k, k], 0.0)) * 2
        qq = np.empty((len(mm), 4))
        qq[:, 0] = (mm[:, k, j] - mm[:, j, k]) / s
        qq[:, 1 + i] = s / 4
        qq[:, 1 + j] = (mm[:, j, i] + mm[:, i, j]) / s
        qq[:, 1 + k] = (mm[:, k, i] + mm[:, i, k]) / s
        q[sel] = qq
    q = np.where(q[:, :1] < 0, -q, q)
    vec = q[:, 1:]
    norm = np.linalg.norm(vec, axis=-1)
    angle = 2.0 * np.arctan2(norm, q[:, 0])
    scale = np.where(norm > 1e-12, angle / np.where(norm > 1e-12, norm, 1.0), 2.0)
    return (vec * scale[:, None]).reshape(lead + (3,))


def cs_pose_to_euler(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cryoSPARC ``alignments3D/pose`` ``(N, 3)`` -> RELION ``(rot, tilt, psi)`` degrees, ``(N,)``.

    RELION's matrix is the transpose of the Rodrigues matrix of the pose (module docstring).
    """
    relion_matrix = np.swapaxes(rotvec_to_matrix(pose), -1, -2)
    rot, tilt, psi = matrix_to_euler(relion_matrix)
    return np.asarray(rot), np.asarray(tilt), np.asarray(psi)


def euler_to_cs_pose(rot: Any, tilt: Any, psi: Any) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` degrees ``(N,)`` -> cryoSPARC axis-angle pose ``(N, 3)``."""
    relion_matrix = np.asarray(euler_to_matrix(rot, tilt, psi))
    return matrix_to_rotvec(np.swapaxes(relion_matrix, -1, -2))


def _text(values: np.ndarray) -> list[str]:
    out = []
    for v in values:
        s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        out.append(s[1:] if s.startswith(">") else s)
    return out


def read_cs(path: str | Path) -> tuple[pd.DataFrame, int | None]:
    """Read a cryoSPARC ``.cs`` file: ``(canonical table, box size D or None)``.

    ``rlnImageName`` holds ``idx+1@blob/path`` with the path as cryoSPARC wrote it
    (relative to the project folder); resolving it to a file is the job of
    :func:`multirefine.io.particles.open_particles`. Raises :class:`InputError` naming the
    file when it is missing, not a structured array, or lacks ``blob/path``/``blob/idx``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        cs = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as a cryoSPARC .cs file ({err})") from err
    names = cs.dtype.names if isinstance(cs, np.ndarray) else None
    if not names:
        raise InputError(f"{path}: not a cryoSPARC .cs file (expected a numpy structured array)")
    for field in ("blob/path", "blob/idx"):
        if field not in names:
            raise InputError(f"{path}: no {field} field; expected a cryoSPARC particle .cs file")
    n = len(cs)
    table: dict[str, Any] = {}
    files = _text(cs["blob/path"])
    idx = cs["blob/idx"].astype(np.int64)
    table[IMAGE_NAME] = [f"{i + 1}@{f}" for i, f in zip(idx, files)]
    box: int | None = None
    if "blob/shape" in names:
        shapes = np.asarray(cs["blob/shape"]).reshape(n, -1)
        if n and (shapes != shapes[0]).any():
            raise InputError(f"{path}: blob/shape differs between particles; expected one box")
        if n:
            if shapes[0, 0] != shapes[0, -1]:
                raise InputError(f"{path}: blob/shape is {tuple(shapes[0])}; expected square")
            box = int(shapes[0, 0])
            table[IMAGE_SIZE] = np.full(n, box, dtype=np.int64)
    if "blob/psize_A" in names:
        table[IMAGE_PIXEL_SIZE] = cs["blob/psize_A"].astype(np.float64)
    simple = {
        "ctf/df1_A": (DEFOCUS_U, 1.0),
        "ctf/df2_A": (DEFOCUS_V, 1.0),
        "ctf/df_angle_rad": (DEFOCUS_ANGLE, 180.0 / np.pi),
        "ctf/accel_kv": (VOLTAGE, 1.0),
        "ctf/cs_mm": (SPHERICAL_ABERRATION, 1.0),
        "ctf/amp_contrast": (AMPLITUDE_CONTRAST, 1.0),
        "ctf/phase_shift_rad": (PHASE_SHIFT, 180.0 / np.pi),
        "ctf/bfactor": (CTF_BFACTOR, 1.0),
    }
    for field, (column, factor) in simple.items():
        if field in names:
            table[column] = cs[field].astype(np.float64) * factor
    if "ctf/exp_group_id" in names:
        table[OPTICS_GROUP] = cs["ctf/exp_group_id"].astype(np.int64) + 1
    if "alignments3D/pose" in names:
        rot, tilt, psi = cs_pose_to_euler(np.asarray(cs["alignments3D/pose"]).reshape(n, 3))
        table[ANGLE_ROT], table[ANGLE_TILT], table[ANGLE_PSI] = rot, tilt, psi
    if "alignments3D/shift" in names:
        shift = np.asarray(cs["alignments3D/shift"], dtype=np.float64).reshape(n, 2)
        if "alignments3D/psize_A" in names:
            psize = cs["alignments3D/psize_A"].astype(np.float64)
        elif "blob/psize_A" in names:
            psize = cs["blob/psize_A"].astype(np.float64)
        else:
            raise InputError(f"{path}: alignments3D/shift given without any psize_A field")
        table[ORIGIN_X_ANGST] = shift[:, 0] * psize
        table[ORIGIN_Y_ANGST] = shift[:, 1] * psize
    if "alignments3D/class" in names:
        table[CLASS_NUMBER] = cs["alignments3D/class"].astype(np.int64) + 1
    if "alignments3D/class_posterior" in names:
        table[MAX_VALUE_PROB_DISTRIBUTION] = cs["alignments3D/class_posterior"].astype(np.float64)
    if "alignments3D/split" in names:
        table[RANDOM_SUBSET] = cs["alignments3D/split"].astype(np.int64) + 1
    metadata = pd.DataFrame(table)
    return canonicalize(metadata, path), box
