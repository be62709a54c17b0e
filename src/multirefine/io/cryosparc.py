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
from multirefine.geometry.conversions import csparc_pose_to_relion
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

__all__ = ["read_cs"]


def _text(values: np.ndarray) -> list[str]:
    out = []
    for v in values:
        s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        out.append(s.removeprefix(">"))
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
    except Exception as err:
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
        rot, tilt, psi = csparc_pose_to_relion(np.asarray(cs["alignments3D/pose"], dtype=np.float64).reshape(n, 3))
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
