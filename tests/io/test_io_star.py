"""RELION STAR reading (3.0, 3.1, 5) and 3.1 writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from io_helpers import ctf_table

from multirefine.errors import InputError
from multirefine.io import open_particles, read_particles_star, write_particles_star
from multirefine.io.columns import CTF_COLUMNS
from multirefine.io.star import build_optics_table


def _canonical(n: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    table = ctf_table(n, rng)
    table.insert(0, "rlnImageName", [f"{i + 1}@stack_{i % 2}.mrcs" for i in range(n)])
    table["rlnImagePixelSize"] = np.where(np.arange(n) < 5, 1.5, 2.0)
    table["rlnVoltage"] = np.where(np.arange(n) < 3, 300.0, 200.0)
    table["rlnMicrographName"] = [f"{i:04d}" for i in range(n)]  # looks numeric: stays text
    table["rlnLogLikeliContribution"] = rng.uniform(1e5, 2e5, n)
    table["rlnMaxValueProbDistribution"] = rng.uniform(1e-7, 1, n)
    return table


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    table = _canonical()
    path = tmp_path / "out.star"
    write_particles_star(path, table, box_size=64)
    text = path.read_text()
    assert "# version 30001" in text
    assert text.index("data_optics") < text.index("data_particles")
    first = read_particles_star(path)
    assert first.version == 30001
    optics = first.optics
    assert optics is not None
    # unique (voltage, pixel size) combos: (300, 1.5), (200, 1.5), (200, 2.0)
    assert list(optics["rlnOpticsGroup"]) == [1, 2, 3]
    assert list(optics["rlnImageSize"]) == [64, 64, 64]
    assert list(optics["rlnImageDimensionality"]) == [2, 2, 2]
    got = first.metadata
    for column in table.columns:
        if table[column].dtype.kind == "f":
            np.testing.assert_allclose(got[column], table[column], rtol=1e-9, err_msg=column)
        else:
            assert list(got[column].astype(str)) == list(table[column].astype(str)), column
    # Writing back with the optics table gives the same canonical table.
    again = tmp_path / "again.star"
    write_particles_star(again, got, optics)
    second = read_particles_star(again)
    pd.testing.assert_frame_equal(second.metadata, got, check_dtype=False, rtol=1e-9)
    pd.testing.assert_frame_equal(second.optics, optics, check_dtype=False)
    # Optics-level columns live only in data_optics.
    particles_block = again.read_text().split("data_particles")[1]
    for column in ("rlnVoltage", "rlnImagePixelSize", "rlnImageSize"):
        assert f"_{column} " not in particles_block


def test_writer_is_atomic_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "keep.star"
    path.write_text("precious")
    bad = _canonical().drop(columns=["rlnImageName"])
    with pytest.raises(ValueError):
        write_particles_star(path, bad, box_size=32)
    assert path.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.star"]


def test_writer_finds_box_size_in_images(tmp_path: Path) -> None:
    from multirefine.io import write_stack

    write_stack(tmp_path / "p.mrcs", np.zeros((2, 24, 24), np.float32), 1.5)
    table = _canonical(2).assign(rlnImageName=["1@p.mrcs", "2@p.mrcs"])
    write_particles_star(tmp_path / "p.star", table)
    assert list(read_particles_star(tmp_path / "p.star").optics["rlnImageSize"]) == [24]
    with pytest.warns(UserWarning, match="box size unknown"):
        write_particles_star(tmp_path / "q.star", table.assign(rlnImageName="1@gone.mrcs"))
    assert "rlnImageSize" not in read_particles_star(tmp_path / "q.star").optics.columns


def test_writer_rejects_stale_optics(tmp_path: Path) -> None:
    table = _canonical()
    optics, groups = build_optics_table(table, 64)
    table = table.assign(rlnOpticsGroup=groups)
    table.loc[0, "rlnVoltage"] = 120.0
    with pytest.raises(ValueError, match="rlnVoltage"):
        write_particles_star(tmp_path / "x.star", table, optics)


def test_relion30_generated(tmp_path: Path) -> None:
    path = tmp_path / "r30.star"
    path.write_text(
        "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n"
        "_rlnDefocusAngle #4\n_rlnVoltage #5\n_rlnSphericalAberration #6\n"
        "_rlnAmplitudeContrast #7\n_rlnMagnification #8\n_rlnDetectorPixelSize #9\n"
        "_rlnOriginX #10\n_rlnOriginY #11\n"
        "1@a.mrcs 10000 9000 10 300 2.7 0.1 50000 7.0 2.0 -1.0\n"
        "2@a.mrcs 11000 9500 20 300 2.7 0.1 50000 7.0 0.5 0.0\n"
    )
    star = read_particles_star(path)
    assert star.optics is None and star.version is None
    meta = star.metadata
    np.testing.assert_allclose(meta["rlnImagePixelSize"], 1.4)
    np.testing.assert_allclose(meta["rlnOriginXAngst"], [2.8, 0.7])
    np.testing.assert_allclose(meta["rlnOriginYAngst"], [-1.4, 0.0])
    assert "rlnOriginX" not in meta.columns
    assert list(meta["rlnPhaseShift"]) == [0.0, 0.0]


# --- bad input ------------------------------------------------------------------------------
def test_missing_star(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.star"):
        read_particles_star(tmp_path / "nope.star")


def test_star_without_image_name(tmp_path: Path) -> None:
    path = tmp_path / "noimg.star"
    path.write_text("data_particles\n\nloop_\n_rlnDefocusU #1\n_rlnDefocusV #2\n1 2\n3 4\n")
    with pytest.raises(InputError, match=r"noimg\.star: no rlnImageName column in data_particles"):
        read_particles_star(path)


def test_star_without_data_block(tmp_path: Path) -> None:
    path = tmp_path / "empty.star"
    path.write_text("# just a comment\nhello\n")
    with pytest.raises(InputError, match=r"empty\.star"):
        read_particles_star(path)


def test_truncated_star(tmp_path: Path, make_star) -> None:  # type: ignore[no-untyped-def]
    star, _ = make_star()
    text = star.read_text().rstrip("\n")
    cut = tmp_path / "cut.star"
    cut.write_text(text[: len(text) - 40])  # cut the last row in the middle
    with pytest.raises(InputError, match=r"cut\.star: row \d+ of data_particles"):
        read_particles_star(cut)
    with pytest.raises(InputError, match=r"cut\.star"):
        open_particles(cut)


def test_garbled_star_too_many_fields(tmp_path: Path) -> None:
    path = tmp_path / "garbled.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 100 5 6\n2@a.mrcs 7\n")
    with pytest.raises(InputError, match=r"garbled\.star"):
        read_particles_star(path)


def test_unknown_optics_group(tmp_path: Path) -> None:
    path = tmp_path / "og.star"
    path.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.5\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 1\n2@a.mrcs 7\n"
    )
    with pytest.raises(InputError, match=r"og\.star: particle 1 has rlnOpticsGroup 7"):
        read_particles_star(path)


def test_non_numeric_defocus(tmp_path: Path) -> None:
    path = tmp_path / "text.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs abc\n")
    with pytest.raises(InputError, match=r"text\.star: rlnDefocusU of particle 0"):
        read_particles_star(path)


# --- real files ---------------------------------------------------------------------------
def test_relion31_real(testdata: Path) -> None:
    stack = open_particles(testdata / "relion31.star")
    assert len(stack) == 5 and stack.box_size == 256
    assert stack.pixel_size_angstrom == pytest.approx(2.806)  # MRC header says 1.0
    assert stack.has_ctf
    meta = stack.metadata
    np.testing.assert_allclose(meta["rlnVoltage"], 300.0)
    np.testing.assert_allclose(meta["rlnSphericalAberration"], 0.01)
    assert meta["rlnDefocusU"].iloc[0] == pytest.approx(13108.082418)
    assert stack.optics is not None and len(stack.optics) == 1
    images = stack[[4, 0]]
    assert images.shape == (2, 256, 256) and images.dtype == np.float32


def test_relion31_real_round_trip(testdata: Path, tmp_path: Path) -> None:
    star = read_particles_star(testdata / "relion31.star")
    out = tmp_path / "rt.star"
    write_particles_star(out, star.metadata, star.optics)
    back = read_particles_star(out)
    pd.testing.assert_frame_equal(back.metadata, star.metadata, check_dtype=False, rtol=1e-9)


def test_six_optics_groups_lookup(testdata: Path) -> None:
    star = read_particles_star(testdata / "relion31.6opticsgroups.star")
    optics, meta = star.optics, star.metadata
    assert optics is not None and len(optics) == 6
    table = optics.set_index("rlnOpticsGroup")
    for column in ("rlnImagePixelSize", "rlnSphericalAberration", "rlnBeamTiltX", "rlnMagMat00"):
        expected = meta["rlnOpticsGroup"].map(table[column]).to_numpy()
        np.testing.assert_allclose(meta[column].to_numpy(), expected)
    # the groups really differ, and particles of different groups get different values
    assert meta.groupby("rlnOpticsGroup")["rlnBeamTiltX"].first().nunique() == 6
    assert set(np.round(meta["rlnImagePixelSize"], 3)) == {1.24, 1.25}
    assert set(meta["rlnSphericalAberration"]) == {2.6, 2.7}
    assert meta["rlnOddZernike"].iloc[0].startswith("[")
    stack = open_particles(testdata / "relion31.6opticsgroups.star", check_files=False)
    assert stack.pixel_size_angstrom == pytest.approx(1.25)
    with pytest.raises(InputError, match=r"6opticsgroups\.star: image file .*0003_shiny\.mrcs"):
        stack[0]
    with pytest.raises(InputError, match=r"image file .*not found"):
        open_particles(testdata / "relion31.6opticsgroups.star")


def test_optics_aberrations_are_named_magnification_and_premultiplied_data_refused(testdata: Path, tmp_path: Path) -> None:
    """RELION's CtfRefine writes beam tilt, Zernike terms and magnification matrices into the
    optics table. The first three are applied (multirefine.fourier.aberrations) and named, with
    the largest tilt, by the line refine and reconstruct print; a file without them says nothing.
    A magnification correction is not modelled: refine and reconstruct refuse it in one line
    (use_ctf), as they refuse images multiplied by their CTF already (rlnCtfDataAreCtfPremultiplied 1)."""
    from multirefine.io.columns import applied_optics, optics_note
    from multirefine.io.particles import use_ctf

    six = read_particles_star(testdata / "relion31.6opticsgroups.star")
    # group 6: tilt (-1.288, 2.447) mrad, 2.77 mrad
    assert applied_optics(six.optics) == ["beam tilt up to 2.8 mrad", "odd Zernike terms", "even Zernike terms"]
    assert optics_note(six.optics).startswith("optics applied as RELION 3.1 applies them: beam tilt")
    assert optics_note(read_particles_star(testdata / "relion31.star").optics) == ""
    flat = six.optics.assign(rlnBeamTiltX=0.0, rlnBeamTiltY=0.0, rlnOddZernike="[0,0,0]", rlnEvenZernike="[]",
                             rlnMagMat00=1.0, rlnMagMat01=0.0, rlnMagMat10=0.0, rlnMagMat11=1.0)
    assert applied_optics(flat) == []
    stack = open_particles(testdata / "relion31.6opticsgroups.star", check_files=False)
    # group 4's matrix: singular values 1.033, 1.007
    with pytest.raises(InputError, match=r"6opticsgroups\.star: rlnMagMat00-11 hold a magnification correction "
                                         r"of up to 3\.3 %.*remove those columns"):
        use_ctf(stack, False)
    use_ctf(stack, False, aberrations=False)  # a run made before: it goes on as it ran
    mag = ["rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"]
    stack.optics, stack.metadata = stack.optics.drop(columns=mag), stack.metadata.drop(columns=mag)
    use_ctf(stack, False)
    text = (testdata / "relion31.6opticsgroups.star").read_text()
    premultiplied = text.replace("196 2 0 0.657334", "196 2 1 0.657334")
    assert premultiplied != text
    (tmp_path / "pre.star").write_text(premultiplied)
    with pytest.raises(InputError, match=r"pre\.star: rlnCtfDataAreCtfPremultiplied is 1"):
        open_particles(tmp_path / "pre.star", check_files=False)


def test_relion5(testdata: Path) -> None:
    star = read_particles_star(testdata / "relion5.star")
    assert star.version == 50001
    meta = star.metadata
    assert len(meta) == 17
    np.testing.assert_allclose(meta["rlnImagePixelSize"], 0.89)
    np.testing.assert_allclose(meta["rlnVoltage"], 100.0)
    assert set(CTF_COLUMNS) <= set(meta.columns)
    assert meta["rlnImageName"].iloc[1] == "2@toy_images_b.mrcs"


def test_relion30_real(testdata: Path) -> None:
    stack = open_particles(testdata / "empiar_10076_7.star")
    assert len(stack) == 7 and stack.box_size == 320
    assert stack.pixel_size_angstrom == pytest.approx(1.31, abs=1e-4)
    assert stack.optics is None
    assert stack.metadata["rlnMicrographName"].iloc[0] == "1"
    images = stack[:]
    assert images.shape == (7, 320, 320) and np.isfinite(images).all()
    assert images.std() > 0


def test_relion30_real_written_as_31(testdata: Path, tmp_path: Path) -> None:
    stack = open_particles(testdata / "empiar_10076_7.star")
    out = tmp_path / "as31.star"
    write_particles_star(out, stack.metadata, box_size=stack.box_size)
    text = out.read_text()
    assert "_rlnMagnification" not in text and "_rlnDetectorPixelSize" not in text
    back = read_particles_star(out)
    assert back.optics is not None and len(back.optics) == 1
    np.testing.assert_allclose(back.metadata["rlnImagePixelSize"], 50000 / 38168)
    np.testing.assert_allclose(back.metadata["rlnDefocusU"], stack.metadata["rlnDefocusU"])


def test_a_byte_that_is_not_utf8_is_named_with_its_offset(tmp_path: Path) -> None:
    """A damaged byte says what and where, not "no data block with a loop_ table"."""
    text = b"data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@x.mrcs 1\xff000\n"
    (tmp_path / "bad.star").write_bytes(text)
    at = text.index(bytes([0xFF]))
    with pytest.raises(InputError, match=rf"bad.star: byte 0xff at offset {at} is not UTF-8"):
        read_particles_star(tmp_path / "bad.star")
