"""ParticleStack: lazy indexed reads, subsets, batches, path resolution and bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from multirefine.errors import InputError
from multirefine.io import open_particles, open_usefilt, write_particles_star, write_stack


def test_indexing_kinds(make_star) -> None:  # type: ignore[no-untyped-def]
    star, images = make_star(n=7)
    stack = open_particles(star)
    assert len(stack) == 7 and stack.box_size == 16
    assert stack.pixel_size_angstrom == pytest.approx(2.5)
    assert stack.has_ctf
    np.testing.assert_array_equal(stack[3], images[3])
    assert stack[3].shape == (16, 16)
    np.testing.assert_array_equal(stack[-1], images[-1])
    np.testing.assert_array_equal(stack[1:6:2], images[1:6:2])
    np.testing.assert_array_equal(stack[[5, 0, 5]], images[[5, 0, 5]])
    np.testing.assert_array_equal(stack[np.array([2, 1])], images[[2, 1]])
    mask = np.zeros(7, bool)
    mask[[0, 6]] = True
    np.testing.assert_array_equal(stack[mask], images[mask])
    assert stack[[]].shape == (0, 16, 16)
    assert stack[:].dtype == np.float32
    with pytest.raises(IndexError):
        stack[7]


def test_subset_and_batches(make_star) -> None:  # type: ignore[no-untyped-def]
    star, images = make_star(n=9)
    stack = open_particles(star)
    sub = stack.subset([8, 2, 4])
    assert len(sub) == 3
    assert list(sub.metadata.index) == [0, 1, 2]
    assert sub.metadata["rlnImageName"].tolist() == [
        stack.metadata["rlnImageName"][i] for i in (8, 2, 4)
    ]
    np.testing.assert_array_equal(sub[:], images[[8, 2, 4]])
    seen = []
    for idx, batch in stack.batches(4):
        assert batch.shape == (len(idx), 16, 16)
        np.testing.assert_array_equal(batch, images[idx])
        seen.extend(idx.tolist())
    assert seen == list(range(9))
    assert [len(i) for i, _ in sub.batches(2)] == [2, 1]


def test_pickle_for_workers(make_star) -> None:  # type: ignore[no-untyped-def]
    star, images = make_star(n=4)
    stack = open_particles(star)
    stack[0]
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone[[1, 3]], images[[1, 3]])


def test_a_copy_reads_the_same_files_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack opened by a relative path and sent to a worker that runs in another folder
    (a Dask worker) reads the files this process found, not the worker's namesakes."""
    rng = np.random.default_rng(4)
    for folder, value in (("project", 0.0), ("elsewhere", 7.0)):
        (tmp_path / folder / "Extract").mkdir(parents=True)
        write_stack(tmp_path / folder / "Extract" / "a.mrcs",
                    value + rng.normal(size=(3, 8, 8)).astype(np.float32), 1.0)
    write_particles_star(tmp_path / "project" / "particles.star",
                         pd.DataFrame({"rlnImageName": ["1@Extract/a.mrcs", "3@Extract/a.mrcs"],
                                       "rlnImagePixelSize": 1.0}), box_size=8)
    monkeypatch.chdir(tmp_path / "project")
    stack = open_particles("particles.star")
    here = stack[:]
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack))[:], here)


def test_several_files_and_cwd_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    project = tmp_path / "project"
    (project / "Extract").mkdir(parents=True)
    (project / "Select").mkdir()
    a = rng.normal(size=(3, 8, 8)).astype(np.float32)
    b = rng.normal(size=(2, 8, 8)).astype(np.float32)
    write_stack(project / "Extract" / "a.mrcs", a, 1.0)
    write_stack(project / "Extract" / "b.mrcs", b, 1.0)
    names = ["2@Extract/b.mrcs", "1@Extract/a.mrcs", "3@Extract/a.mrcs", "1@Extract/b.mrcs"]
    # Paths relative to the project folder (the CWD), STAR file in a subfolder: RELION style.
    star = project / "Select" / "particles.star"
    write_particles_star(
        star, pd.DataFrame({"rlnImageName": names, "rlnImagePixelSize": 1.0}), box_size=8
    )
    monkeypatch.chdir(project)
    stack = open_particles("Select/particles.star")
    expected = np.stack([b[1], a[0], a[2], b[0]])
    np.testing.assert_array_equal(stack[:], expected)
    np.testing.assert_array_equal(stack[[3, 0]], expected[[3, 0]])
    # A STAR file written anywhere keeps names that resolve from the project folder.
    assert stack.image_files_for(project / "MultiRefine" / "job001") == {
        "Extract/b.mrcs": "Extract/b.mrcs", "Extract/a.mrcs": "Extract/a.mrcs"}


