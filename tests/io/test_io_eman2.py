"""EMAN2 HDF5 stacks and maps, EMAN2 CTF strings, and .lst lists."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from multirefine.errors import InputError
from multirefine.io import open_particles, read_map, read_maps, write_stack
from multirefine.io.eman2 import (
    eman2_ctf_to_relion,
    parse_eman2_ctf,
    read_eman2_projection_transforms,
    read_lst,
)

CTF = "E1.5 0.2 30 100 10 300 2.7 2.5 0.005 3,1,1,1 3,4,3.9,3.8"


def write_eman2_hdf(path: Path, images: np.ndarray, apix: float, ctf: str | None = CTF) -> None:
    """Write ``images`` in EMAN2's HDF5 layout (MDF/images/<i>/image + EMAN.* attributes)."""
    with h5py.File(path, "w") as fh:
        group = fh.create_group("MDF/images")
        group.attrs["imageid_max"] = np.array([len(images) - 1], dtype=np.int32)
        for i, image in enumerate(images):
            sub = group.create_group(str(i))
            sub.create_dataset("image", data=image.astype(np.float32))
            sub.attrs["EMAN.apix_x"] = np.array([apix])
            sub.attrs["EMAN.nx"] = np.array([image.shape[-1]], dtype=np.int32)
            if ctf is not None:
                sub.attrs["EMAN.ctf"] = np.bytes_(ctf.encode())


def test_parse_ctf() -> None:
    ctf = parse_eman2_ctf(CTF)
    assert ctf.defocus_um == 1.5 and ctf.dfdiff_um == 0.2 and ctf.dfang_deg == 30
    assert ctf.ampcont_percent == 10 and ctf.voltage_kv == 300 and ctf.apix_angstrom == 2.5
    relion = eman2_ctf_to_relion(ctf)
    assert relion["rlnDefocusU"] == pytest.approx(16000.0)
    assert relion["rlnDefocusV"] == pytest.approx(14000.0)
    assert relion["rlnDefocusAngle"] == 30.0
    assert relion["rlnAmplitudeContrast"] == pytest.approx(0.1)
    assert relion["rlnSphericalAberration"] == pytest.approx(2.7)
    with pytest.raises(InputError, match="not an EMAN2Ctf"):
        parse_eman2_ctf("E1.5 0.2")


def test_generated_hdf_stack_and_lst(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 16, 16)).astype(np.float32)
    (tmp_path / "particles").mkdir()
    (tmp_path / "sets").mkdir()
    write_eman2_hdf(tmp_path / "particles" / "p.hdf", images, 2.5)
    stack = open_particles(tmp_path / "particles" / "p.hdf")
    assert len(stack) == 5 and stack.box_size == 16 and stack.has_ctf
    assert stack.pixel_size_angstrom == 2.5
    np.testing.assert_array_equal(stack[[4, 1]], images[[4, 1]])
    np.testing.assert_allclose(stack.metadata["rlnDefocusU"], 16000.0)
    # An EMAN2 project keeps lists in sets/ with paths relative to the project folder.
    lines = ["3\tparticles/p.hdf", "0\tparticles/p.hdf\t{'score': 1}", "3\tparticles/p.hdf"]
    width = max(len(line) for line in lines) + 1
    lst = tmp_path / "sets" / "all.lst"
    lst.write_text("#LSX\n# fast list\n# %d\n" % width + "".join(
        line.ljust(width - 1) + "\n" for line in lines))
    entries = read_lst(lst)
    assert [(e.index, e.file) for e in entries] == [(3, "particles/p.hdf"), (0, "particles/p.hdf"),
                                                     (3, "particles/p.hdf")]
    assert entries[1].extra == "{'score': 1}"
    from_lst = open_particles(lst)
    assert from_lst.metadata["rlnImageName"].tolist() == [
        "4@particles/p.hdf", "1@particles/p.hdf", "4@particles/p.hdf"]
    np.testing.assert_array_equal(from_lst[:], images[[3, 0, 3]])
    assert from_lst.has_ctf and from_lst.pixel_size_angstrom == 2.5


def test_plain_lst_to_mrcs(tmp_path: Path) -> None:
    images = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    write_stack(tmp_path / "s.mrcs", images, 1.25)
    lst = tmp_path / "p.lst"
    lst.write_text("#LST\n1\ts.mrcs\n0\ts.mrcs\n")
    stack = open_particles(lst)
    np.testing.assert_array_equal(stack[:], images[[1, 0]])
    assert stack.pixel_size_angstrom == 1.25 and not stack.has_ctf


def test_bit_reduced_hdf(tmp_path: Path) -> None:
    path = tmp_path / "c.hdf"
    stored = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    with h5py.File(path, "w") as fh:
        sub = fh.create_group("MDF/images/0")
        sub.create_dataset("image", data=stored)
        sub.attrs["EMAN.apix_x"] = np.array([1.0])
        sub.attrs["EMAN.stored_renderbits"] = np.array([8], dtype=np.int32)
        sub.attrs["EMAN.stored_rendermin"] = np.array([-1.0], dtype=np.float32)
        sub.attrs["EMAN.stored_rendermax"] = np.array([1.0], dtype=np.float32)
    image = open_particles(path)[0]
    np.testing.assert_allclose(image, -1.0 + stored / 255.0 * 2.0, atol=1e-6)


