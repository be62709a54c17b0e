"""``refine --mask`` and ``--particle-diameter``, and ``multirefine mask``, on tiny data: the
maps stay within their masks, a run keeps its masks for ``--continue`` and shows them in its
report, bad masks are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.io.maps import read_map, write_map


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """120 particles of two random-atom maps (32 px, 1 Å/px), and a mask for each made by
    ``multirefine mask`` (one shifted off the other's centre, so the two differ)."""
    root = tmp_path_factory.mktemp("masks")
    for k, seed in ((1, 1), (2, 2)):
        write_map(root / f"map{k}.mrc", random_atoms_map(32, 200, seed=seed), 1.0)
    assert main(["simulate", str(root / "sim"), "--maps", f"{root}/map1.mrc,{root}/map2.mrc", "--n", "120",
                 "--snr", "1000", "--seed", "3"]) == 0
    for k in (1, 2):
        assert main(["mask", str(root / f"map{k}.mrc"), "-o", str(root / f"mask{k}.mrc"), "--mass", "3",
                     "--extend", "2", "--soft", "3"]) == 0
    return root


def _refine(sim, run, *extra, single: bool = False):
    return main(["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
                 *(["--singleiter", "1"] if single else ["--nosingle"]), "--targetres", "8", "--path", str(run), "--j", "1",
                 *extra])


def test_each_map_stays_within_its_own_mask_and_continue_reads_the_runs_copies(sim, tmp_path):
    """Every map written is 0 where its model's mask is 0 (a map made and masked every
    iteration, the starting maps too); the run keeps the masks as it used them, and
    --continue reads those (the files given may since have gone) and ends where an
    uninterrupted run does; the same with a focus mask (--focusmask)."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    masks = [read_map(sim / f"mask{k}.mrc")[0] for k in (1, 2)]
    assert not np.array_equal(masks[0], masks[1])
    focus = ["--focusmask", f"{sim}/mask2.mrc"]  # the model choice on model 2's region (multirefine.refine.focus)
    assert _refine(sim, whole, "--iter", "2", "--mask", f"{sim}/mask1.mrc,{sim}/mask2.mrc", *focus) == 0
    assert np.array_equal(read_map(whole / "focusmask.mrc")[0], masks[1])
    for k, mask in enumerate(masks, start=1):
        assert np.array_equal(read_map(whole / f"mask_{k:02d}.mrc")[0], mask)
        for iteration in (0, 1, 2):
            volume = read_map(whole / f"threed_{iteration:02d}_{k:02d}.mrc")[0]
            assert np.all(volume[mask == 0] == 0) and np.abs(volume[mask > 0.99]).max() > 0
    options = json.loads((whole / "0_refine_parms.json").read_text())
    assert options["masks"] == [f"{sim}/mask1.mrc", f"{sim}/mask2.mrc"] and options["focus_mask"] == f"{sim}/mask2.mrc"
    page = (whole / "index.html").read_text()  # the report shows the masks over the maps and links them
    assert '<a href="mask_01.mrc">' in page and "solvent mask (<code>--mask</code>)" in page
    copies = tmp_path / "copies"
    copies.mkdir()
    for k in (1, 2):
        (copies / f"mask{k}.mrc").write_bytes((sim / f"mask{k}.mrc").read_bytes())
    assert _refine(sim, part, "--iter", "1", "--mask", f"{copies}/mask1.mrc,{copies}/mask2.mrc", "--focusmask",
                   f"{copies}/mask2.mrc") == 0
    for k in (1, 2):
        (copies / f"mask{k}.mrc").unlink()
    assert main(["refine", "--continue", str(part), "--iter", "2"]) == 0
    for name in ("threed_02_01.mrc", "threed_02_02.mrc"):
        assert np.array_equal(read_map(part / name)[0], read_map(whole / name)[0])


def test_one_mask_for_all_models_and_a_diameter(sim, tmp_path, capsys):
    """One mask serves both models, and each model's refinement on its own; --particle-diameter
    sets the sphere of a run without one (0 beyond the diameter's radius plus the 3 px edge)."""
    run = tmp_path / "one"
    assert _refine(sim, run, "--iter", "1", "--mask", f"{sim}/mask1.mrc", single=True) == 0
    out = capsys.readouterr().out
    assert f"solvent mask: {sim}/mask1.mrc (every model)" in out and "within --mask (solvent-corrected)" in out
    mask = read_map(sim / "mask1.mrc")[0]
    assert np.array_equal(read_map(run / "mask_01.mrc")[0], mask) and np.array_equal(read_map(run / "mask_02.mrc")[0], mask)
    finals = sorted(run.glob("model_*/threed_final.mrc"))  # models with enough particles to refine alone
    assert finals
    for final in finals:
        volume = read_map(final)[0]
        assert np.all(volume[mask == 0] == 0) and np.abs(volume[mask > 0.99]).max() > 0
        masked_fsc = json.loads((final.parent / "fsc_masked.json").read_text())  # what the map holds in the mask
        assert len(masked_fsc["corrected_fsc"]) == 17 and masked_fsc["resolution_0143_angstrom"] >= 2.0
    assert "within the mask (solvent-corrected), Å" in (run / "index.html").read_text()
    sphere = tmp_path / "sphere"
    assert _refine(sim, sphere, "--iter", "1", "--particle-diameter", "16") == 0
    c = np.arange(32) - 16
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    volume = read_map(sphere / "threed_01_01.mrc")[0]
    assert np.all(volume[r >= 8 + 3] == 0) and np.abs(volume[r < 8]).max() > 0
    assert not (sphere / "mask_01.mrc").exists()


def test_the_subtracted_particles_are_written_on_request(sim, tmp_path, capsys):
    """--write-subtracted (here given to --continue of a finished run): every particle less the
    models' common outside, a stack and a STAR file with the run's poses and classes that any
    reader opens."""
    from multirefine.io.particles import open_particles

    run = tmp_path / "subtracted"
    assert _refine(sim, run, "--iter", "1", "--focusmask", f"{sim}/mask2.mrc") == 0
    assert not (run / "subtracted").exists()
    assert main(["refine", "--continue", str(run), "--write-subtracted"]) == 0  # a finished run's, written after
    assert "subtracted/particles_subtracted.star" in capsys.readouterr().out
    subtracted = open_particles(run / "subtracted" / "particles_subtracted.star")
    original = open_particles(sim / "sim" / "particles.star")
    assert len(subtracted) == 120 and subtracted.box_size == 32
    assert np.array_equal(subtracted.metadata["rlnClassNumber"].to_numpy(),
                          open_particles(run / "particles_01.star").metadata["rlnClassNumber"].to_numpy())
    images, before = np.asarray(subtracted[np.arange(5)]), np.asarray(original[np.arange(5)])
    assert np.isfinite(images).all() and not np.allclose(images, before)


def test_a_mask_per_model_with_a_symmetry_per_model(sim, tmp_path):
    """Model 2 under C2 with its own mask: its map is symmetric and 0 where the mask is."""
    import torch

    from multirefine.refine.postprocess import rotate_volume

    run = tmp_path / "sym"
    assert _refine(sim, run, "--iter", "1", "--sym", "c1,c2", "--mask", f"{sim}/mask1.mrc,{sim}/mask2.mrc") == 0
    volume, mask = read_map(run / "threed_01_02.mrc")[0], read_map(sim / "mask2.mrc")[0]
    assert np.all(volume[mask == 0] == 0)
    half_turn = torch.tensor([[[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]])  # about z, RELION's C2 axis
    turned = rotate_volume(torch.from_numpy(volume), half_turn)[0].numpy()
    inside = mask > 0.99
    assert np.corrcoef(turned[inside], volume[inside])[0, 1] > 0.9


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--mask", "{sim}/mask1.mrc,{sim}/mask2.mrc,{sim}/mask1.mrc"], "3 masks for 2 models"),
        (["--mask", "{tmp}/missing.mrc"], "missing.mrc"),
        (["--mask", "{tmp}/nan.mrc"], "nan.mrc: the map contains 1 NaN"),
        (["--mask", "{sim}/map1.mrc"], "map1.mrc: values from"),
        (["--mask", "{tmp}/zeros.mrc"], "zeros.mrc: every voxel is 0"),
        (["--focusmask", "{tmp}/zeros.mrc"], "zeros.mrc: every voxel is 0"),
        (["--focusmask", "{sim}/mask1.mrc", "--score", "cc", "--sigma_ang", "0"], "--focusmask with --score cc"),
        (["--write-subtracted"], "--write-subtracted needs --focusmask"),
        (["--particle-diameter", "0"], "--particle-diameter 0.0: expected a diameter"),
        (["--particle-diameter", "500"], "--particle-diameter 500: wider than the particles' box"),
    ],
)
def test_a_bad_mask_is_one_line_and_nothing_is_written(sim, tmp_path, capsys, extra, expected):
    nan = read_map(sim / "mask1.mrc")[0].copy()
    nan[3, 4, 5] = np.nan
    write_map(tmp_path / "nan.mrc", nan, 1.0)
    write_map(tmp_path / "zeros.mrc", np.zeros((32, 32, 32), np.float32), 1.0)
    run = tmp_path / "run"
    assert _refine(sim, run, *[a.format(sim=sim, tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not run.exists()


def test_the_mask_command_refuses_what_it_cannot_make(sim, tmp_path, capsys):
    """An existing output, a threshold above the map: one line, nothing written; a mask
    that reaches the box's edge is written with a warning."""
    out = tmp_path / "m.mrc"
    assert main(["mask", str(sim / "map1.mrc"), "-o", str(sim / "mask1.mrc"), "--threshold", "0.1"]) == 2
    assert "exists; nothing was written" in capsys.readouterr().err
    assert main(["mask", str(sim / "map1.mrc"), "-o", str(out), "--threshold", "1e9"]) == 2
    assert "no voxel above the threshold" in capsys.readouterr().err and not out.exists()
    assert main(["mask", str(sim / "map1.mrc"), "-o", str(out), "--threshold", "-1"]) == 0
    assert "reaches the box's edge" in capsys.readouterr().out
    assert read_map(out)[0].min() == 1.0  # every voxel is above -1