def test_image_files_for_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names found from the STAR file's own folder are rewritten relative to the folder a new
    STAR file goes to, absolute ones are kept; the written file reads the same images from
    any current folder."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "elsewhere").mkdir()
    images = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    write_stack(data / "a.mrcs", images, 1.0)
    write_stack(tmp_path / "elsewhere" / "b.mrcs", images[::-1].copy(), 1.0)
    names = ["1@a.mrcs", "2@a.mrcs", f"3@{tmp_path / 'elsewhere' / 'b.mrcs'}"]
    write_particles_star(data / "particles.star", pd.DataFrame({"rlnImageName": names, "rlnImagePixelSize": 1.0}),
                         box_size=8)
    monkeypatch.chdir(tmp_path)
    stack = open_particles("data/particles.star")
    out = tmp_path / "runs" / "run1"
    files = stack.image_files_for(out)
    absolute = str(tmp_path / "elsewhere" / "b.mrcs")
    assert files == {"a.mrcs": "../../data/a.mrcs", absolute: absolute}
    out.mkdir(parents=True)
    write_particles_star(out / "particles.star", stack.metadata, stack.optics, image_files=files)
    for here in (tmp_path, out, data):
        monkeypatch.chdir(here)
        np.testing.assert_array_equal(open_particles(out / "particles.star")[:], images[[0, 1, 0]])


def test_bare_mrcs(tmp_path: Path) -> None:
    images = np.arange(3 * 10 * 10, dtype=np.float32).reshape(3, 10, 10)
    write_stack(tmp_path / "s.mrcs", images, 1.7)
    stack = open_particles(tmp_path / "s.mrcs")
    assert stack.pixel_size_angstrom == pytest.approx(1.7)
    assert not stack.has_ctf
    np.testing.assert_array_equal(stack[:], images)
    assert open_particles(tmp_path / "s.mrcs", apix=0.9).pixel_size_angstrom == 0.9


