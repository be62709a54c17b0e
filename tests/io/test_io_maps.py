"""Map reading/writing and MRC particle-stack writing."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from multirefine.errors import InputError
from multirefine.io import MrcStackWriter, read_map, read_maps, write_map, write_stack


def _volume(d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(d, d, d)).astype(np.float32)


def test_write_read_map(tmp_path: Path) -> None:
    vol = _volume()
    path = tmp_path / "m.mrc"
    write_map(path, vol, 1.75)
    got, apix = read_map(path)
    np.testing.assert_array_equal(got, vol)
    assert apix == pytest.approx(1.75)
    with mrcfile.open(path) as mrc:
        assert mrc.data.dtype == np.float32
        assert tuple(mrc.header.origin.tolist()) == (0.0, 0.0, 0.0)
        assert int(mrc.header.nxstart) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.mrc"]


def test_write_map_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "keep.mrc"
    write_map(path, _volume(), 1.0)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_map(path, np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError):  # fails inside the temporary file
        write_map(path, _volume(), "big")  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mrc"]


def test_read_maps_stack_and_list(tmp_path: Path) -> None:
    vols = np.stack([_volume(seed=k) for k in range(3)])
    write_map(tmp_path / "stack.mrc", vols, 2.0)
    maps, apix = read_maps(tmp_path / "stack.mrc")
    np.testing.assert_array_equal(maps, vols)
    assert apix == pytest.approx(2.0)
    with pytest.raises(InputError, match=r"stack\.mrc: holds 3 maps"):
        read_map(tmp_path / "stack.mrc")
    write_map(tmp_path / "a.mrc", vols[0], 2.0)
    write_map(tmp_path / "b.mrc", vols[1], 2.0)
    maps, _ = read_maps([tmp_path / "a.mrc", str(tmp_path / "b.mrc")])
    np.testing.assert_array_equal(maps, vols[:2])
    # nz = K * mz "volume stack" written by other programs as plain 3-D data
    with mrcfile.new(tmp_path / "flat.mrc") as mrc:
        mrc.set_data(vols.reshape(36, 12, 12))
        mrc.header.mz = 12
    maps, _ = read_maps(tmp_path / "flat.mrc")
    np.testing.assert_array_equal(maps, vols)


def test_read_maps_mismatch(tmp_path: Path) -> None:
    write_map(tmp_path / "a.mrc", _volume(12), 2.0)
    write_map(tmp_path / "b.mrc", _volume(12), 2.5)
    write_map(tmp_path / "c.mrc", _volume(10), 2.0)
    with pytest.raises(InputError, match=r"b\.mrc: voxel size 2\.5"):
        read_maps([tmp_path / "a.mrc", tmp_path / "b.mrc"])
    with pytest.raises(InputError, match=r"c\.mrc: map box 10"):
        read_maps([tmp_path / "a.mrc", tmp_path / "c.mrc"])


def test_map_voxel_size_zero_is_none(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "z.mrc") as mrc:
        mrc.set_data(_volume())
        mrc.voxel_size = 0.0
    assert read_map(tmp_path / "z.mrc")[1] is None


# --- bad input ------------------------------------------------------------------------------
def test_missing_map(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"none\.mrc: file not found"):
        read_map(tmp_path / "none.mrc")


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_map(tmp_path: Path) -> None:
    vol = _volume()
    vol[1, 2, 3] = np.inf
    vol[0, 0, 0] = np.nan
    with mrcfile.new(tmp_path / "nan.mrc") as mrc:
        mrc.set_data(vol)
    with pytest.raises(InputError, match=r"nan\.mrc: the map contains 2 NaN/Inf voxels"):
        read_map(tmp_path / "nan.mrc")


def test_non_cubic_map(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "box.mrc") as mrc:
        mrc.set_data(np.zeros((10, 12, 12), np.float32))
    with pytest.raises(InputError, match=r"box\.mrc: the map has shape \(10, 12, 12\)"):
        read_map(tmp_path / "box.mrc")


def test_garbage_map(tmp_path: Path) -> None:
    path = tmp_path / "junk.mrc"
    path.write_bytes(b"not an mrc file at all")
    with pytest.raises(InputError, match=r"junk\.mrc"):
        read_map(path)


def test_real_quirky_mrc_header(testdata: Path) -> None:
    """No map ID, zero voxel size, machine stamp 0: read permissively (it is a 7-image stack)."""
    with pytest.raises(InputError, match=r"empiar_10076_7\.mrc: the map has shape \(7, 320"):
        read_map(testdata / "empiar_10076_7.mrc")


# --- particle stacks ------------------------------------------------------------------------
def test_stack_writer_in_chunks(tmp_path: Path) -> None:
    images = np.random.default_rng(1).normal(size=(10, 8, 8)).astype(np.float32)
    path = tmp_path / "out.mrcs"
    with MrcStackWriter(path, n_images=10, box_size=8, pixel_size_angstrom=1.1) as out:
        assert not path.exists()
        out.write(0, images[:4])
        out[4:10] = images[4:]
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.is_image_stack()
        assert mrc.voxel_size.x == pytest.approx(1.1)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrcs"]


def test_stack_writer_incomplete_or_failing(tmp_path: Path) -> None:
    path = tmp_path / "s.mrcs"
    write_stack(path, np.ones((2, 8, 8), np.float32), 1.0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="never written"):
        with MrcStackWriter(path, 5, 8, 1.0) as out:
            out.write(0, np.zeros((3, 8, 8)))
    with pytest.raises(RuntimeError), MrcStackWriter(path, 5, 8, 1.0) as out:
        out.write(0, np.zeros((5, 8, 8)))
        raise RuntimeError("simulator crashed")
    with pytest.raises(ValueError, match="expected"), MrcStackWriter(path, 5, 8, 1.0) as out:
        out.write(0, np.zeros((5, 9, 9)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.mrcs"]


def test_stack_writer_on_a_full_disk_is_an_error_before_any_image(tmp_path: Path, monkeypatch) -> None:
    """A memory-mapped stack on a disk that fills while it is written ends the process with
    SIGBUS; its blocks are reserved first, so a full disk is an OSError naming the stack, and
    neither the stack nor its temporary file is left. Where blocks cannot be reserved (a file
    system without fallocate) the stack is written as before."""
    import errno

    from multirefine.io import maps

    def fails(code):
        def allocate(fd, size):
            raise OSError(code, "refused")
        return allocate

    monkeypatch.setattr(maps, "_allocate", fails(errno.ENOSPC))
    with pytest.raises(OSError, match="refused") as raised:
        MrcStackWriter(tmp_path / "s.mrcs", 1000, 64, 1.0)
    assert raised.value.filename == str(tmp_path / "s.mrcs")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(maps, "_allocate", fails(errno.EOPNOTSUPP))
    write_stack(tmp_path / "s.mrcs", np.ones((2, 8, 8), np.float32), 1.0)
    with mrcfile.open(tmp_path / "s.mrcs") as written:
        assert written.data.shape == (2, 8, 8)
    monkeypatch.undo()
    fd = os.open(tmp_path / "s.mrcs", os.O_RDWR)
    try:
        maps._allocate(fd, 1 << 20)  # the real call, on this disk
    finally:
        os.close(fd)
    assert (tmp_path / "s.mrcs").stat().st_blocks * 512 >= 1 << 20


def test_a_failed_write_reports_its_own_error_where_the_temporary_cannot_be_removed(tmp_path: Path, monkeypatch):
    """On a read-only file system removing the temporary fails too; the error said is the
    write's, naming the file asked for, not its hidden temporary."""
    from multirefine.io.atomic import atomic_path

    def refuse(self, missing_ok=False):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OSError, match="Read-only") as raised, atomic_path(tmp_path / "x.mrc") as tmp:
        raise OSError(30, "Read-only file system", str(tmp))
    assert raised.value.filename == str(tmp_path / "x.mrc")
