"""End to end: `multirefine refine` on a small simulated two-state set (adenylate kinase
open and closed, box 40, 2.4 Å/px, 1000 particles, SNR 0.1, CTF), scored against the truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from helpers import ADK_APIX as APIX
from helpers import ADK_BOX as BOX
from helpers import simulate_adk

from multirefine.cli.main import main
from multirefine.evaluate import classification_accuracy
from multirefine.fourier.filters import lowpass_volume
from multirefine.io.maps import read_map, write_map, write_stack
from multirefine.io.star import read_particles_star
from multirefine.refine.reconstruct import reconstruct_from_stack

pytest.importorskip("MDAnalysisTests", reason="the adenylate kinase models come from mdanalysistests")



def hungarian_accuracy(truth: np.ndarray, assigned: np.ndarray) -> float:
    return classification_accuracy(truth, assigned).accuracy


@pytest.fixture(scope="module")
def adk(tmp_path_factory):
    from multirefine.io.particles import open_particles

    root = tmp_path_factory.mktemp("adk")
    simulate_adk(root / "sim", 1000, [0.5, 0.5], seed=1, lowpass_angstrom=20.0)
    consensus = reconstruct_from_stack(open_particles(root / "sim" / "truth.star")).full_map
    write_map(root / "consensus_lp20.mrc", lowpass_volume(torch.from_numpy(consensus), 20.0, APIX).numpy(), APIX)
    return root


def resolved_images(star: Path) -> list[str]:
    """``N@file`` of each particle of ``star``, its file resolved from the STAR file's folder."""
    names = read_particles_star(star).metadata["rlnImageName"].str.partition("@")
    return [f"{n}@{(star.parent / f).resolve()}" for n, f in zip(names[0], names[2])]


def write_stack_of(adk, folder, images: np.ndarray, name: str = "bad"):
    """``folder/name.mrcs`` holding ``images`` and ``folder/name.star`` naming them, with the
    first rows of the adk set's metadata (its CTFs); returns the STAR file's path."""
    import mrcfile

    from multirefine.io.star import write_particles_star

    meta = read_particles_star(adk / "sim" / "particles.star").metadata.iloc[: len(images)].copy()
    with mrcfile.new(folder / f"{name}.mrcs") as f:
        f.set_data(images)
        f.voxel_size = APIX
    meta["rlnImageName"] = [f"{i + 1}@{name}.mrcs" for i in range(len(images))]
    write_particles_star(folder / f"{name}.star", meta)
    return folder / f"{name}.star"


def truth_classes(root) -> np.ndarray:
    return read_particles_star(root / "sim" / "truth.star").metadata["rlnClassNumber"].to_numpy()