def test_bad_lst(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lst"
    bad.write_text("hello\n")
    with pytest.raises(InputError, match=r"bad\.lst: first line is not #LSX or #LST"):
        open_particles(bad)
    past = tmp_path / "past.lst"
    write_eman2_hdf(tmp_path / "p.hdf", np.zeros((2, 8, 8), np.float32), 1.0)
    past.write_text("#LST\n5\tp.hdf\n")
    with pytest.raises(InputError, match=r"past\.lst: particle 0 refers to image 5 .*holds 2"):
        open_particles(past)
    missing = tmp_path / "missing.lst"
    missing.write_text("#LST\n0\tnowhere.hdf\n")
    with pytest.raises(InputError, match=r"missing\.lst: image file nowhere\.hdf not found"):
        open_particles(missing)


def test_not_eman2_hdf(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(InputError, match=r"other\.h5: no MDF/images group"):
        open_particles(path)


# --- real files ---------------------------------------------------------------------------
def test_real_eman2_stack(testdata: Path) -> None:
    stack = open_particles(testdata / "eman2_ptcls.hdf")
    assert len(stack) == 10 and stack.box_size == 64
    assert stack.pixel_size_angstrom == 3.0
    assert stack.has_ctf
    meta = stack.metadata
    # image 0: "E1.682413697 0 0 100 10 300 2.700000048 3 ..."
    assert meta["rlnDefocusU"].iloc[0] == pytest.approx(16824.13697)
    assert meta["rlnDefocusV"].iloc[0] == pytest.approx(16824.13697)
    np.testing.assert_allclose(meta["rlnVoltage"], 300.0)
    np.testing.assert_allclose(meta["rlnAmplitudeContrast"], 0.1)
    np.testing.assert_allclose(meta["rlnSphericalAberration"], 2.7, rtol=1e-6)
    images = stack[:]
    assert images.shape == (10, 64, 64)
    with h5py.File(testdata / "eman2_ptcls.hdf", "r") as fh:
        np.testing.assert_array_equal(images[7], fh["MDF/images/7/image"][()])
        assert images[0].mean() == pytest.approx(float(fh["MDF/images/0"].attrs["EMAN.mean"][0]),
                                                  rel=1e-4)
    xforms = read_eman2_projection_transforms(testdata / "eman2_ptcls.hdf")
    assert xforms.shape == (10, 3, 4)
    rotations = xforms[:, :, :3]
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, 1, 2),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-5)


def test_real_eman2_lst(testdata: Path) -> None:
    stack = open_particles(testdata / "eman2_ptcls.lst")
    direct = open_particles(testdata / "eman2_ptcls.hdf")
    assert len(stack) == 10 and stack.box_size == 64 and stack.pixel_size_angstrom == 3.0
    np.testing.assert_array_equal(stack[:], direct[:])
    np.testing.assert_allclose(stack.metadata["rlnDefocusU"], direct.metadata["rlnDefocusU"])


def test_real_eman2_map(testdata: Path) -> None:
    volume, apix = read_map(testdata / "eman2_map.hdf")
    assert volume.shape == (32, 32, 32) and volume.dtype == np.float32
    assert apix == 3.0
    with h5py.File(testdata / "eman2_map.hdf", "r") as fh:
        assert volume.mean() == pytest.approx(float(fh["MDF/images/0"].attrs["EMAN.mean"][0]),
                                              rel=1e-4)
    maps, apix = read_maps([testdata / "eman2_map.hdf", testdata / "eman2_map.hdf"])
    assert maps.shape == (2, 32, 32, 32) and apix == 3.0


def test_hdf_stack_cut_short_while_read(tmp_path: Path) -> None:
    """An EMAN2 stack cut short after it was opened: one line naming it, not HDF5's trace."""
    path = tmp_path / "p.hdf"
    write_eman2_hdf(path, np.ones((3, 8, 8), np.float32), 1.0)
    stack = open_particles(path)
    stack[[0]]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(InputError, match=r"p\.hdf: cut short while this command read it"):
        stack[[2]]


def test_a_map_written_as_eman2_hdf_reads_back(tmp_path: Path) -> None:
    from multirefine.io.eman2 import is_eman2_hdf, write_eman2_map
    from multirefine.io.maps import read_map

    volume = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    write_eman2_map(tmp_path / "m.hdf", volume, 1.7)
    assert is_eman2_hdf(tmp_path / "m.hdf")
    back, apix = read_map(tmp_path / "m.hdf")
    np.testing.assert_array_equal(back, volume)
    assert apix == pytest.approx(1.7)
    assert not list(tmp_path.glob("*.tmp*"))
