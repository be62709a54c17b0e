"""The command line in-process, on tiny data: what a user types, what a user sees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import random_atoms_map

from multirefine import __version__
from multirefine.cli.main import main
from multirefine.io.maps import read_map, write_map
from multirefine.io.particles import open_particles


@pytest.mark.parametrize("argv", [["--version"], ["refine", "--version"]])
def test_version(capsys, argv):
    """``multirefine --version``, and a command's ``--version`` as EMAN2's programs take it
    (``e2refinemulti --version``)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
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


def test_defaults_run_until_settled_from_a_random_split(sim, capsys):
    common = ["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
              "--check"]
    assert main(common) == 0
    assert "until the assignment settles (at most 25 iterations), then" in capsys.readouterr().out
    assert main([*common, "--iter", "3"]) == 0
    assert "\n3 iterations, then" in capsys.readouterr().out
    # One map: seeded by a random split of the particles (RELION's), unless told otherwise.
    one = ["refine", "--input", str(sim / "sim" / "particles.star"), "--model", f"{sim}/map1.mrc", "--check"]
    assert main(one) == 0 and "2 models (randclassify)" in capsys.readouterr().out
    assert main([*one, "--randphase"]) == 0 and "2 models (randphase)" in capsys.readouterr().out


def test_threads_default_to_the_cores_allowed(sim, capsys, monkeypatch):
    """No --parallel: the cores the process may use (a Slurm job's SLURM_CPUS_PER_TASK, else its
    CPU affinity); --j N is RELION's shorthand for --parallel thread:N."""
    import torch

    from multirefine.parallel import allowed_threads

    before = torch.get_num_threads()
    common = ["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
              "--check"]
    try:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
        assert allowed_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        assert main(common) == 0
        assert "particle loops: this process, 3 threads" in capsys.readouterr().out
        assert main([*common, "--j", "1"]) == 0
        assert "particle loops: this process, 1 thread" in capsys.readouterr().out
        assert main([*common, "--j", "2", "--parallel", "thread:1"]) == 2
        assert "--j 2 and --parallel thread:1: give one of them" in capsys.readouterr().err
        assert main([*common, "--j", "0"]) == 2
    finally:
        torch.set_num_threads(before)


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


@pytest.mark.parametrize("layout", ["beside", "project"])
def test_run_output_finds_the_images(sim, tmp_path, monkeypatch, layout):
    """``beside``: a STAR file beside its images, refined from another folder into a third;
    the run's STAR files name the images relative to themselves, so ``multirefine
    reconstruct`` reads them from any folder. ``project``: a RELION project (images in
    Extract/, STAR in Select/, names relative to the project); the names stay as they are
    and read from the project folder, where RELION and its users run."""
    import shutil

    from multirefine.io.star import read_particles_star, write_particles_star

    source = read_particles_star(sim / "sim" / "particles.star")
    source.metadata = source.metadata.iloc[:100]
    if layout == "beside":
        star = sim / "sim" / "first100.star"
        write_particles_star(star, source.metadata, source.optics)
        work, run, readers = tmp_path / "elsewhere", tmp_path / "runs" / "multi_01", [tmp_path, sim / "sim"]
        work.mkdir()
    else:
        work = tmp_path / "project"
        (work / "Extract" / "job001").mkdir(parents=True)
        (work / "Select" / "job002").mkdir(parents=True)
        shutil.copy(sim / "sim" / "particles.mrcs", work / "Extract" / "job001" / "particles.mrcs")
        renamed = source.metadata.assign(
            rlnImageName=source.metadata["rlnImageName"].str.replace("@", "@Extract/job001/", regex=False))
        star = work / "Select" / "job002" / "particles.star"
        write_particles_star(star, renamed, source.optics)
        run, readers = Path("MultiRefine/job003"), [work]
    monkeypatch.chdir(work)
    assert main(["refine", "--input", str(star), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc", "--iter", "1",
                 "--nosingle", "--path", str(run)]) == 0
    written = read_particles_star(run / "particles_01.star").metadata["rlnImageName"]
    if layout == "project":
        assert (written.to_numpy() == source.metadata["rlnImageName"].str.replace(
            "@", "@Extract/job001/", regex=False).to_numpy()).all()
    else:
        relative = os.path.relpath(sim / "sim", tmp_path / "runs" / "multi_01")
        assert (written.to_numpy() == source.metadata["rlnImageName"].str.replace(
            "@", f"@{relative}/", regex=False).to_numpy()).all()
    run = run.absolute()
    for here in readers:
        monkeypatch.chdir(here)
        for name in ("particles_01.star", "particles_model_01.star"):
            assert main(["reconstruct", str(run / name), "-o", str(tmp_path / "check.mrc")]) == 0
        np.testing.assert_array_equal(open_particles(run / "particles_01.star")[[0, 7, 99]],
                                      open_particles(sim / "sim" / "particles.star")[[0, 7, 99]])