def main_captured(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)``'s exit status, what it printed and what it logged (the text capsys and
    caplog give a test), for a run made once in a module-scoped fixture and asserted on by
    several tests."""
    import contextlib
    import io
    import logging

    out, logged = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logged)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
    finally:
        root.removeHandler(handler)
    return code, out.getvalue(), logged.getvalue()


# lp_run and continued_runs are each made once (more than 20 s on 2 cores: slow) and asserted
# on by several tests (`make test-slow` runs a module's tests on one xdist worker: --dist loadfile).


@pytest.fixture(scope="module")
def lp_run(adk):
    """``multirefine refine -v`` from the true maps low-passed to 20 Å, 3 iterations and 2 of
    each model on its own: (the run folder, exit status, stdout, log text)."""
    run = adk / "run_lp"
    code, out, logged = main_captured(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                                       f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--iter", "3", "--singleiter", "2",
                                       "--path", str(run), "--parallel", "thread:2", "-v"])
    return run, code, out, logged


@pytest.mark.slow
def test_from_low_passed_true_maps(adk, lp_run):
    run, code, out, logged = lp_run
    assert code == 0
    # logged: -v, each iteration's grid and the time of each stage
    for iteration in (1, 2, 3):
        assert f"iteration {iteration}: global pass over " in logged
        assert f"iteration {iteration} stages: search " in logged
    assert "model 1, iteration 1 stages: search " in logged  # each model on its own, too
    assert f"the report: {run}/index.html" in out
    assigned = read_particles_star(run / "particles_03.star").metadata
    accuracy = hungarian_accuracy(truth_classes(adk), assigned["rlnClassNumber"].to_numpy())
    assert accuracy >= 0.95, accuracy
    # rlnMaxValueProbDistribution: the posterior of the particle's model (hard assignment too),
    # lower for the particles in the wrong model; keeping the confident ones (as RELION users
    # select on this column) raises the accuracy (measured on the same set after 2 iterations
    # of --nosingle: 97.0 % of all, 99.0 % of the 93.7 % at 0.9 or more).
    confidence = assigned["rlnMaxValueProbDistribution"].to_numpy()
    assert confidence.min() >= 0.5 - 1e-6 and confidence.max() <= 1 + 1e-6  # the best of two models
    score = classification_accuracy(truth_classes(adk), assigned["rlnClassNumber"].to_numpy())
    right = np.asarray(score.matching)[truth_classes(adk) - 1] == assigned["rlnClassNumber"].to_numpy() - 1
    assert right.all() or confidence[~right].mean() < confidence[right].mean() - 0.1
    sure = confidence >= 0.9
    assert sure.mean() > 0.8 and right[sure].mean() >= accuracy
    # The run folder's contract.
    for name in ("threed_00_01.mrc", "threed_03_02.mrc", "particles_01.star", "fsc_03.json", "fsc_03.png",
                 "classes_03.mrcs", "classes_03.star", "convergence.png",
                 "convergence.json", "0_refine_parms.json", "particles_model_01.star", "particles_model_02.star",
                 "model_01/threed_final.mrc", "model_02/half1_unfil.mrc", "model_02/half2_unfil.mrc",
                 "model_01/particles_final.star", "model_02/convergence.json"):
        assert (run / name).exists(), name
    # The report: every figure it shows is there, and its numbers are the run's.
    import re

    page = (run / "index.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (run / src).exists(), src
    assert "Each model refined on its own" in page and "Class averages after iteration" in page
    assert 'Viewing directions after iteration <span class="iteration">3</span>' in page
    # The iteration slider offers iterations 1-3, and every figure it swaps in is there.
    assert 'data-iterations="[1, 2, 3]"' in page
    patterns = re.findall(r'data-pattern="([^"]+)"', page)
    assert len(patterns) == 4, patterns  # FSC, maps, class averages, viewing directions
    for pattern in patterns:
        for it in (1, 2, 3):
            assert (run / pattern.replace("_II.png", f"_{it:02d}.png")).exists(), (pattern, it)
    own = json.loads((run / "model_01" / "convergence.json").read_text())[-1]["resolution_0143_angstrom"]
    assert f"<td>{own:.1f}</td>" in page
    # How far each model's poses moved in its own refinement: recorded, and a column of the report.
    from multirefine.refine.posecheck import PosesMoved

    for k in (1, 2):
        moved = PosesMoved.read(run / f"model_{k:02d}" / "poses_moved.json")
        assert moved is not None and moved.particles == len(read_particles_star(run / f"particles_model_{k:02d}.star").metadata)
    assert "poses moved &gt; 100° on its own" in page
    # Each model's own refinement keeps its particles: the same images as its set of the split.
    for k in (1, 2):
        own = resolved_images(run / f"model_{k:02d}" / "particles_final.star")
        assert own == resolved_images(run / f"particles_model_{k:02d}.star")
    convergence = json.loads((run / "convergence.json").read_text())
    assert len(convergence) == 3 and convergence[-1]["fraction_changed_model"] < 0.1
    # --m3dkeep 0.9 (the default): each map from the best-scored 90 % of its particles.
    for stat in convergence:
        np.testing.assert_allclose(stat["particles_in_maps"], 0.9 * np.array(stat["particles_per_model"]), atol=1)
    # Each map is closer to its own true map than to the other state's.
    for k in (1, 2):
        ours = torch.from_numpy(read_map(run / f"threed_03_{k:02d}.mrc")[0])
        own = torch.from_numpy(read_map(adk / "sim" / f"gt_{k:02d}.mrc")[0])
        other = torch.from_numpy(read_map(adk / "sim" / f"gt_{3 - k:02d}.mrc")[0])
        assert torch.corrcoef(torch.stack([ours.flatten(), own.flatten()]))[0, 1] > torch.corrcoef(
            torch.stack([ours.flatten(), other.flatten()]))[0, 1]
    # Every input particle, its image found from the run folder, with RELION's columns.
    assert resolved_images(run / "particles_03.star") == resolved_images(adk / "sim" / "particles.star")
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert column in assigned.columns


@pytest.mark.slow
def test_continue_keeps_the_models_refined_before(adk, lp_run, capsys):
    """A run killed during model 2's own refinement: --continue keeps model 1's refinement
    as it was, refines model 2 again as the uninterrupted run did, and leaves nothing of
    the cut attempt."""
    import shutil

    import mrcfile

    whole = lp_run[0]
    run = adk / "run_lp_cut"
    shutil.copytree(whole, run)
    (run / "model_02" / "finished.json").unlink()
    (run / "model_02" / "threed_final.mrc").write_bytes(b"half-written by a run that was killed")
    (run / "model_02" / "threed_07.mrc").write_bytes(b"an iteration the new attempt may not reach")
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "model_01").iterdir()}
    capsys.readouterr()
    assert main(["refine", "--continue", str(run), "--parallel", "thread:2"]) == 0
    out = capsys.readouterr().out
    assert "model 1 on its own (finished before this --continue, kept)" in out
    assert "model 2 on its own: " in out
    assert {p.name: p.stat().st_mtime_ns for p in (run / "model_01").iterdir()} == kept
    assert not (run / "model_02" / "threed_07.mrc").exists()
    # Bit for bit on the CPU; a GPU sums in no fixed order (README, --continue).
    exact = json.loads((whole / "0_refine_parms.json").read_text())["device"] == "cpu"
    for name in ("threed_final.mrc", "half1_unfil.mrc", "half2_unfil.mrc"):
        a, b = mrcfile.read(run / "model_02" / name), mrcfile.read(whole / "model_02" / name)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, name
    marker = json.loads((run / "model_02" / "finished.json").read_text())
    assert marker == json.loads((whole / "model_02" / "finished.json").read_text())
    assert marker["after_iteration"] == 3 and marker["single_iterations"] == 2
    # Another --singleiter is another refinement: neither model is kept.
    assert main(["refine", "--continue", str(run), "--singleiter", "1", "--parallel", "thread:2"]) == 0
    assert "finished before" not in capsys.readouterr().out
    assert json.loads((run / "model_01" / "finished.json").read_text())["single_iterations"] == 1
    # A value given is taken even when it is the default (8), which the run no longer has.
    assert main(["refine", "--continue", str(run), "--singleiter", "8", "--check"]) == 0
    assert "at most 8 iterations" in capsys.readouterr().out
    # More iterations without the per-model stage: the refinements on their own were made
    # from iteration 3, so the report no longer shows them as the models'.
    assert main(["refine", "--continue", str(run), "--iter", "4", "--nosingle", "--parallel", "thread:2"]) == 0
    page = (run / "index.html").read_text()
    assert "Each model refined on its own" not in page


@pytest.mark.slow
def test_mass_scales_the_maps_written_not_the_references(adk):
    """``--mass``: threshold 1 of every written map encloses the mass; the search still
    compares particles with references in the particles' units, so the classification is
    as good as without it (starting maps in map units x 1000, particles normalised)."""
    from multirefine.refine.postprocess import ANGSTROM3_PER_DALTON

    for k in (1, 2):
        volume, _ = read_map(adk / f"lp_{k}.mrc")
        write_map(adk / f"bright_{k}.mrc", 1000 * volume, APIX)
    run = adk / "run_mass"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                 f"{adk}/bright_1.mrc,{adk}/bright_2.mrc", "--mass", "24", "--nosingle", "--iter", "2",
                 "--path", str(run),
                 "--parallel", "thread:2"])
    assert code == 0
    assigned = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth_classes(adk), assigned) >= 0.95
    expected_voxels = 24_000 * ANGSTROM3_PER_DALTON / APIX**3
    for k in (1, 2):
        volume, _ = read_map(run / f"threed_02_{k:02d}.mrc")
        assert int((volume > 1).sum()) == pytest.approx(expected_voxels, rel=0.02)


@pytest.mark.slow
def test_sep_and_classiter(adk):
    """--sep 2: every particle in its two best orientations of its model with weight 1/2, in
    the maps and the class averages; --classiter 1: class averages re-aligned once. The
    classification stays as good (from the low-passed true maps)."""
    import starfile

    run = adk / "run_sep"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                 f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--iter", "2", "--sep", "2", "--classiter", "1",
                 "--classkeep", "1", "--nosingle", "--path", str(run), "--parallel", "thread:2"])
    assert code == 0
    assigned = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth_classes(adk), assigned) >= 0.95
    parms = json.loads((run / "0_refine_parms.json").read_text())
    assert parms["sep"] == 2 and parms["classiter"] == 1
    classes = starfile.read(run / "classes_02.star")
    # Weights 1/2 per entry, two entries per particle: the class members add up to the particles.
    assert classes["mrParticleCount"].sum() == pytest.approx(1000)
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1)  # RELION's: fractions
    assert classes["rlnReferenceImage"].iloc[2] == "3@classes_02.mrcs"


@pytest.mark.slow
def test_hypotheses_spread_each_particle_over_its_distinct_poses(adk):
    """--hypotheses 3: every particle enters its model's map and the class averages at its
    distinct best poses there, weighted by their posteriors (summing to 1 per particle, so the
    class members still add up to the particles); the classification stays as good."""
    import starfile

    run = adk / "run_hypotheses"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                 f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--iter", "2", "--hypotheses", "3", "--classkeep", "1",
                 "--nosingle", "--path", str(run), "--parallel", "thread:2"])
    assert code == 0
    assigned = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth_classes(adk), assigned) >= 0.95
    assert json.loads((run / "0_refine_parms.json").read_text())["hypotheses"] == 3
    classes = starfile.read(run / "classes_02.star")
    assert classes["mrParticleCount"].sum() == pytest.approx(1000, abs=1)


@pytest.mark.slow
def test_randphase_from_one_consensus_map(adk):
    """From one consensus map (20 Å) seeded by --randphase the two states separate.

    Bound: at least 75 % right after 5 iterations (measured 79.9 % with the default hard
    assignment and least-squares score; 50 % is chance).
    """
    run = adk / "run_rp"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--model", str(adk / "consensus_lp20.mrc"),
                 "--nmodels", "2", "--randphase", "--nosingle", "--iter", "5", "--path", str(run),
                 "--parallel", "thread:2"])
    assert code == 0
    assigned = read_particles_star(run / "particles_05.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth_classes(adk), assigned) >= 0.75


def test_randclassify_first_split_is_random(adk):
    """--randclassify (RELION's Class3D seeding, do_generate_seeds): after the first alignment
    every particle goes to a model drawn at random, whatever its state."""
    run = adk / "run_rc"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--model", str(adk / "consensus_lp20.mrc"),
                 "--nmodels", "2", "--randclassify", "--nosingle", "--iter", "1", "--path", str(run),
                 "--parallel", "thread:2"])
    assert code == 0
    assert json.loads((run / "0_refine_parms.json").read_text())["seeding"] == "randclassify"
    assigned = read_particles_star(run / "particles_01.star").metadata["rlnClassNumber"].to_numpy()
    truth = truth_classes(adk)
    # 1000 particles: binomial sd 16 per model, 1.6 % in accuracy.
    assert abs(int((assigned == 1).sum()) - 500) < 60
    assert 0.45 < hungarian_accuracy(truth, assigned) < 0.55
    for state in (1, 2):  # each state split evenly too
        assert 0.4 < np.mean(assigned[truth == state] == 1) < 0.6


@pytest.fixture(scope="module")
def one_state(tmp_path_factory):
    """600 particles of one state (adk open), and their consensus map low-passed to 20 Å."""
    from multirefine.cli.demo import adenylate_kinase_models
    from multirefine.io.particles import open_particles
    from multirefine.simulate import (
        SimulationParameters,
        maps_from_models,
        read_atomic_model,
        simulate_dataset,
    )

    root = tmp_path_factory.mktemp("one_state")
    maps = maps_from_models([read_atomic_model(adenylate_kinase_models()[0])], BOX, APIX, 2 * APIX)
    params = SimulationParameters(n_particles=600, snr=0.1, fractions=[1.0], pixel_size_angstrom=APIX, seed=2)
    simulate_dataset(root / "sim", maps, params)
    consensus = reconstruct_from_stack(open_particles(root / "sim" / "truth.star")).full_map
    write_map(root / "consensus_lp20.mrc", lowpass_volume(torch.from_numpy(consensus), 20.0, APIX).numpy(), APIX)
    return root


@pytest.mark.slow
def test_one_state_split_at_random_does_not_stick(one_state):
    """Particles of one state split at random into two models must keep moving: nothing tells
    the models apart. Scored against maps they took part in, they stay where chance put them
    (a particle's own noise is in its model's map): 18 % and 4 % changed model in iterations 2
    and 3 that way. Against the maps rebuilt without their fold, 49 % and 31 % move."""
    run = one_state / "run"
    code = main(["refine", "--input", str(one_state / "sim" / "particles.star"), "--model",
                 str(one_state / "consensus_lp20.mrc"), "--nmodels", "2", "--randclassify", "--nosingle", "--iter", "3",
                 "--targetres", "12", "--path", str(run), "--parallel", "thread:2"])
    assert code == 0
    stats = json.loads((run / "convergence.json").read_text())
    assert [s["band_resolution_angstrom"] for s in stats] == [12.0] * 3  # --targetres: every iteration's band
    changed = [s["fraction_changed_model"] for s in stats[1:]]
    print(changed)
    assert changed[0] >= 0.4 and changed[1] >= 0.25, changed


@pytest.mark.slow
def test_report_is_rebuilt_from_the_run_folder(lp_run, tmp_path, capsys):
    run = lp_run[0]
    (run / "index.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "index.html").exists() and "index.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "convergence.json" in err and str(tmp_path) in err


def test_check_reports_without_running(adk, capsys):
    run = adk / "run_check"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                 f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--sym", "c1,c2", "--check", "--path", str(run)])
    assert code == 0
    out = capsys.readouterr().out
    assert "1000 particles" in out and "C1,C2" in out and "nothing was run" in out
    assert "each model refined on its own (at most 8 iterations, from 30 Å)" in out
    assert not run.exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--model", "{a}/lp_1.mrc"], "not both"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--sym", "c1,c2,c3"], "3 symmetries for 2 models"),
        (["--models", "{a}/lp_1.mrc,{a}/missing.mrc"], "missing.mrc"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--mass", "100,200,300"], "3 masses for 2 models"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--path", "{a}/sim"], "not empty"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--sep", "2", "--soft"], "--sep 2 with --soft"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--singleiter", "0"], "--singleiter 0"),
        (["--models", "{a}/lp_1.mrc,{a}/lp_2.mrc", "--singleres", "-5"], "--singleres -5.0"),
    ],
)
def test_bad_options_give_one_line_errors(adk, capsys, extra, expected):
    argv = ["refine", "--input", str(adk / "sim" / "particles.star"), "--check"] + [e.format(a=adk) for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_nan_images_are_reported_by_check(tmp_path, adk, capsys):
    images = np.zeros((20, BOX, BOX), np.float32)
    images[7, 3, 3] = np.nan
    write_stack_of(adk, tmp_path, images)
    argv = ["refine", "--input", str(tmp_path / "bad.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--check"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.mrcs" in err and len(err.splitlines()) == 1, err


def test_mass_with_no_pixel_size_anywhere(tmp_path, adk, capsys):
    """No pixel size in the STAR file nor in the image header: one line that asks for --apix."""
    import mrcfile

    from multirefine.io.star import write_particles_star

    meta = read_particles_star(adk / "sim" / "particles.star").metadata.iloc[:20].copy()
    meta = meta.drop(columns=[c for c in meta.columns if c in ("rlnImagePixelSize", "rlnOpticsGroup")])
    with mrcfile.new(tmp_path / "plain.mrcs") as f:
        f.set_data(np.zeros((20, BOX, BOX), np.float32))  # header voxel size 0
    meta["rlnImageName"] = [f"{i + 1}@plain.mrcs" for i in range(20)]
    write_particles_star(tmp_path / "plain.star", meta)
    argv = ["refine", "--input", str(tmp_path / "plain.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc",
            "--mass", "24", "--check"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "plain.star: pixel size unknown" in err and "--apix" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("given_empty_folder", [False, True])
def test_nan_image_found_during_the_run_leaves_no_partial_folder(tmp_path, adk, capsys, monkeypatch, given_empty_folder):
    """A NaN image that the pre-run sample misses stops the first iteration with the same
    one-line error, and the run folder it had begun is removed (an empty folder given as
    --path is emptied and kept); the inputs are untouched."""
    import hashlib

    from multirefine.io.particles import ParticleStack

    images = np.random.default_rng(0).normal(size=(40, BOX, BOX)).astype(np.float32)
    images[33, 5, 5] = np.nan
    write_stack_of(adk, tmp_path, images)
    if given_empty_folder:
        (tmp_path / "run").mkdir()
    digest = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(ParticleStack, "check", lambda self, sample=None, batch_size=256: None)  # the sample missed it
    argv = ["refine", "--input", str(tmp_path / "bad.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc",
            "--iter", "1", "--nosingle", "--path", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "bad.mrcs" in err[-1] and "NaN" in err[-1], err
    if given_empty_folder:
        assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())
    else:
        assert not (tmp_path / "run").exists()
    assert digest == {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}


def test_usefilt_must_match_the_input(tmp_path, adk, capsys):
    from multirefine.io.maps import write_stack

    write_stack(tmp_path / "short.mrcs", np.zeros((10, BOX, BOX), np.float32), APIX)
    argv = ["refine", "--input", str(adk / "sim" / "particles.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc",
            "--usefilt", str(tmp_path / "short.mrcs"), "--check"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "short.mrcs" in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_usefilt_drives_the_search(tmp_path, adk):
    """A low-passed copy of the stack, in other units (x 7, as a denoiser may give), is
    searched; the raw stack is reconstructed."""
    import mrcfile

    from multirefine.fourier.fft import irfft2_centered, rfft2_centered
    from multirefine.fourier.filters import lowpass_images_ft
    from multirefine.io.maps import write_stack

    raw = mrcfile.read(adk / "sim" / "particles.mrcs")
    filtered = irfft2_centered(lowpass_images_ft(rfft2_centered(torch.from_numpy(raw.copy())), 12.0, APIX), BOX)
    write_stack(tmp_path / "filtered.mrcs", 7 * filtered.numpy(), APIX)
    run = tmp_path / "run"
    code = main(["refine", "--input", str(adk / "sim" / "particles.star"), "--usefilt", str(tmp_path / "filtered.mrcs"),
                 "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--nosingle", "--iter", "2", "--path", str(run),
                 "--parallel", "thread:2"])
    assert code == 0
    assigned = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth_classes(adk), assigned) >= 0.9
    # The maps come from the raw images: they hold signal beyond the filter's 12 Å, where a
    # map of the filtered images would hold only noise (FSC about 0; measured here 0.34).
    fsc = json.loads((run / "fsc_02.json").read_text())["half_map_fsc"]
    frequency = json.loads((run / "fsc_02.json").read_text())["shell_frequency_per_angstrom"]
    beyond = [i for i, f in enumerate(frequency) if f > 1 / 11.0]
    assert max(fsc[0][i] for i in beyond) > 0.2


@pytest.fixture(scope="module")
def continued_runs(adk):
    """From the low-passed true maps, --nosingle: ``run_whole`` of 2 iterations, and
    ``run_part`` of 1, its iteration 2 half-written (as by a run killed), continued to 2:
    (whole, part, the three exit statuses, the --continue's stdout)."""
    # On the CPU, where sums run in a fixed order (on a GPU they do not: README, --continue).
    common = ["refine", "--input", str(adk / "sim" / "particles.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc",
              "--nosingle", "--parallel", "thread:2", "--device", "cpu"]
    whole, part = adk / "run_whole", adk / "run_part"
    codes = [main([*common, "--iter", "2", "--path", str(whole)]), main([*common, "--iter", "1", "--path", str(part)])]
    (part / "threed_02_01.mrc").write_bytes(b"half-written by a run that was killed")
    code, out, _ = main_captured(["refine", "--continue", str(part), "--iter", "2", "--parallel", "thread:2",
                                  "--device", "cpu"])
    return whole, part, [*codes, code], out


@pytest.mark.slow
def test_continue_gives_the_uninterrupted_run(continued_runs):
    """A run stopped after iteration 1 and continued to 2 ends where a run of 2 iterations
    does: the same assignment, poses and maps (the model choice of iteration 2 needs the
    accumulators of iteration 1, which --continue rebuilds from state.npz)."""
    import mrcfile
    import pandas.testing as pd_testing

    whole, part, (whole_code, part_code, continue_code), out = continued_runs
    assert whole_code == 0
    assert part_code == 0
    assert continue_code == 0
    assert f"continuing {part} after iteration 1 of 2" in out
    a = read_particles_star(whole / "particles_02.star").metadata
    b = read_particles_star(part / "particles_02.star").metadata
    columns = ["rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    pd_testing.assert_frame_equal(a[columns], b[columns])
    for name in ("threed_01_01.mrc", "threed_02_01.mrc", "threed_02_02.mrc"):
        np.testing.assert_array_equal(mrcfile.read(part / name), mrcfile.read(whole / name), err_msg=name)
    ca, cb = (json.loads((run / "convergence.json").read_text()) for run in (whole, part))
    assert len(cb) == 2
    for sa, sb in zip(ca, cb):
        sa.pop("seconds"), sb.pop("seconds")
        assert sa == sb
    assert json.loads((part / "0_refine_parms.json").read_text())["iterations"] == 2
    assert (part / "particles_model_02.star").exists()


@pytest.mark.slow
def test_continue_single_refines_the_models_of_a_nosingle_run(adk, continued_runs, capsys):
    """Classification only (--nosingle, as RELION's Class3D), then --continue --single: each
    model refined on its own from the run's last iteration, no iteration repeated."""
    import shutil

    source = continued_runs[1]  # --nosingle, 2 iterations
    run = adk / "run_part_single"
    shutil.copytree(source, run)
    capsys.readouterr()
    assert main(["refine", "--continue", str(run), "--single", "--singleiter", "1", "--parallel", "thread:2"]) == 0
    out = capsys.readouterr().out
    assert "model 1 on its own: 1 iterations" in out and "model 2 on its own: 1 iterations" in out
    assert len(json.loads((run / "convergence.json").read_text())) == 2
    for k in (1, 2):
        marker = json.loads((run / f"model_{k:02d}" / "finished.json").read_text())
        assert marker["after_iteration"] == 2
        own = resolved_images(run / f"model_{k:02d}" / "particles_final.star")
        assert own == resolved_images(run / f"particles_model_{k:02d}.star")
    assert main(["refine", "--continue", str(run), "--single", "--nosingle"]) == 2
    assert "--single and --nosingle" in capsys.readouterr().err


@pytest.mark.slow
def test_the_units_of_particles_and_maps_change_nothing(adk, continued_runs, tmp_path):
    """Particles not normalised (here x50): the same assignment, poses and posteriors after
    an iteration as the normalised ones give. The starting maps are scaled to the particles
    by least squares, and all else is linear in them. An offset of 3 noise sigmas in every
    image classifies as well: the maps' solvent is flattened to 0, so the offset leaves no
    sphere in them (before, such a set fell from 97 to 80 % after 2 iterations). Starting
    maps on a level (solvent at a tenth of their peak) give the run of maps without it
    (before: 88.9 against 94.5 % after iteration 1)."""
    import mrcfile

    whole, part = continued_runs[:2]
    reference = part / "particles_01.star"
    star = write_stack_of(adk, tmp_path, 50 * mrcfile.read(adk / "sim" / "particles.mrcs"), name="x50")
    run = tmp_path / "run"
    assert main(["refine", "--input", str(star), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--nosingle",
                 "--iter", "1", "--path", str(run), "--parallel", "thread:2", "--device", "cpu"]) == 0
    a = read_particles_star(reference).metadata
    b = read_particles_star(run / "particles_01.star").metadata
    assert np.sum(a["rlnClassNumber"] != b["rlnClassNumber"]) <= 2  # rounding may tip a near tie (measured: none)
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert np.mean(np.abs(a[column] - b[column]) < 1e-2) > 0.995, column
    np.testing.assert_allclose(a["rlnMaxValueProbDistribution"], b["rlnMaxValueProbDistribution"], atol=1e-2)
    np.testing.assert_allclose(read_map(run / "threed_01_01.mrc")[0],
                               50 * read_map(part / "threed_01_01.mrc")[0], rtol=1e-3, atol=1e-3 * 50)
    # The offset reaches the search through the maps made from the particles: iteration 2.
    star = write_stack_of(adk, tmp_path, 3 + mrcfile.read(adk / "sim" / "particles.mrcs"), name="offset")
    assert main(["refine", "--input", str(star), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc", "--nosingle",
                 "--iter", "2", "--path", str(tmp_path / "offset"), "--parallel", "thread:2", "--device", "cpu"]) == 0
    c = read_particles_star(tmp_path / "offset" / "particles_02.star").metadata
    same_run = read_particles_star(whole / "particles_02.star").metadata  # normalised, 2 iterations
    truth = truth_classes(adk)
    assert hungarian_accuracy(truth, c["rlnClassNumber"].to_numpy()) > hungarian_accuracy(
        truth, same_run["rlnClassNumber"].to_numpy()) - 0.01  # measured 97.3 against 96.9 %
    for k in (1, 2):
        volume, _ = read_map(adk / f"lp_{k}.mrc")
        write_map(tmp_path / f"level_{k}.mrc", volume + 0.1 * volume.max(), APIX)
    assert main(["refine", "--input", str(adk / "sim" / "particles.star"), "--models",
                 f"{tmp_path}/level_1.mrc,{tmp_path}/level_2.mrc", "--nosingle", "--iter", "1", "--path",
                 str(tmp_path / "level"), "--parallel", "thread:2", "--device", "cpu"]) == 0
    d = read_particles_star(tmp_path / "level" / "particles_01.star").metadata
    assert np.sum(a["rlnClassNumber"] != d["rlnClassNumber"]) <= 2  # measured: none
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        assert np.mean(np.abs(a[column] - d[column]) < 1e-2) > 0.995, column


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--speed", "3", "--sym", "c2"], "--sym, --speed cannot change"),
        (["--iter", "0"], "--iter 0"),
        (["--input", "other.star"], "--input cannot change"),
        (["--speed", "5"], "--speed cannot change"),  # refused though 5 is the default
    ],
)
@pytest.mark.slow
def test_continue_takes_the_runs_options(continued_runs, capsys, extra, expected):
    run = continued_runs[1]
    assert main(["refine", "--continue", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_failure_after_the_first_iteration_keeps_the_run_for_continue(adk, tmp_path, monkeypatch, capsys):
    """A run stopped in iteration 2 keeps its folder (iteration 1's state for --continue).
    --lowmem, like --device, is the continuing command's: given, small batches; not, full ones.
    A --continue that fails in its first iteration leaves 0_refine_parms.json as it was; with its
    particles replaced by others of the same count and box, --continue refuses in one line."""
    from multirefine.cli.continuation import resolve_continue
    from multirefine.cli.main import _given, build_parser
    from multirefine.refine import driver

    calls = []
    search = driver.search_particles

    def stop_in_iteration_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped in iteration 2")
        return search(*args, **kwargs)

    monkeypatch.setattr(driver, "search_particles", stop_in_iteration_2)
    run, sim = tmp_path / "run", tmp_path / "sim"
    shutil.copytree(adk / "sim", sim)  # its images are replaced below
    with pytest.raises(RuntimeError, match="iteration 2"):
        main(["refine", "--input", str(sim / "particles.star"), "--models", f"{adk}/lp_1.mrc,{adk}/lp_2.mrc",
              "--iter", "2", "--nosingle", "--path", str(run)])
    assert (run / "state.npz").exists() and (run / "threed_01_01.mrc").exists()
    sizes = []
    for extra in (["--lowmem"], []):
        argv = ["refine", "--continue", str(run), *extra]
        args = build_parser().parse_args(argv)
        args.given = _given("refine", argv)
        _, _, opts, state, _ = resolve_continue(args)
        assert state.iteration == 1
        sizes.append(opts.batch_size)
    assert sizes == [200, 500]
    # A --continue that fails before it finishes an iteration leaves the run's options as they were.
    parameters = (run / "0_refine_parms.json").read_bytes()
    calls[:] = [1]  # the next search is the failing one
    with pytest.raises(RuntimeError, match="iteration 2"):
        main(["refine", "--continue", str(run), "--iter", "3"])
    assert (run / "0_refine_parms.json").read_bytes() == parameters
    # Other images of the same count and box under the run's input name: refused, nothing rewritten.
    with mrcfile.open(sim / "particles.mrcs") as mrc:
        images = mrc.data[::-1].copy()
    write_stack(sim / "particles.mrcs", images, APIX)
    assert main(["refine", "--continue", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the stack the run was started on" in err and "particles.star" in err, err
    assert len(err.splitlines()) == 1 and (run / "0_refine_parms.json").read_bytes() == parameters


def test_continue_needs_a_finished_iteration(adk, tmp_path, capsys):
    assert main(["refine", "--continue", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "0_refine_parms.json not found" in err and len(err.splitlines()) == 1, err
    (tmp_path / "0_refine_parms.json").write_text(json.dumps(
        {"input": str(adk / "sim" / "particles.star"), "path": str(tmp_path), "symmetries": ["C1", "C1"]}))
    assert main(["refine", "--continue", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "state.npz: not found" in err and len(err.splitlines()) == 1, err


def turn_z_180(volume: np.ndarray) -> np.ndarray:
    """The map turned 180° about z (axes z, y, x; the centre at D//2 stays)."""
    return np.roll(volume[:, ::-1, ::-1], 1, axis=(1, 2))


def test_one_symmetric_and_one_asymmetric_model(tmp_path):
    """--sym c2,c1: model 1's map is C2 (imposed), model 2's is not forced to be; the
    particles still go to their models."""
    from helpers import random_atoms_map

    from multirefine.simulate import SimulationParameters, simulate_dataset

    box, apix = 32, 2.0
    symmetric = random_atoms_map(box, 150, seed=11, spread_px=3.5)
    symmetric = symmetric + turn_z_180(symmetric)
    # a second state unlike the first at low resolution too: a lobe off the axis
    lobe = np.roll(random_atoms_map(box, 100, seed=13, spread_px=2.0), 6, axis=2)
    asymmetric = random_atoms_map(box, 300, seed=12, spread_px=3.5) + lobe
    simulate_dataset(tmp_path / "sim", [symmetric, asymmetric],
                     SimulationParameters(n_particles=400, snr=0.5, fractions=[0.5, 0.5], pixel_size_angstrom=apix,
                                          seed=4))
    for k, volume in enumerate((symmetric, asymmetric), 1):
        write_map(tmp_path / f"lp_{k}.mrc", lowpass_volume(torch.from_numpy(volume), 12.0, apix).numpy(), apix)
    run = tmp_path / "run"
    assert main(["refine", "--input", str(tmp_path / "sim" / "particles.star"), "--models",
                 f"{tmp_path}/lp_1.mrc,{tmp_path}/lp_2.mrc", "--sym", "c2,c1", "--iter", "2", "--nosingle",
                 "--path", str(run)]) == 0
    assigned = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    truth = read_particles_star(tmp_path / "sim" / "truth.star").metadata["rlnClassNumber"].to_numpy()
    assert hungarian_accuracy(truth, assigned) >= 0.95
    maps = [read_map(run / f"threed_02_0{k}.mrc")[0] for k in (1, 2)]

    def self_correlation(volume):
        return np.corrcoef(volume.ravel(), turn_z_180(volume).ravel())[0, 1]

    assert self_correlation(maps[0]) > 0.999  # imposed
    assert self_correlation(maps[1]) < 0.8  # not imposed: the asymmetric state's own map
    assert np.corrcoef(maps[1].ravel(), asymmetric.ravel())[0, 1] > 0.8
