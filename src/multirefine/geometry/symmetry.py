"""Point-group symmetry: RELION's groups and axes, and the asymmetric unit of directions.

Names (case-insensitive) and axes follow RELION 3.1 (``src/symmetries.cpp``,
``SymList::fill_symmetry_class``, Heymann, Chagoyen & Belnap 2005), so a map refined here lies
in the same orientation as RELION's map with the same ``--sym``:

========  =====  ==========================================================================
name      order  generators (axes in map ``(x, y, z)``)
========  =====  ==========================================================================
``Cn``    n      n-fold about z
``Dn``    2n     n-fold about z, 2-fold about x
``T``     12     3-fold about z, 2-fold about (0, sqrt(2/3), sqrt(1/3))
``O``     24     3-fold about (1, 1, 1)/sqrt(3), 4-fold about z (so 4-folds on x, y, z)
``I``     60     = ``I2`` (RELION's default, Crowther 222): 2-folds on x, y, z; 5-fold about
                 (1, 0, g)/|.|, 3-fold about (0, 1/g, g)/|.|, g the golden ratio
``I1``    60     2-fold about x, 5-fold about (g, 0, -1)/|.|, 3-fold about (g, 1/g, 0)/|.|
``I3``    60     5-fold about z, 2-fold about (-1, 0, g)/|.|
``I4``    60     5-fold about (2, 0, 1)/sqrt(5), 2-fold about (1, 0, g)/|.|
========  =====  ==========================================================================

EMAN2's names (``libEM/symmetry.cpp``, its groups as tables of ``(az, alt, phi)``, each made a
matrix by :func:`multirefine.geometry.conversions.eman_to_matrix` and compared as a set with
these; ``tests/geometry/test_symmetry.py``): ``icos`` (a 5-fold on z, EMAN2's 90° turn about z
included) is ``I4`` and ``oct`` is ``O``, to the last digit; ``tet`` (a 3-fold on z) is RELION's
``T`` turned 180° about z, its 2-fold about ``(0, -sqrt(2/3), sqrt(1/3))``, kept as its own
group ``TET``. A map refined with ``--sym icos`` lies as EMAN2's does.

Symmetry operators ``R`` (``(n, 3, 3)``, rotation matrices acting on map coordinates, identity
first) leave the map unchanged: ``V(R x) = V(x)``. With the pose matrix ``A`` of
:mod:`multirefine.geometry.euler` (map -> particle frame), the poses ``A @ R`` give the same image
as ``A`` for every ``R`` in the group, and the projection direction (row 2) of ``A @ R`` is
``R.T @ d`` where ``d`` is that of ``A``.

Asymmetric unit of projection directions. A direction ``d`` is equivalent to ``R d`` for every
``R`` in the group (the group holds every inverse). We take as the asymmetric unit the Dirichlet
cell of a fixed generic reference direction ``p0`` (on no symmetry axis of any group here): ``d``
is in it when, among its distinct symmetry mates ``R d``, ``d`` itself is the closest to ``p0``
(largest ``R d . p0``); exact ties (cell boundaries) go to the mate with the largest ``. p1`` for a
second generic direction ``p1``. Every direction thus has exactly one representative, whatever
the group, and the cell is a connected region of area ``4 pi / order``. For ``Cn`` it is the lune
``|rot - rot(p0)| <= 180/n`` around ``p0``'s meridian; it is not RELION's choice of cell, which
only matters for where the angles of a pose land, not for the maps.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from multirefine.errors import InputError

__all__ = [
    "ASU_REFERENCE_DIRECTION",
    "MAX_ORDER",
    "in_asymmetric_unit",
    "parse_symmetry",
    "symmetry_operators",
    "symmetry_order",
]

_GOLDEN = (1.0 + np.sqrt(5.0)) / 2.0

#: The generic direction ``p0`` whose Dirichlet cell is the asymmetric unit (unit vector, x y z).
ASU_REFERENCE_DIRECTION: np.ndarray = np.array([0.1197, 0.0573, 1.0]) / np.linalg.norm(
    [0.1197, 0.0573, 1.0]
)
_ASU_TIEBREAK_DIRECTION = np.array([0.5623, -0.3119, 0.7659]) / np.linalg.norm(
    [0.5623, -0.3119, 0.7659]
)

MAX_ORDER = 120  # the largest n of Cn and Dn taken: a guard against a slip (c5000), above the rings met in practice
_NAME_ERROR = "expected c<n>, d<n>, t, o or i (also i1, i2, i3, i4; EMAN2's tet, oct, icos), e.g. c1, d7, i"
_EMAN2_NAMES = {"ICOS": "I4", "OCT": "O", "TET": "TET"}  # EMAN2's setting of each group (module docstring)


def parse_symmetry(name: str) -> str:
    """Check a symmetry name; return it canonical: ``"C7"``, ``"D3"``, ``"T"``, ``"O"``, ``"I"``.

    Case and surrounding blanks are ignored; ``I2`` is RELION's default ``I`` and becomes ``"I"``;
    ``I1``, ``I3``, ``I4`` stay; EMAN2's ``icos`` becomes ``"I4"``, ``oct`` ``"O"``, ``tet``
    ``"TET"`` (module docstring). Raises :class:`~multirefine.errors.InputError` otherwise.
    """
    if not isinstance(name, str):
        raise InputError(f"unknown symmetry {name!r}: {_NAME_ERROR}")
    s = name.strip().upper()
    m = re.fullmatch(r"([CD])0*([1-9][0-9]*)", s)
    if m:
        if int(m.group(2)) > MAX_ORDER:
            raise InputError(f"symmetry {name!r}: a {int(m.group(2))}-fold axis; expected at most {MAX_ORDER} "
                             "(each operator is a pass over every map)")
        return f"{m.group(1)}{int(m.group(2))}"
    if s in ("T", "O", "I", "I1", "I3", "I4"):
        return s
    if s in _EMAN2_NAMES:
        return _EMAN2_NAMES[s]
    if s == "I2":
        return "I"
    raise InputError(f"unknown symmetry {name!r}: {_NAME_ERROR}")


def _axis_rotation(fold: int, axis: np.ndarray) -> np.ndarray:
    """Rotation by ``360 / fold`` degrees about ``axis`` (right-handed), ``(3, 3)``."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    t = 2 * np.pi / fold
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _generators(canonical: str) -> list[tuple[int, np.ndarray]]:
    g = _GOLDEN
    kind, n = canonical[0], canonical[1:]
    if kind == "C":
        return [(int(n), np.array([0.0, 0.0, 1.0]))]
    if kind == "D":
        return [(int(n), np.array([0.0, 0.0, 1.0])), (2, np.array([1.0, 0.0, 0.0]))]
    if canonical == "T":
        return [
            (3, np.array([0.0, 0.0, 1.0])),
            (2, np.array([0.0, np.sqrt(2 / 3), np.sqrt(1 / 3)])),
        ]
    if canonical == "TET":  # EMAN2's: T turned 180 degrees about z
        return [
            (3, np.array([0.0, 0.0, 1.0])),
            (2, np.array([0.0, -np.sqrt(2 / 3), np.sqrt(1 / 3)])),
        ]
    if canonical == "O":
        return [(3, np.array([1.0, 1.0, 1.0])), (4, np.array([0.0, 0.0, 1.0]))]
    if canonical == "I":  # RELION pg_I == pg_I2
        return [
            (2, np.array([0.0, 0.0, 1.0])),
            (5, np.array([1.0, 0.0, g])),
            (3, np.array([0.0, 1.0 / g, g])),
        ]
    if canonical == "I1":
        return [
            (2, np.array([1.0, 0.0, 0.0])),
            (5, np.array([g, 0.0, -1.0])),
            (3, np.array([g, 1.0 / g, 0.0])),
        ]
    # I3, I4: RELION also lists a 3-fold, given to ~1e-7 only; a 2-fold and an adjacent 5-fold
    # generate the same group exactly (the tests check RELION's 3-fold is in it).
    if canonical == "I3":
        return [(2, np.array([-1.0, 0.0, g])), (5, np.array([0.0, 0.0, 1.0]))]
    if canonical == "I4":
        return [(2, np.array([1.0, 0.0, g])), (5, np.array([2.0, 0.0, 1.0]))]
    raise AssertionError(canonical)  # parse_symmetry guarantees one of the above


