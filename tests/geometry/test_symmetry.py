"""Point groups (RELION's axes) are groups; the asymmetric unit holds one mate of each direction."""

from __future__ import annotations

import numpy as np
import pytest

from multirefine.errors import InputError
from multirefine.geometry import (
    euler_to_matrix,
    in_asymmetric_unit,
    parse_symmetry,
    symmetry_operators,
    symmetry_order,
)
from multirefine.geometry.conversions import axis_angle_to_matrix

ORDERS = {
    "c1": 1,
    "C7": 7,
    "c12": 12,
    "d1": 2,
    "D3": 6,
    "d7": 14,
    "t": 12,
    "O": 24,
    "i": 60,
    "I1": 60,
    "i2": 60,
    "i3": 60,
    "I4": 60,
    "tet": 12,
    "oct": 24,
    "icos": 60,
}


def _in_group(m: np.ndarray, ops: np.ndarray, tol: float = 1e-6) -> bool:
    return bool((np.abs(ops - m).max(axis=(1, 2)) < tol).any())


def _fold(n: int, axis: list[float]) -> np.ndarray:
    u = np.asarray(axis, float)
    return axis_angle_to_matrix(u / np.linalg.norm(u) * 2 * np.pi / n)


def _random_directions(n: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.mark.parametrize(("name", "order"), ORDERS.items())
def test_group_axioms(name: str, order: int) -> None:
    ops = symmetry_operators(name)
    assert ops.shape == (order, 3, 3)
    assert symmetry_order(name) == order
    np.testing.assert_array_equal(ops[0], np.eye(3))
    np.testing.assert_allclose(
        ops @ np.swapaxes(ops, 1, 2), np.broadcast_to(np.eye(3), ops.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(ops), 1.0, atol=1e-12)
    # Closed under composition and inverse; all distinct.
    for a in ops:
        assert _in_group(a.T, ops, 1e-10)
        for b in ops:
            assert _in_group(a @ b, ops, 1e-10)
    diff = np.abs(ops[:, None] - ops[None]).max(axis=(2, 3))
    assert np.all(diff[~np.eye(order, dtype=bool)] > 1e-3)


def test_relion_axes() -> None:
    """The generators RELION 3.1 lists in symmetries.cpp (fill_symmetry_class) are in our groups."""
    g = (1 + np.sqrt(5)) / 2
    assert _in_group(_fold(7, [0, 0, 1]), symmetry_operators("c7"))
    assert _in_group(_fold(2, [1, 0, 0]), symmetry_operators("d3"))  # D: 2-fold along x
    t = symmetry_operators("t")
    assert _in_group(_fold(3, [0, 0, 1]), t)
    assert _in_group(_fold(2, [0, 0.816496, 0.577350]), t, 1e-5)
    o = symmetry_operators("o")
    assert _in_group(_fold(3, [1, 1, 1]), o)
    for ax in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert _in_group(_fold(4, ax), o)
    i = symmetry_operators("i")
    for ax in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):  # I2: 2-folds on x, y, z
        assert _in_group(_fold(2, ax), i)
    assert _in_group(_fold(5, [0.525731114, 0, 0.850650807]), i, 1e-6)
    assert _in_group(_fold(3, [0, 0.356822076, 0.934172364]), i, 1e-6)
    i1 = symmetry_operators("i1")
    assert _in_group(_fold(5, [g, 0, -1]), i1) and _in_group(_fold(3, [g, 1 / g, 0]), i1)
    i3 = symmetry_operators("i3")
    assert _in_group(_fold(5, [0, 0, 1]), i3)
    assert _in_group(
        _fold(3, [-0.4911234778630044, 0.3568220764705179, 0.7946544753759428]), i3, 1e-6
    )
    i4 = symmetry_operators("i4")
    assert _in_group(_fold(5, [0.8944271932547096, 0, 0.4472135909903704]), i4)
    assert _in_group(
        _fold(3, [0.4911234778630044, 0.3568220764705179, 0.7946544753759428]), i4, 1e-6
    )


def test_parse_symmetry() -> None:
    assert parse_symmetry("c1") == "C1"
    assert parse_symmetry(" C7 ") == "C7"
    assert parse_symmetry("d03") == "D3"
    assert parse_symmetry("t") == "T"
    assert parse_symmetry("o") == "O"
    assert parse_symmetry("I2") == "I"
    assert parse_symmetry("i4") == "I4"
    assert (parse_symmetry("icos"), parse_symmetry("OCT"), parse_symmetry("tet")) == ("I4", "O", "TET")


def _eman2_group(table: list[tuple[float, float, float]]) -> np.ndarray:
    from multirefine.geometry.conversions import eman_to_matrix

    a = np.asarray(table, dtype=np.float64)
    return eman_to_matrix(a[:, 0], a[:, 1], a[:, 2])


def _same_set(g: np.ndarray, h: np.ndarray) -> bool:
    return len(g) == len(h) and all(np.abs(h - m).max(axis=(1, 2)).min() < 1e-4 for m in g)


def test_eman2_names_are_eman2s_groups() -> None:
    """EMAN2's groups as its libEM/symmetry.cpp lists them, (az, alt, phi) per operator (icos
    with its 90° turn about z: az + 90, phi - 90), made matrices by EMAN2's Transform: as sets,
    icos is I4, oct is O and tet is TET (RELION's T turned 180° about z, not T)."""
    five, l1, l2 = (0, 288, 216, 144, 72), 63.4349, 116.5651
    icos = ([(0, 0, p) for p in five] + [(a, l1, p) for a in (0, 72, 144, 216, 288) for p in (36, 324, 252, 180, 108)]
            + [(a, l2, p) for a in (36, 108, 180, 252, 324) for p in five] + [(0, 180, p) for p in five])
    quarter = (0, 90, 180, 270)
    octa = [(0, 0, p) for p in quarter] + [(a, 90, p) for a in quarter for p in quarter] + [(0, 180, p) for p in quarter]
    tet = [(0, 0, p) for p in (0, 120, 240)] + [(a, 109.4712, p) for a in (0, 120, 240) for p in (60, 180, 300)]
    assert _same_set(_eman2_group([(a + 90, b, p - 90) for a, b, p in icos]), symmetry_operators("icos"))
    assert _same_set(_eman2_group(octa), symmetry_operators("oct"))
    assert _same_set(_eman2_group(tet), symmetry_operators("tet"))
    assert not _same_set(_eman2_group(tet), symmetry_operators("t"))
    assert not _same_set(_eman2_group(icos), symmetry_operators("icos"))  # the 90° turn is EMAN2's


@pytest.mark.parametrize("bad", ["q5", "c0", "c", "icos2", "octa", "d2x", "", "I5", "c-1"])
def test_unknown_symmetry_raises(bad: str) -> None:
    with pytest.raises(
        InputError, match=f"unknown symmetry '{bad}'.*expected c<n>, d<n>, t, o or i"
    ):
        symmetry_operators(bad)


def test_non_string_symmetry_raises() -> None:
    with pytest.raises(InputError, match="unknown symmetry 5"):
        parse_symmetry(5)  # type: ignore[arg-type]


def test_symmetry_equivalent_pose_is_a_times_r() -> None:
    """A @ R sees the same projection of a symmetric object as A; its direction is R.T @ d."""
    ops = symmetry_operators("d3")
    rng = np.random.default_rng(0)
    # A D3-symmetric object: the orbit of a few random atoms.
    atoms = np.concatenate([ops @ x for x in rng.normal(size=(4, 3))])
    a = euler_to_matrix(37.0, 71.0, -23.0)
    ref = np.sort((atoms @ a.T)[:, :2].round(9), axis=0)  # (x, y) in the particle frame
    for r in ops:
        ar = a @ r
        np.testing.assert_allclose(ar[2], r.T @ a[2], atol=1e-12)
        proj = np.sort((atoms @ ar.T)[:, :2].round(9), axis=0)
        np.testing.assert_allclose(proj, ref, atol=1e-8)


@pytest.mark.parametrize("name", ["c1", "c7", "d3", "t", "o", "i", "i3", "tet"])
def test_asymmetric_unit_holds_one_mate_of_each_direction(name: str) -> None:
    ops = symmetry_operators(name)
    d = _random_directions(2000, seed=1)
    mates = np.einsum("gij,nj->ngi", ops, d)  # (n, order, 3), all distinct for random d
    inside = in_asymmetric_unit(mates, name)
    np.testing.assert_array_equal(inside.sum(1), 1)


@pytest.mark.parametrize("name", ["c1", "c7", "d3", "t", "o", "i"])
def test_asymmetric_unit_fraction(name: str) -> None:
    n = 60000
    frac = in_asymmetric_unit(_random_directions(n, seed=2), name).mean()
    p = 1 / symmetry_order(name)
    assert abs(frac - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_directions_on_axes_are_counted_once() -> None:
    # The z axis is fixed by C7: it is in the asymmetric unit (its only mate is itself).
    assert in_asymmetric_unit(np.array([0.0, 0, 1]), "c7")
    # The 5-fold of I: its 12 distinct mates (the 5-fold axes); exactly one is inside.
    ops = symmetry_operators("i")
    axis = np.array([1.0, 0, (1 + np.sqrt(5)) / 2])
    mates = ops @ (axis / np.linalg.norm(axis))
    distinct = np.unique(mates.round(9), axis=0)
    assert len(distinct) == 12
    assert in_asymmetric_unit(distinct, "i").sum() == 1
