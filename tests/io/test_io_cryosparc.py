"""cryoSPARC .cs reading and the axis-angle <-> RELION Euler convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multirefine.errors import InputError
from multirefine.geometry.conversions import (
    axis_angle_to_matrix,
    csparc_pose_to_relion,
    matrix_to_axis_angle,
    relion_to_csparc_pose,
)
from multirefine.geometry.euler import euler_to_matrix
from multirefine.io import open_particles, write_stack
from multirefine.io.cryosparc import read_cs


def _random_rotvecs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, np.pi, size=(n, 1))


def test_rodrigues_matches_scipy() -> None:
    scipy_transform = pytest.importorskip("scipy.spatial.transform", reason="scipy (multirefine[test]) is the reference")
    rotation = scipy_transform.Rotation
    v = _random_rotvecs(500)
    v[0] = 0.0
    v[1] = [np.pi, 0, 0]
    np.testing.assert_allclose(axis_angle_to_matrix(v), rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    back = matrix_to_axis_angle(axis_angle_to_matrix(v[2:]))
    np.testing.assert_allclose(back, v[2:], atol=1e-9)
    assert axis_angle_to_matrix(np.zeros(3)).shape == (3, 3)
    np.testing.assert_allclose(matrix_to_axis_angle(np.eye(3)), 0.0)


def test_pose_convention_is_transpose() -> None:
    """RELION A = Rodrigues(pose).T; the same as pyem's expmap (K with flipped signs)."""
    v = _random_rotvecs(50, seed=1)
    rot, tilt, psi = csparc_pose_to_relion(v)
    relion = euler_to_matrix(rot, tilt, psi)
    np.testing.assert_allclose(relion, np.swapaxes(axis_angle_to_matrix(v), 1, 2), atol=1e-10)
    # pyem's expmap: k = [[0, w2, -w1], [-w2, 0, w0], [w1, -w0, 0]], R = I + s k + (1-c) k k
    for vec, a in zip(v, relion):
        theta = np.linalg.norm(vec)
        w = vec / theta
        k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
        pyem = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
        np.testing.assert_allclose(a, pyem, atol=1e-10)
    np.testing.assert_allclose(
        axis_angle_to_matrix(relion_to_csparc_pose(rot, tilt, psi)), axis_angle_to_matrix(v), atol=1e-10
    )


def _write_cs(path: Path, records: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, records)


def _tiny_cs(blob_paths: list[str]) -> np.ndarray:
    n = len(blob_paths)
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S64"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("ctf/exp_group_id", "<u4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/psize_A", "<f4"),
        ("alignments3D/class_posterior", "<f4"),
        ("alignments3D/class", "<u4"),
        ("alignments3D/split", "<u4"),
    ]
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = np.arange(n) + 100
    cs["blob/path"] = [p.encode() for p in blob_paths]
    cs["blob/idx"] = [1, 0, 1][:n]
    cs["blob/shape"] = 12
    cs["blob/psize_A"] = 1.5
    cs["ctf/accel_kv"] = 300
    cs["ctf/cs_mm"] = 2.7
    cs["ctf/amp_contrast"] = 0.07
    cs["ctf/df1_A"] = [15000, 16000, 17000][:n]
    cs["ctf/df2_A"] = [14000, 15500, 16000][:n]
    cs["ctf/df_angle_rad"] = np.pi / 4
    cs["ctf/phase_shift_rad"] = np.pi / 2
    cs["alignments3D/shift"] = [[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]][:n]
    cs["alignments3D/pose"] = _random_rotvecs(n, seed=2)
    cs["alignments3D/psize_A"] = 1.5
    cs["alignments3D/class_posterior"] = [0.9, 0.6, 1.0][:n]
    cs["alignments3D/class"] = [0, 1, 1][:n]
    cs["alignments3D/split"] = [0, 1, 0][:n]
    return cs