def test_usefilt(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, images = make_star(n=5)
    stack = open_particles(star)
    write_stack(tmp_path / "filtered.mrcs", images * 2, 2.5)
    filt = open_usefilt(stack, tmp_path / "filtered.mrcs")
    np.testing.assert_array_equal(filt[[1, 4]], images[[1, 4]] * 2)
    assert filt.metadata.equals(stack.metadata)
    write_stack(tmp_path / "short.mrcs", images[:4], 2.5)
    with pytest.raises(InputError, match=r"short\.mrcs: holds 4 particles"):
        open_usefilt(stack, tmp_path / "short.mrcs")


def test_check_passes(make_star) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star(n=5)
    stack = open_particles(star)
    stack.check()
    stack.check(sample=2)


# --- bad input ------------------------------------------------------------------------------
def test_missing_particle_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.star: file not found"):
        open_particles(tmp_path / "absent.star")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.xyz"
    path.write_text("x")
    with pytest.raises(InputError, match=r"p\.xyz: unknown particle file type"):
        open_particles(path)


def test_missing_image_file(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star()
    os.remove(tmp_path / "stacks" / "images.mrcs")
    with pytest.raises(InputError, match=r"particles\.star: image file stacks/images\.mrcs not"):
        open_particles(star)
    lazy = open_particles(star, check_files=False)
    with pytest.raises(InputError, match=r"particles\.star: image file stacks/images\.mrcs"):
        lazy[0]


def test_index_past_end(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star(n=4)
    text = star.read_text().replace("000004@stacks/images.mrcs", "000009@stacks/images.mrcs")
    bad = tmp_path / "past.star"
    bad.write_text(text)
    stack = open_particles(bad)
    stack[:3]  # the good ones still read
    pattern = r"past\.star: particle 3 refers to image 9 of .*images\.mrcs, which holds 4 images"
    with pytest.raises(InputError, match=pattern):
        stack[3]
    with pytest.raises(InputError, match=pattern):
        stack.check(sample=0)


def test_box_mismatch(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star(n=3)
    write_stack(tmp_path / "stacks" / "big.mrcs", np.zeros((1, 20, 20), np.float32), 2.5)
    text = star.read_text().replace("000003@stacks/images.mrcs", "000001@stacks/big.mrcs")
    bad = tmp_path / "mixed.star"
    bad.write_text(text)
    stack = open_particles(bad)
    with pytest.raises(InputError, match=r"big\.mrcs: images are 20x20 pixels but the box size"):
        stack[:]


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_image(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, images = make_star(n=4)
    images[2, 3, 3] = np.nan
    write_stack(tmp_path / "stacks" / "images.mrcs", images, 2.5)
    stack = open_particles(star)
    stack[[0, 1, 3]]
    pattern = r"particles\.star: particle 2 \(3@.*images\.mrcs\) contains NaN"
    with pytest.raises(InputError, match=pattern):
        stack[1:3]
    with pytest.raises(InputError, match=r"particle 2"):
        stack.check()


def test_mrcs_without_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "nopix.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 8, 8), np.float32))
        mrc.voxel_size = 0.0
    with pytest.raises(InputError, match=r"nopix\.mrcs: pixel size unknown.*--apix"):
        open_particles(path)
    assert open_particles(path, apix=1.2).pixel_size_angstrom == 1.2


def test_truncated_mrcs(make_star, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star(n=4)
    stack_file = tmp_path / "stacks" / "images.mrcs"
    data = stack_file.read_bytes()
    stack_file.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"images\.mrcs"):
        open_particles(star)[0]


def test_a_stack_changed_while_it_is_read(tmp_path: Path) -> None:
    """A stack cut short after it was opened is refused before a read past its end (a memory-
    mapped read there is SIGBUS: the process dies without a word); one rewritten in place is
    refused rather than read as the same stack; one replaced by another file under its name
    is still read whole, as it was when opened."""
    images = np.arange(4 * 10 * 10, dtype=np.float32).reshape(4, 10, 10)
    path = tmp_path / "s.mrcs"
    for change, message in (("cut", "cut short while this command read it"),
                            ("rewrite", "rewritten while this command read it")):
        write_stack(path, images, 1.0)
        stack = open_particles(path)
        np.testing.assert_array_equal(stack[[0, 3]], images[[0, 3]])
        data = path.read_bytes()
        with open(path, "r+b") as f:  # in place, as a copy or a full disk would
            if change == "cut":
                f.truncate(len(data) - 3 * 10 * 10 * 4)
            else:
                f.seek(len(data) - 4), f.write(b"\x00\x00\x80\x7f"), os.utime(path, ns=(0, 0))
        with pytest.raises(InputError, match=f"s.mrcs: {message}"):
            stack[[0]]
    write_stack(path, images, 1.0)
    stack = open_particles(path)
    write_stack(tmp_path / "other.mrcs", images + 1, 1.0)
    os.replace(tmp_path / "other.mrcs", path)
    np.testing.assert_array_equal(stack[[0, 3]], images[[0, 3]])


@pytest.mark.parametrize(("column", "value", "message"), [
    ("rlnAngleRot", "1e40", r"rlnAngleRot of particle 2 is 1e\+40°, beyond 3600°"),
    ("rlnAngleTilt", "inf", r"rlnAngleTilt of particle 2 is 'inf'; expected a finite number"),
    ("rlnPhaseShift", "-1e40", r"rlnPhaseShift of particle 2 is -1e\+40°"),
    ("rlnCtfBfactor", "1e40", r"rlnCtfBfactor of particle 2 is 1e\+40 Å²: its CTF envelope .* e\^-\d+ at Nyquist"),
    ("rlnCtfBfactor", "-6000", r"rlnCtfBfactor of particle 2 is -6000 Å².* e\^60 at Nyquist"),  # at 2.5 Å/px
    ("rlnClassNumber", "1e40", r"rlnClassNumber of particle 2 is '1e\+40'; expected an integer"),
])
def test_values_only_a_damaged_file_holds(make_star, column, value, message) -> None:  # type: ignore[no-untyped-def]
    """Finite or periodic, such values would pass as a random angle, a CTF of nothing (or one
    that overflows), or a class past any run's: each is one line naming the file, column and row."""
    from multirefine.io.star import read_particles_star

    star, _ = make_star(n=4)
    read = read_particles_star(star)
    table = read.metadata.assign(rlnAngleRot=10.0, rlnAngleTilt=20.0, rlnAnglePsi=30.0, rlnClassNumber=1,
                                 rlnCtfBfactor=50.0)
    table[column] = table[column].astype(object)
    table.loc[2, column] = value
    write_particles_star(star, table, read.optics)
    with pytest.raises(InputError, match=rf"particles\.star: {message}"):
        open_particles(star)
    table.loc[2, column] = {"rlnClassNumber": "2", "rlnCtfBfactor": "-150"}.get(column, "350")
    write_particles_star(star, table, read.optics)
    open_particles(star)  # what real files hold is read