def test_one_run_folder_takes_one_refine_at_a_time(sim, tmp_path, capsys):
    """While a process holds a run folder, a new run there and a --continue of it both stop
    with one line naming the holder and leave the folder as it was; a lock file left by a
    killed process (a file nobody holds) is taken over."""
    from multirefine.errors import InputError
    from multirefine.runfolder.lock import LOCK_NAME, FolderLock

    run = tmp_path / "run"
    common = ["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc"]
    (tmp_path / "empty").mkdir()
    with FolderLock(tmp_path / "empty"):
        assert main([*common, "--iter", "1", "--nosingle", "--path", str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by process {os.getpid()} on " in err and len(err.splitlines()) == 1
        assert [p.name for p in (tmp_path / "empty").iterdir()] == [LOCK_NAME]
        with pytest.raises(InputError, match="in use by process"):
            FolderLock(tmp_path / "empty").__enter__()
    assert not any((tmp_path / "empty").iterdir())  # the lock file goes with the lock
    (run).mkdir()
    (run / LOCK_NAME).write_text("process 1 on a node that was killed\n")  # held by nobody
    assert main([*common, "--iter", "1", "--nosingle", "--path", str(run)]) == 0
    assert not (run / LOCK_NAME).exists()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with FolderLock(run):
        assert main(["refine", "--continue", str(run), "--iter", "2"]) == 2
        assert "in use by process" in capsys.readouterr().err
        assert main([*common, "--iter", "1", "--nosingle", "--path", str(run)]) == 2  # a new run on a busy folder
        assert "in use by process" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Held by another process: its pid named.
    import subprocess
    import sys

    hold = ("import sys, time\nfrom multirefine.runfolder.lock import FolderLock\n"
            "with FolderLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["refine", "--continue", str(run), "--iter", "2"]) == 2
        assert f"in use by process {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_stops_a_run_as_ctrl_c_does(sim, tmp_path):
    """A batch scheduler's SIGTERM during the first iteration: exit 130, "interrupted", and no
    folder left that neither a new run nor --continue could use."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "multirefine.cli.main", "refine", "--input", str(sim / "sim" / "particles.star"),
         "--models", f"{sim}/map1.mrc,{sim}/map2.mrc", "--iter", "3", "--nosingle", "--path", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "0_refine_parms.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "multirefine refine: interrupted" in err and "Traceback" not in err
    assert not run.exists() or (run / "state.npz").exists()


def _tiny_run(sim, tmp_path):
    """A run of one iteration on the first 100 particles, --nosingle, one thread: its folder."""
    from multirefine.io.star import read_particles_star, write_particles_star

    source = read_particles_star(sim / "sim" / "particles.star")
    star = tmp_path / "first100.star"
    write_particles_star(star, source.metadata.iloc[:100].assign(
        rlnImageName=source.metadata["rlnImageName"].iloc[:100].str.replace("@", f"@{sim}/sim/", regex=False)),
        source.optics)
    run = tmp_path / "run"
    assert main(["refine", "--input", str(star), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc", "--iter", "1",
                 "--nosingle", "--path", str(run), "--j", "1"]) == 0
    return run


def test_continue_refuses_a_damaged_run_folder(sim, tmp_path, capsys):
    """--continue checks the state and the record it takes up before it writes anything: NaN
    maps, a particle in a model the run has not, a missing key, a convergence.json damaged or
    shorter than the state: one line each, the folder as it was."""
    import json
    import shutil

    run = _tiny_run(sim, tmp_path)
    state = dict(np.load(run / "state.npz"))
    damages = {
        "NaN or Inf": lambda d: {**d, "maps": np.full_like(d["maps"], np.nan)},
        "puts particles in model 7 of 2": lambda d: {**d, "table_model": np.full_like(d["table_model"], 6)},
        "radius_px is missing": lambda d: {k: v for k, v in d.items() if k != "radius_px"},
    }
    parameters = json.loads((run / "0_refine_parms.json").read_text())
    typed = {  # a 0_refine_parms.json edited by hand or damaged: said of the file, before the run
        "0_refine_parms.json: symmetries is 'c', not a list[str]": {"symmetries": "c"},
        "0_refine_parms.json: symmetries is ['c1', 5], not a list[str]": {"symmetries": ["c1", 5]},
        "0_refine_parms.json: unknown symmetry 'q3'": {"symmetries": ["c1", "q3"]},
        "0_refine_parms.json: 1 symmetries, one per model, where": {"symmetries": ["c1"]},
        "0_refine_parms.json: iterations is 'ten', not a <class 'int'>": {"iterations": "ten"},
        "0_refine_parms.json: --speed 0: expected 1 (fine": {"speed": 0},
    }
    for expected, damage in [*damages.items(), ("damaged, not readable", None), ("damaged, 0 iterations of 1", []),
                             *typed.items(), ("state.npz: not readable", b"cut")]:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        if isinstance(damage, dict):
            (copy / "0_refine_parms.json").write_text(json.dumps({**parameters, **damage}))
        elif isinstance(damage, bytes):  # state.npz cut short, as by a full disk before atomic writes
            (copy / "state.npz").write_bytes((run / "state.npz").read_bytes()[:500])
        elif callable(damage):
            np.savez(copy / "state.npz", **damage(state))
        elif damage is None:
            (copy / "convergence.json").write_text((run / "convergence.json").read_text()[:50])
        else:
            (copy / "convergence.json").write_text(json.dumps(damage))
        before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
        assert main(["refine", "--continue", str(copy), "--iter", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_a_run_records_itself(sim, tmp_path):
    """0_refine_parms.json lists each command that wrote the run (command line, version, date,
    host, device, threads), run.log holds what each printed and logged, and the report shows
    the commands and links the run's files. --continue removes the temporary files a killed
    command left."""
    import json

    from multirefine import __version__

    run = _tiny_run(sim, tmp_path)
    left = run / ".threed_01_01.mrc.tmp4242_7f00deadbeef.mrc"  # as a kill -9 mid-write leaves
    left.write_bytes(b"half a map")
    assert main(["refine", "--continue", str(run), "--iter", "2"]) == 0
    assert not left.exists()
    commands = json.loads((run / "0_refine_parms.json").read_text())["commands"]
    assert [c["command_line"].split()[1:3] for c in commands] == [["refine", "--input"], ["refine", "--continue"]]
    assert commands[0]["version"] == __version__ and commands[0]["threads"] == 1 and commands[0]["device"] == "cpu"
    assert commands[0]["parallel"] == "thread:1" and commands[0]["host"] and commands[1]["started"]
    log = (run / "run.log").read_text()
    assert log.count("==== ") == 2 and "particle loops: this process, 1 thread" in log
    assert "iteration 1 done in" in log and "iteration 2 done in" in log and "results in" in log
    assert "removed 1 temporary files an earlier, interrupted command left" in log
    page = (run / "index.html").read_text()
    assert "--continue" in page and __version__ in page
    for name in ("particles_02.star", "threed_02_01.mrc", "particles_model_02.star", "run.log", "0_refine_parms.json"):
        assert f'<a href="{name}">' in page
    assert 'href="particles_junk.star"' not in page  # no junk: no link to a file that is not there


def test_split_writes_one_set_per_class_or_the_chosen_ones_together(sim, tmp_path, capsys, monkeypatch):
    """Each class of a particle table goes to its own STAR file with every row as it was;
    --join keeps chosen classes together; a run folder splits its last (or a given)
    iteration; nothing that exists is overwritten. Image names that resolve from the current
    folder (a RELION project) are written as read; others are rewritten to resolve from the
    new file's folder."""
    import shutil

    from multirefine.io.star import read_particles_star

    truth = sim / "sim" / "truth.star"
    table = read_particles_star(truth).metadata
    with monkeypatch.context() as project:
        project.chdir(sim / "sim")
        assert main(["split", str(truth), "--out", str(tmp_path / "each")]) == 0
    for k in (1, 2):
        part = read_particles_star(tmp_path / "each" / f"particles_model_{k:02d}.star").metadata
        expected = table[table["rlnClassNumber"] == k].reset_index(drop=True)
        assert len(part) == len(expected) > 0
        for column in ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnOriginXAngst", "rlnDefocusU"):
            np.testing.assert_array_equal(part[column].to_numpy(), expected[column].to_numpy())
        with monkeypatch.context() as project:
            project.chdir(sim / "sim")
            stack = open_particles(tmp_path / "each" / f"particles_model_{k:02d}.star")
            assert stack.read(np.array([0])).shape == (1, 32, 32)
    # From elsewhere the names found the images from the STAR file's folder: rewritten.
    monkeypatch.chdir(tmp_path)
    assert main(["split", str(truth), "--classes", "1", "--out", "elsewhere/deeper"]) == 0
    part = read_particles_star(tmp_path / "elsewhere" / "deeper" / "particles_model_01.star").metadata
    expected = table[table["rlnClassNumber"] == 1].reset_index(drop=True)
    relative = os.path.relpath(sim / "sim", tmp_path / "elsewhere" / "deeper")
    assert part["rlnImageName"].tolist() == [n.replace("@", f"@{relative}/") for n in expected["rlnImageName"]]
    monkeypatch.chdir(sim)
    stack = open_particles(tmp_path / "elsewhere" / "deeper" / "particles_model_01.star")
    np.testing.assert_array_equal(stack.read(np.array([0, 5])), open_particles(truth).subset(
        np.flatnonzero(table["rlnClassNumber"].to_numpy() == 1)).read(np.array([0, 5])))
    monkeypatch.chdir(sim / "sim")  # the project folder again
    # Chosen classes together, in their input order.
    assert main(["split", str(truth), "--classes", "2,1", "--join", "--out", str(tmp_path / "both")]) == 0
    joined = read_particles_star(tmp_path / "both" / "particles_models_01_02.star").metadata
    np.testing.assert_array_equal(joined["rlnImageName"].to_numpy(), table["rlnImageName"].to_numpy())
    # Existing files are kept, and nothing is written.
    kept = (tmp_path / "each" / "particles_model_01.star").read_bytes()
    (tmp_path / "each" / "particles_model_02.star").unlink()
    assert main(["split", str(truth), "--out", str(tmp_path / "each")]) == 2
    assert "particles_model_01.star: exists" in capsys.readouterr().err
    assert (tmp_path / "each" / "particles_model_01.star").read_bytes() == kept
    assert not (tmp_path / "each" / "particles_model_02.star").exists()
    # A run folder: the last iteration's table by default, or the one asked for.
    run = tmp_path / "multi_01"
    run.mkdir()
    shutil.copy(truth, run / "particles_01.star")
    only_two = table[table["rlnClassNumber"] == 2]
    from multirefine.io.star import write_particles_star

    write_particles_star(run / "particles_03.star", only_two, read_particles_star(truth).optics)
    assert main(["split", str(run)]) == 0
    assert sorted(p.name for p in (run / "split_03").iterdir()) == ["particles_model_02.star"]
    assert main(["split", str(run), "--iteration", "1", "--classes", "1"]) == 0
    assert sorted(p.name for p in (run / "split_01").iterdir()) == ["particles_model_01.star"]
    assert main(["split", str(run), "--iteration", "2"]) == 2
    assert "iterations here: 1, 3" in capsys.readouterr().err


def test_split_keeps_relion_optics_groups(tmp_path):
    """A RELION 3.1 file with six optics groups: each particle keeps its group and the
    optics table its values."""
    from pathlib import Path

    from multirefine.io.star import read_particles_star

    source = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "relion31.6opticsgroups.star"
    if not source.exists():
        pytest.skip("../shared/testdata is not here")
    assert main(["split", str(source), "--out", str(tmp_path)]) == 0
    before, after = read_particles_star(source), read_particles_star(tmp_path / "particles_model_01.star")
    np.testing.assert_array_equal(after.metadata["rlnOpticsGroup"], before.metadata["rlnOpticsGroup"])
    np.testing.assert_allclose(after.metadata["rlnImagePixelSize"], before.metadata["rlnImagePixelSize"])
    assert len(after.optics) == len(before.optics) == 6


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


def _damaged_star_files(folder, out) -> None:
    """truth.star with a negative or zero pixel size, without rlnDefocusV, with a NaN defocus."""
    import starfile

    blocks = starfile.read(folder / "truth.star", always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"].assign(
        rlnImageName=blocks["particles"]["rlnImageName"].str.replace("@", f"@{folder}/", regex=False))
    for name, opt, part in (
        ("negative_apix", optics.assign(rlnImagePixelSize=-1.0), particles),
        ("zero_apix", optics.assign(rlnImagePixelSize=0.0), particles),
        ("no_defocus_v", optics, particles.drop(columns=["rlnDefocusV"])),
        ("nan_defocus", optics, particles.assign(rlnDefocusU=particles["rlnDefocusU"].where(particles.index != 3))),
    ):
        starfile.write({"optics": opt, "particles": part}, out / f"{name}.star", overwrite=True)
    (out / "twice.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnDefocusU #3\n"
                                    "1@x.mrcs 1 2\n")
    (out / "no_rows.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    (out / "a_file").write_text("a file where a folder would go\n")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["reconstruct", "missing.star", "-o", "x.mrc"], "missing.star"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--sym", "q5"], "q5"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--class", "9"], "rlnClassNumber 9"),
        (["simulate", "{tmp}/out", "--maps", "{tmp}/nan.mrc", "--n", "10", "--snr", "1"], "nan.mrc"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "-1"], "--snr"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", "--beamtilt", "1"],
         "--beamtilt 1.0: expected X,Y in mrad"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", "--even-zernike", "1,inf"],
         "--even-zernike 1.0,inf: expected numbers"),
        (["simulate", "{tmp}/out", "--pdb", "{tmp}/none.pdb", "--n", "10", "--snr", "1"], "none.pdb"),
        (["split", "{tmp}/missing.star"], "missing.star"),
        (["split", "{sim}/particles.star", "--out", "{tmp}/s"], "no rlnClassNumber column"),
        (["split", "{sim}/truth.star", "--classes", "1,9", "--out", "{tmp}/s"], "no class 9"),
        (["split", "{sim}/truth.star", "--classes", "one", "--out", "{tmp}/s"], "--classes"),
        (["split", "{sim}/truth.star", "--iteration", "2"], "--iteration needs a run folder"),
        (["split", "{tmp}"], "no particles_II.star"),
        (["reconstruct", "{sim}/particles.star", "-o", "x.mrc"], "reconstruct needs each particle's pose"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--batch", "0"], "--batch 0"),
        (["reconstruct", "{tmp}/negative_apix.star", "-o", "x.mrc"], "rlnImagePixelSize of row 0 is -1"),
        (["reconstruct", "{tmp}/zero_apix.star", "-o", "x.mrc"], "rlnImagePixelSize of row 0 is 0"),
        (["reconstruct", "{tmp}/no_defocus_v.star", "-o", "x.mrc"], "but not rlnDefocusV"),
        (["reconstruct", "{tmp}/nan_defocus.star", "-o", "x.mrc"], "rlnDefocusU of particle 3 is"),
        (["reconstruct", "{tmp}/twice.star", "-o", "x.mrc"], "names the column rlnDefocusU twice"),
        (["reconstruct", "{tmp}/no_rows.star", "-o", "x.mrc"], "data_particles has no rows"),
        (["reconstruct", "{sim}/truth.star", "-o", "{tmp}/a_file/x.mrc"], "a_file to write it in"),
        (["refine", "--input", "{sim}/particles.star", "--models", "{sim}/../map1.mrc,{sim}/../map2.mrc",
          "--path", "{tmp}/a_file/run"], "a_file/run: Not a directory"),
        (["reconstruct", "{sim}/truth.star", "-o", "{tmp}/missing/x.mrc"], "missing/x.mrc: no folder"),
        (["reconstruct", "{sim}/truth.star", "-o", "{tmp}"], "a folder; give a file name"),
        (["refine", "--input", "{sim}/particles.star", "--models", "{sim}/../map1.mrc,{sim}/../map2.mrc",
          "--path", "{tmp}/a_file"], "a_file: Not a directory"),
        (["split", "{sim}/truth.star", "--out", "{tmp}/a_file"], "a_file"),
        (["simulate", "{tmp}/a_file", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1"], "a_file"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--apix", "inf"], "--apix inf: expected a positive number"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "inf"], "--snr inf"),
        (["refine", "--input", "{sim}/particles.star", "--model", "{sim}/../map1.mrc", "--nmodels", "100000",
          "--check"], "100000 models for 400 particles"),
        *((["refine", "--input", "{sim}/particles.star", "--models", "{sim}/../map1.mrc,{sim}/../map2.mrc", "--check",
            *extra], expected) for extra, expected in (
            (["--speed", "11"], "--speed 11: expected 1"), (["--shrink", "0"], "--shrink 0"),
            (["--targetres", "0"], "--targetres 0.0"), (["--max-shift", "-3"], "--max-shift -3.0"),
            (["--mass", "-50"], "--mass -50,-50: expected kDa"), (["--mass", "1e6,10"], "--mass 1e+06,10"),
            (["--device", "tpu"], "--device tpu: expected cpu"), (["--seed", "-1"], "--seed -1: expected 0"),
            (["--max-shift", "17"], "--max-shift 17: beyond half the particles' box (32 px)"), (["--nmodels", "3"], "--nmodels with --models"))),
        (["refine", "--input", "{sim}/particles.star", "--models", "{tmp}/coarse.mrc,{sim}/../map1.mrc", "--check"],
         "coarse.mrc: 32 px at 100 Å/px span 3200 Å"),
        *((["refine", "--input", "{sim}/particles.star", "--model", "{sim}/../map1.mrc", "--check", *extra], expected)
          for extra, expected in (  # --nmodels auto: what it cannot do, said before anything runs
            (["--nmodels", "auto", "--kmax", "1"], "--kmax 1: expected 2 to 20"),
            (["--nmodels", "auto", "--kmax", "50"], "--kmax 50: expected 2 to 20"),
            (["--nmodels", "3", "--kmax", "4"], "--kmax without --nmodels auto"),
            (["--nmodels", "many"], "--nmodels: 'many': expected a number of models or auto"),
            (["--nmodels", "auto", "--randphase"], "--nmodels auto with --randphase"),
            (["--nmodels", "auto", "--sym", "c1,c2"], "one --sym and one --mask for all"),
            (["--nmodels", "auto", "--mass", "40,50"], "give one mass, for every model"),
            (["--nmodels", "auto", "--focusmask", "{sim}/../map1.mrc"], "--focusmask is not supported yet"))),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", "--apix", "0"],
         "--apix 0.0"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", "--seed", "-1"],
         "--seed -1: expected 0 or more"),
        (["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", "--box", "3"],
         "with --maps the maps' own box"),
        (["simulate", "{tmp}/out", "--pdb", "{tmp}/none.pdb", "--n", "10", "--snr", "1", "--box", "3"],
         "--box 3 --res None: expected a box of 8 to 1024 px"),
        (["simulate", "{tmp}/out", "--pdb", "{tmp}/none.pdb", "--n", "10", "--snr", "1", "--apix", "-2"],
         "--apix -2.0"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--sym", "c5000"], "a 5000-fold axis; expected at most"),
        (["refine", "--input", "{sim}/particles.star", "--models", "{sim}/../map1.mrc,{sim}/../map2.mrc", "--check",
          "--sym", "c1000000,c1"], "a 1000000-fold axis"),
        (["reconstruct", "{sim}/truth.star", "-o", "x.mrc", "--apix", "1e30"],
         "--apix 1e+30: expected a positive number of Å per pixel, up to 1000"),
        *((["simulate", "{tmp}/out", "--maps", "{sim}/../map1.mrc", "--n", "10", "--snr", "1", *extra], expected)
          for extra, expected in (
            (["--max-shift", "-1"], "--max-shift -1: expected 0 or more, under half the box (32 px)"),
            (["--max-shift", "1e9"], "--max-shift 1e+09: expected 0 or more"),
            (["--beamtilt", "1e40,0"], "expected a beam tilt within 100 mrad"),
            (["--odd-zernike", "1e40"], "--odd-zernike 1e+40: a phase of"),
            (["--even-zernike", "0,1e40"], "expected one within 1000"),
            (["--n", "100000000000"], "GiB for the particles' table"))),
    ],
)
def test_bad_input_gives_one_line_error(sim, tmp_path, capsys, argv, expected):
    bad = np.zeros((8, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    import mrcfile

    with mrcfile.new(tmp_path / "nan.mrc") as f:
        f.set_data(bad)
    _damaged_star_files(sim / "sim", tmp_path)
    write_map(tmp_path / "coarse.mrc", read_map(sim / "map1.mrc")[0], 100.0)  # a wrong voxel size
    argv = [a.format(sim=sim / "sim", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err


def test_particles_without_a_ctf_need_no_ctf(sim, tmp_path, capsys):
    """RELION's choice (its --ctf): particles without CTF parameters are refused in one line
    unless --no-ctf says to use them as they are; --no-ctf leaves a CTF the file has
    unapplied, and kept in the tables written."""
    from multirefine.io.columns import CTF_COLUMNS
    from multirefine.io.star import read_particles_star, write_particles_star

    source = read_particles_star(sim / "sim" / "particles.star")
    bare = tmp_path / "no_ctf.star"
    table = source.metadata.drop(columns=[c for c in CTF_COLUMNS if c in source.metadata.columns])
    write_particles_star(bare, table.assign(rlnImageName=table["rlnImageName"].str.replace(
        "@", f"@{sim}/sim/", regex=False), rlnAngleRot=0.0, rlnAngleTilt=0.0, rlnAnglePsi=0.0),
        source.optics.drop(columns=[c for c in CTF_COLUMNS if c in source.optics.columns]))
    models = ["--models", f"{sim}/map1.mrc,{sim}/map2.mrc", "--check"]
    for command in (["refine", "--input", str(bare), *models], ["reconstruct", str(bare), "-o", str(tmp_path / "m.mrc")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no_ctf.star: no CTF parameters" in err and "give --no-ctf" in err
    assert not (tmp_path / "m.mrc").exists()
    assert main(["refine", "--input", str(bare), *models, "--no-ctf"]) == 0
    assert "CTF no" in capsys.readouterr().out
    assert main(["refine", "--input", str(sim / "sim" / "particles.star"), *models]) == 0
    assert "CTF yes" in capsys.readouterr().out
    assert main(["refine", "--input", str(sim / "sim" / "particles.star"), *models, "--no-ctf"]) == 0
    assert "CTF no" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
                 "--no-ctf", "--iter", "1", "--nosingle", "--j", "1", "--path", str(run)]) == 0
    written = read_particles_star(run / "particles_01.star")
    assert "rlnDefocusU" in written.metadata.columns or "rlnDefocusU" in written.optics.columns
    assert main(["refine", "--continue", str(run), "--iter", "1", "--check"]) == 0
    assert "CTF no" in capsys.readouterr().out


@pytest.mark.slow  # a whole run and its continuation (about 30 s on 2 cores)
def test_beam_tilt_is_applied_and_a_run_made_before_goes_on_without_it(sim, tmp_path, capsys):
    """Beam tilt in data_optics: refine says it applies it; a run made before the aberrations
    were applied (its 0_refine_parms.json without "aberrations") continues without them, as it
    ran, and says so; a magnification correction is refused in one line."""
    import json

    from multirefine.io.star import read_particles_star, write_particles_star

    source = read_particles_star(sim / "sim" / "particles.star")
    tilted = tmp_path / "tilted.star"
    table = source.metadata.assign(rlnImageName=source.metadata["rlnImageName"].str.replace("@", f"@{sim}/sim/",
                                                                                             regex=False))
    write_particles_star(tilted, table, source.optics.assign(rlnBeamTiltX=0.4, rlnBeamTiltY=-0.3))
    run = tmp_path / "run"
    common = ["--models", f"{sim}/map1.mrc,{sim}/map2.mrc", "--nosingle", "--j", "1"]
    assert main(["refine", "--input", str(tilted), *common, "--iter", "1", "--path", str(run)]) == 0
    assert "optics applied as RELION 3.1 applies them: beam tilt up to 0.5 mrad" in capsys.readouterr().out
    parms = run / "0_refine_parms.json"
    saved = json.loads(parms.read_text())
    assert saved["aberrations"] is True
    del saved["aberrations"]
    parms.write_text(json.dumps(saved))
    assert main(["refine", "--continue", str(run), "--iter", "1", "--check"]) == 0
    assert "optics not applied (this run was made before they were, and goes on as it ran): beam tilt" in \
        capsys.readouterr().out
    magnified = tmp_path / "magnified.star"
    write_particles_star(magnified, table, source.optics.assign(rlnMagMat00=1.01, rlnMagMat01=0.0, rlnMagMat10=0.0,
                                                                rlnMagMat11=1.0))
    assert main(["refine", "--input", str(magnified), *common, "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "magnified.star: rlnMagMat00-11 hold a magnification correction" in err


def test_a_run_needing_more_memory_than_is_left_is_refused(sim, tmp_path, capsys, monkeypatch):
    """The memory a run will need (measured on the CPU: a base, per voxel, per voxel and model)
    against what the machine or the job's memory limit has left: --check says both, and a
    run that would not fit is refused in one line before anything is written."""
    from multirefine.cli import machine

    common = ["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc"]
    assert main([*common, "--check"]) == 0
    assert "memory: about 0.4 GiB at the peak for 2 models at box 32, " in capsys.readouterr().out
    monkeypatch.setattr(machine, "available_memory_bytes", lambda: (200 * 2**20, "what is left under this job's limit"))
    assert main([*common, "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0.2 GiB available (what is left under this job's limit): too little" in err
    assert main([*common, "--path", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("MULTIREFINE_IGNORE_MEMORY", "1")
    assert main([*common, "--check"]) == 0
    # Each model holds at least its two half-sets' padded Fourier sums: (2D)^3 / 2 complex64 and
    # float32 weights each, 48 bytes per voxel of the box.
    assert machine.BYTES_PER_VOXEL_AND_MODEL >= 2 * 48
    assert machine.available_memory_bytes() is None or machine.available_memory_bytes()[0] > 0


def test_torch_out_of_memory_is_one_line(sim, tmp_path, capsys, monkeypatch):
    """torch's CPU allocator fails with a RuntimeError (not a MemoryError): one line, rc 2,
    nothing written; any other RuntimeError is not taken for it."""
    import torch

    from multirefine.refine import reconstruct

    def too_large(*args, **kwargs):
        return torch.empty(2**50)  # 4 PiB: refused by the allocator, as a real shortage is

    monkeypatch.setattr(reconstruct, "reconstruct_from_stack", too_large)
    assert main(["reconstruct", str(sim / "sim" / "truth.star"), "-o", str(tmp_path / "x.mrc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "multirefine reconstruct: error: out of memory (try --lowmem, a smaller box or fewer models)"
    assert not list(tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(reconstruct, "reconstruct_from_stack", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["reconstruct", str(sim / "sim" / "truth.star"), "-o", str(tmp_path / "x.mrc")])


def test_report_refuses_a_damaged_run_folder(sim, tmp_path, capsys):
    """`multirefine report` of a run whose records are cut short, missing or lack a key: one
    line naming the file (or the folder), and nothing of the run changed."""
    import shutil

    run = _tiny_run(sim, tmp_path)
    capsys.readouterr()
    convergence = (run / "convergence.json").read_text()
    for name, damage, expected in (
        ("convergence.json", convergence[:50], "convergence.json: damaged, not readable"),
        ("0_refine_parms.json", '{"symmetries": "c"', "0_refine_parms.json: damaged, not readable"),
        ("convergence.json", '[{"iteration": 1}]', "its records lack what a run writes (KeyError: 'particles_"),
        ("convergence.json", None, "no convergence.json; not a run folder"),
    ):
        damaged = tmp_path / "damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(run, damaged)
        (damaged / name).unlink() if damage is None else (damaged / name).write_text(damage)
        before = {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}
        assert main(["report", str(damaged)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()} == before


def test_a_full_disk_or_a_folder_without_permission_is_one_line(sim, tmp_path, capsys, monkeypatch):
    """The file system's errors, made here as the kernel gives them (the tests may run as root,
    whom permissions do not stop): one line with the path and the reason, rc 2; a new run
    that had not finished an iteration leaves no folder."""
    import errno
    from pathlib import Path

    from multirefine.runfolder import writer

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(writer, "write_map", full)
    run = tmp_path / "run"
    assert main(["refine", "--input", str(sim / "sim" / "particles.star"), "--models",
                 f"{sim}/map1.mrc,{sim}/map2.mrc", "--iter", "1", "--nosingle", "--j", "1", "--path", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("_01.mrc: No space left on device"), err
    assert not run.exists()
    mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if self.name == "denied":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    for argv in (["split", str(sim / "sim" / "truth.star"), "--out", str(tmp_path / "denied")],
                 ["simulate", str(tmp_path / "denied"), "--maps", f"{sim}/map1.mrc", "--n", "10", "--snr", "1"],
                 ["refine", "--input", str(sim / "sim" / "particles.star"), "--models", f"{sim}/map1.mrc,{sim}/map2.mrc",
                  "--path", str(tmp_path / "denied")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.endswith("denied: Permission denied"), (argv, err)


def test_available_memory_is_the_tightest_limit_less_what_is_not_cache(tmp_path):
    """A batch job's memory: MemAvailable, and each limit of the process's cgroup and its
    parents (v2 memory.max, v1 memory.limit_in_bytes) less the memory in use that is not page
    cache (anon, total_rss): the smallest, with where it was read."""
    from multirefine.cli.machine import available_memory_bytes

    gib = 2**30
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {64 * gib // 1024} kB\nMemAvailable: {40 * gib // 1024} kB\n")
    (tmp_path / "proc/self/cgroup").write_text("0::/slurm/job_7/step_0\n")
    for folder, limit, anon in (("slurm", "max", 1), ("slurm/job_7", str(10 * gib), 3), ("slurm/job_7/step_0", "max", 2)):
        (tmp_path / "sys/fs/cgroup" / folder).mkdir(parents=True)
        (tmp_path / "sys/fs/cgroup" / folder / "memory.max").write_text(limit + "\n")
        (tmp_path / "sys/fs/cgroup" / folder / "memory.stat").write_text(f"anon {anon * gib}\nfile {20 * gib}\n")
    free, where = available_memory_bytes(tmp_path)
    assert free == 7 * gib and where.endswith("slurm/job_7")  # 10 GiB less 3 GiB in use; the cache not counted
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/job_8\n0::/\n")  # cgroup v1
    (tmp_path / "sys/fs/cgroup/memory/job_8").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/job_8/memory.limit_in_bytes").write_text(str(60 * gib))
    (tmp_path / "sys/fs/cgroup/memory/job_8/memory.stat").write_text(f"cache {30 * gib}\ntotal_rss {5 * gib}\n")
    assert available_memory_bytes(tmp_path) == (40 * gib, "the machine's available memory")


def test_lst_writes_each_models_particles_for_eman2(sim, tmp_path, capsys):
    """--lst: each model's particles also as an EMAN2 list beside its STAR file, the same
    images in the same order (read back by the project's EMAN2 reader, from another folder);
    a finished run gets them from --continue --lst, and its last maps as EMAN2 HDF."""
    import shutil

    from multirefine.io.star import read_particles_star

    run = _tiny_run(sim, tmp_path)
    assert not list(run.glob("*.lst"))
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy)
    assert main(["refine", "--continue", str(copy), "--iter", "1", "--lst", "--j", "1"]) == 0
    for m in (1, 2):
        star = read_particles_star(copy / f"particles_model_{m:02d}.star").metadata
        lst = copy / f"particles_model_{m:02d}.lst"
        assert lst.read_text().startswith("#LST\n")
        back = open_particles(lst)
        assert len(back) == len(star) > 0
        np.testing.assert_array_equal(back[:], open_particles(copy / f"particles_model_{m:02d}.star")[:])
        mrc, hdf = read_map(copy / f"threed_01_{m:02d}.mrc"), read_map(copy / f"threed_01_{m:02d}.hdf")
        np.testing.assert_array_equal(hdf[0], mrc[0])
        assert hdf[1] == pytest.approx(mrc[1])
