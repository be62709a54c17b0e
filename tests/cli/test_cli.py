"""The command line in-process, on tiny data: what a user types, what a user sees."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import random_atoms_map
from multirefine import __version__
from multirefine.cli.main import main
from multirefine.io.maps import read_map, write_map
from multirefine.io.particles import open_particles


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("simulate", "reconstruct", "demo"):
        assert name in out


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    maps = [random_atoms_map(32, 200, seed=s) for s in (1, 2)]
    for k, m in enumerate(maps, 1):
        write_map(root / f"map{k}.mrc", m, 1.0)
    code = main(
        ["simulate", str(root / "sim"), "--maps", f"{root}/map1.mrc,{root}/map2.mrc", "--n", "400",
         "--snr", "1000", "--fractions", "0.7,0.3", "--seed", "3"]
    )
    assert code == 0
    return root


def test_e2refinemulti_is_refine_with_its_options(sim, capsys):
    """The console alias takes e2refinemulti's options and runs ``multirefine refine``."""
    from multirefine.cli.main import e2refinemulti

    argv = ["--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
            "--sym", "c1", "--sep", "2", "--classkeep", "0.8", "--check"]
    assert e2refinemulti(argv) == 0
    out = capsys.readouterr().out
    assert "400 particles, box 32" in out and "2 models (models)" in out and "nothing was run" in out
    assert e2refinemulti(["--input", str(sim / "nope.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc"]) == 2
    assert "multirefine refine: error:" in capsys.readouterr().err


def test_simulate_writes_what_a_user_has_and_the_truth(sim):
    folder = sim / "sim"
    for name in ("particles.mrcs", "particles.star", "truth.star", "gt_01.mrc", "gt_02.mrc", "simulation.json"):
        assert (folder / name).exists(), name
    user = open_particles(folder / "particles.star")
    truth = open_particles(folder / "truth.star")
    assert len(user) == len(truth) == 400
    assert user.has_ctf and "rlnClassNumber" not in user.metadata.columns
    assert "rlnAngleRot" not in user.metadata.columns
    fractions = truth.metadata["rlnClassNumber"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(fractions, [0.7, 0.3], atol=0.07)
    assert user.pixel_size_angstrom == pytest.approx(1.0)
    np.testing.assert_allclose(read_map(folder / "gt_01.mrc")[0], read_map(sim / "map1.mrc")[0], atol=1e-6)


def test_reconstruct_from_truth(sim, capsys):
    folder = sim / "sim"
    out = sim / "class1.mrc"
    code = main(["reconstruct", str(folder / "truth.star"), "--class", "1", "-o", str(out),
                 "--compare", str(folder / "gt_01.mrc")])
    assert code == 0
    text = capsys.readouterr().out
    assert "at 0.143" in text
    assert read_map(out)[0].shape == (32, 32, 32)


def test_verbose_takes_eman2s_levels(sim, caplog):
    """``-v N`` as EMAN2's ``--verbose``; ``-v`` alone is 1, ``-vv`` 2, and ``-v`` never takes
    the next argument unless it is a number. Level 2 logs a line per batch, lower levels none."""
    from multirefine.cli.main import _counted_verbose
    from multirefine.progress import BATCH

    assert _counted_verbose(["report", "-v", "run_01"]) == ["report", "-v1", "run_01"]
    assert _counted_verbose(["refine", "-vv", "--check"]) == ["refine", "-v2", "--check"]
    assert _counted_verbose(["refine", "--verbose", "3"]) == ["refine", "--verbose", "3"]
    folder = sim / "sim"
    for extra, batches in (([], False), (["-v"], False), (["-v", "2"], True), (["-vv"], True)):
        caplog.clear()
        argv = ["reconstruct", str(folder / "truth.star"), "--class", "1", "-o", str(sim / "v.mrc"), *extra]
        assert main(argv) == 0
        lines = [r.getMessage() for r in caplog.records if r.levelno == BATCH]
        assert bool(lines) == batches, (extra, lines)
        if batches:
            assert lines[-1].startswith("inserting: ") and " of " in lines[-1]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["reconstruct", "missing.star", "-o", "x.mrc"], "missing.star"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--sym", "q5"], "q5"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--class", "9"], "rlnClassNumber 9"),
        (["simulate", "{tmp}/out", "--maps", "{tmp}/nan.mrc", "--n", "10", "--snr", "1"], "nan.mrc"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "-1"], "--snr"),
        (["simulate", "{tmp}/out", "--pdb", "{tmp}/none.pdb", "--n", "10", "--snr", "1"], "none.pdb"),
    ],
)
def test_bad_input_gives_one_line_error(sim, tmp_path, capsys, argv, expected):
    bad = np.zeros((8, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    import mrcfile

    with mrcfile.new(tmp_path / "nan.mrc") as f:
        f.set_data(bad)
    argv = [a.format(sim=sim / "sim", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