def _expected_order(canonical: str) -> int:
    kind = canonical[0]
    if kind == "C":
        return int(canonical[1:])
    if kind == "D":
        return 2 * int(canonical[1:])
    return {"T": 12, "TET": 12, "O": 24}.get(canonical, 60)


@functools.lru_cache(maxsize=64)
def _operators(canonical: str) -> np.ndarray:
    gens = [_axis_rotation(fold, axis) for fold, axis in _generators(canonical)]
    ops = [np.eye(3)]
    frontier = [np.eye(3)]
    # Breadth-first closure: deterministic order, identity first.
    while frontier:
        new = []
        for m in frontier:
            for gen in gens:
                c = gen @ m
                if not any(np.abs(c - o).max() < 1e-6 for o in ops):
                    ops.append(c)
                    new.append(c)
        frontier = new
    out = np.stack(ops)
    # Remove rounding: nearest rotation matrix (polar factor) of each operator.
    u, _, vt = np.linalg.svd(out)
    out = u @ vt
    out[np.abs(out) < 1e-12] = 0.0
    assert len(out) == _expected_order(canonical), (canonical, len(out))
    out.setflags(write=False)
    return out


def symmetry_operators(name: str) -> np.ndarray:
    """Rotation matrices of the point group, ``(order, 3, 3)`` float64, identity first.

    They act on map coordinates ``(x, y, z)``; a symmetry-equivalent pose of ``A`` is ``A @ R``.
    """
    return _operators(parse_symmetry(name)).copy()


def symmetry_order(name: str) -> int:
    """Number of operators of the group (``C7`` -> 7, ``D3`` -> 6, ``T`` 12, ``O`` 24, ``I`` 60)."""
    return _expected_order(parse_symmetry(name))


def in_asymmetric_unit(directions: np.ndarray, symmetry: str) -> np.ndarray:
    """Whether each unit direction ``(..., 3)`` lies in the asymmetric unit -> bool ``(...)``.

    The asymmetric unit is the Dirichlet cell of :data:`ASU_REFERENCE_DIRECTION` under the group
    (see the module docstring); each direction on the sphere has exactly one symmetry mate in it
    (directions on a symmetry axis are their own mates under that axis's rotations).
    """
    d = np.asarray(directions, dtype=np.float64)
    if d.shape[-1:] != (3,):
        raise ValueError(f"directions must have shape (..., 3), got {d.shape}")
    ops = _operators(parse_symmetry(symmetry))
    mates = np.einsum("gij,...j->...gi", ops, d)  # (..., n, 3)
    distinct = np.abs(mates - d[..., None, :]).max(-1) > 1e-9
    s0 = mates @ ASU_REFERENCE_DIRECTION
    s1 = mates @ _ASU_TIEBREAK_DIRECTION
    self0 = (d @ ASU_REFERENCE_DIRECTION)[..., None]
    self1 = (d @ _ASU_TIEBREAK_DIRECTION)[..., None]
    tol = 1e-9
    better = distinct & ((s0 > self0 + tol) | ((np.abs(s0 - self0) <= tol) & (s1 > self1)))
    return ~better.any(-1)