def test_generated_cs(tmp_path: Path) -> None:
    project = tmp_path / "P1"
    (project / "J7").mkdir(parents=True)
    (project / "J5" / "extract").mkdir(parents=True)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 12, 12)).astype(np.float32)
    b = rng.normal(size=(2, 12, 12)).astype(np.float32)
    write_stack(project / "J5" / "extract" / "a.mrc", a, 1.5)  # found via the project folder
    write_stack(project / "J7" / "b.mrc", b, 1.5)  # found by stripping leading folders
    cs = _tiny_cs([">J5/extract/a.mrc", "J2/imported/b.mrc", "J5/extract/a.mrc"])
    _write_cs(project / "J7" / "particles.cs", cs)
    stack = open_particles(project / "J7" / "particles.cs")
    meta = stack.metadata
    assert len(stack) == 3 and stack.box_size == 12
    assert stack.pixel_size_angstrom == pytest.approx(1.5)
    assert stack.has_ctf
    assert meta["rlnImageName"].tolist() == ["2@J5/extract/a.mrc", "1@J2/imported/b.mrc",
                                             "2@J5/extract/a.mrc"]
    np.testing.assert_allclose(meta["rlnDefocusU"], [15000, 16000, 17000])
    np.testing.assert_allclose(meta["rlnDefocusAngle"], 45.0, rtol=1e-6)
    np.testing.assert_allclose(meta["rlnPhaseShift"], 90.0, rtol=1e-6)
    np.testing.assert_allclose(meta["rlnAmplitudeContrast"], 0.07, rtol=1e-6)
    np.testing.assert_allclose(meta["rlnOriginXAngst"], [1.5, 0.75, 0.0])
    np.testing.assert_allclose(meta["rlnOriginYAngst"], [-3.0, 0.0, 4.5])
    assert meta["rlnClassNumber"].tolist() == [1, 2, 2]
    assert meta["rlnRandomSubset"].tolist() == [1, 2, 1]
    assert meta["rlnOpticsGroup"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(meta["rlnMaxValueProbDistribution"], [0.9, 0.6, 1.0], rtol=1e-6)
    relion = euler_to_matrix(meta["rlnAngleRot"].to_numpy(), meta["rlnAngleTilt"].to_numpy(),
                             meta["rlnAnglePsi"].to_numpy())
    np.testing.assert_allclose(
        relion, np.swapaxes(axis_angle_to_matrix(cs["alignments3D/pose"]), 1, 2), atol=1e-6
    )
    np.testing.assert_array_equal(stack[:], np.stack([a[1], b[0], a[1]]))


def test_cs_metadata_without_images(tmp_path: Path) -> None:
    path = tmp_path / "lonely.cs"
    _write_cs(path, _tiny_cs(["J9/extract/gone.mrc"]))
    stack = open_particles(path)  # metadata needs no images
    assert len(stack) == 1 and stack.box_size == 12 and stack.has_ctf
    with pytest.raises(InputError, match=r"lonely\.cs: image file J9/extract/gone\.mrc not found "
                                         r"\(tried .*gone\.mrc.*\)"):
        stack[0]


def test_bad_cs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.cs: file not found"):
        read_cs(tmp_path / "missing.cs")
    plain = tmp_path / "plain.cs"
    _write_cs(plain, np.zeros(3))
    with pytest.raises(InputError, match=r"plain\.cs: not a cryoSPARC \.cs file"):
        read_cs(plain)
    text = tmp_path / "text.cs"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"text\.cs"):
        read_cs(text)
    nopath = tmp_path / "nopath.cs"
    _write_cs(nopath, np.zeros(2, dtype=[("uid", "<u8"), ("blob/idx", "<u4")]))
    with pytest.raises(InputError, match=r"nopath\.cs: no blob/path field"):
        read_cs(nopath)


# --- real files ---------------------------------------------------------------------------
def test_real_refinement_cs(testdata: Path) -> None:
    path = testdata / "cryosparc_P12_J24_001_particles.cs"
    meta, box = read_cs(path)
    raw = np.load(path)
    assert len(meta) == 2019 and box == 180
    relion = euler_to_matrix(meta["rlnAngleRot"].to_numpy(), meta["rlnAngleTilt"].to_numpy(),
                             meta["rlnAnglePsi"].to_numpy())
    np.testing.assert_allclose(relion @ np.swapaxes(relion, 1, 2), np.broadcast_to(np.eye(3),
                               relion.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(relion), 1.0, atol=1e-9)
    pose = raw["alignments3D/pose"].astype(np.float64)
    np.testing.assert_allclose(relion, np.swapaxes(axis_angle_to_matrix(pose), 1, 2), atol=1e-9)
    # Euler -> pose -> Euler round trip (compare rotations: angles have equivalent forms)
    back = relion_to_csparc_pose(meta["rlnAngleRot"], meta["rlnAngleTilt"], meta["rlnAnglePsi"])
    np.testing.assert_allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(pose), atol=1e-9)
    assert (meta["rlnAngleTilt"] >= 0).all() and (meta["rlnAngleTilt"] <= 180).all()
    np.testing.assert_allclose(meta["rlnOriginXAngst"], raw["alignments3D/shift"][:, 0] * 2.95,
                               rtol=1e-6)
    assert set(meta["rlnClassNumber"]) == {c + 1 for c in set(raw["alignments3D/class"])}
    np.testing.assert_allclose(meta["rlnDefocusAngle"], np.rad2deg(raw["ctf/df_angle_rad"]),
                               rtol=1e-6)
    np.testing.assert_allclose(meta["rlnVoltage"], 200.0)
    stack = open_particles(path)  # images are not shipped: metadata still usable
    assert stack.pixel_size_angstrom == pytest.approx(2.95)
    with pytest.raises(InputError, match=r"P12_J24_001_particles\.cs: image file J19/extract/"):
        stack[0]


def test_real_cs_matches_star(testdata: Path) -> None:
    from_cs = open_particles(testdata / "empiar_10076_7.cs")
    from_star = open_particles(testdata / "empiar_10076_7.star")
    assert len(from_cs) == len(from_star) == 7
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                   "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
        np.testing.assert_allclose(from_cs.metadata[column], from_star.metadata[column],
                                   rtol=1e-5, err_msg=column)
    np.testing.assert_array_equal(from_cs[:], from_star[:])


def test_real_exported_cs(testdata: Path) -> None:
    stack = open_particles(testdata / "cryosparc_J2_particles_exported.cs")
    meta = stack.metadata
    assert len(stack) == 22 and stack.box_size == 300
    assert stack.pixel_size_angstrom == pytest.approx(1.345, abs=1e-5)
    assert meta["rlnImageName"].iloc[0].startswith("1@J1/imported/")  # '>' dropped
    assert "rlnAngleRot" not in meta.columns  # 2-D alignments only
    np.testing.assert_allclose(meta["rlnDefocusAngle"].iloc[0], np.rad2deg(0.86163914), rtol=1e-6)
