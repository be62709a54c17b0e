"""Run the built-in example: adenylate kinase open and closed, with ground truth.

Simulates a two-state particle stack from the atomic models of adenylate kinase (open
and closed, shipped by the mdanalysistests package): OUT/data/particles.star is what a
user would have, OUT/data/truth.star the answer. A consensus map (all particles at their
true poses, low-passed to 20 Å: what a consensus refinement would give) seeds two models
by --randphase, and `multirefine refine` separates the states, then refines each state's
particles on their own (gold standard). The demo prints the classification accuracy, the
resolution of each map against its true map, and each state's own refinement (its half-map
FSC resolution and its map against the truth); the run folder is OUT/refine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from multirefine.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", default="demo", help="output folder (default ./demo)")
    parser.add_argument("--n", type=int, default=3000, help="number of particles (default 3000)")
    parser.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (default 0.1)")
    parser.add_argument("--iter", type=int, default=8, help="refinement iterations (default 8)")
    parser.add_argument("--singleiter", type=int, default=8,
                        help="at most this many iterations of each state's own refinement (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def adenylate_kinase_models() -> list[str]:
    """Paths of adk_open.pdb and adk_closed.pdb from mdanalysistests."""
    try:
        from MDAnalysisTests.datafiles import PDB_closed, PDB_small
    except ImportError:
        raise InputError("the demo needs the mdanalysistests package (pip install mdanalysistests)") from None
    return [PDB_small, PDB_closed]


def main(args: argparse.Namespace) -> int:
    import torch

    from multirefine import runfolder
    from multirefine.cli import refine as refine_command
    from multirefine.evaluate import classification_accuracy, map_resolution_against
    from multirefine.fourier.filters import lowpass_volume
    from multirefine.io.maps import read_map, write_map
    from multirefine.io.particles import open_particles
    from multirefine.io.star import read_particles_star
    from multirefine.progress import progress_bar
    from multirefine.refine.posecheck import PosesMoved
    from multirefine.refine.reconstruct import reconstruct_from_stack
    from multirefine.simulate import (
        SimulationParameters,
        maps_from_models,
        read_atomic_model,
        simulate_dataset,
    )

    out = Path(args.out)
    data = out / "data"
    box, apix = 48, 2.0
    maps = maps_from_models([read_atomic_model(p) for p in adenylate_kinase_models()], box, apix, 2 * apix)
    params = SimulationParameters(
        n_particles=args.n, snr=args.snr, fractions=[0.5, 0.5], pixel_size_angstrom=apix, seed=args.seed
    )
    print(f"1. simulating {args.n} particles of adenylate kinase, open and closed: box {box}, {apix} Å/px, SNR {args.snr}")
    with progress_bar(args.n, "simulating") as advance:
        simulate_dataset(data, maps, params, progress=advance)
    print("2. consensus map: all particles at their true poses, low-passed to 20 Å")
    consensus = reconstruct_from_stack(open_particles(data / "truth.star")).full_map
    write_map(out / "consensus_lp20.mrc", lowpass_volume(torch.from_numpy(consensus), 20.0, apix).numpy(), apix)
    run = out / "refine"
    if (run / "0_refine_parms.json").exists():  # the demo's own earlier run: start afresh
        shutil.rmtree(run)
    argv = ["refine", "--input", str(data / "particles.star"), "--model", str(out / "consensus_lp20.mrc"),
            "--nmodels", "2", "--randphase", "--iter", str(args.iter), "--singleiter", str(args.singleiter),
            "--path", str(run), "--parallel", "thread:2"]
    print("3. multirefine " + " ".join(argv))
    sys.stdout.flush()
    parser = argparse.ArgumentParser(prog="multirefine refine")
    refine_command.add_args(parser)
    refine_args = parser.parse_args(argv[1:])
    refine_args.given = set()  # (what --continue checks; a new run here)
    refine_args.argv = argv  # what the run folder records of the command
    code = refine_command.main(refine_args)  # its errors reach the user as this command's
    if code:
        return code
    truth = read_particles_star(data / "truth.star").metadata["rlnClassNumber"].to_numpy()
    result = read_particles_star(run / f"particles_{args.iter:02d}.star").metadata["rlnClassNumber"].to_numpy()
    scored = classification_accuracy(truth, result)
    print(f"4. against the truth: {100 * scored.accuracy:.1f} % of particles in the right model; each map,")
    print("   moved onto its true map by translation (a map may drift by a voxel), compared by FSC:")
    for k, name in ((0, "open"), (1, "closed")):
        model = scored.matching[k] + 1
        at_05, at_0143 = map_resolution_against(read_map(run / f"threed_{args.iter:02d}_{model:02d}.mrc")[0], maps[k], apix)
        print(f"   {name}: model {model}, FSC against the true map {at_05:.1f} Å at 0.5, {at_0143:.1f} Å at 0.143")
    print("5. each model's particles refined on their own (independent half-sets): the half maps' FSC")
    print("   at 0.143 estimates the resolution that the FSC against the truth reaches at 0.5:")
    for k, name in ((0, "open"), (1, "closed")):
        model = scored.matching[k] + 1
        folder = run / runfolder.model_folder_name(model)
        if not (folder / "threed_final.mrc").exists():
            print(f"   {name}: model {model} was not refined on its own (too few particles)")
            continue
        stats = json.loads((folder / runfolder.CONVERGENCE).read_text())
        at_05, at_0143 = map_resolution_against(read_map(folder / "threed_final.mrc")[0], maps[k], apix)
        moved = PosesMoved.read(folder / runfolder.POSES_MOVED)
        print(f"   {name}: {len(stats)} iterations, half maps {stats[-1]['resolution_0143_angstrom']:.1f} Å at 0.143; "
              f"against the true map {at_05:.1f} Å at 0.5, {at_0143:.1f} Å at 0.143"
              + ("" if moved is None else f"; {100 * moved.far_share:.0f} % of its poses moved more than "
                 f"{moved.far_deg:g}° on its own{' (cautioned)' if moved.caution else ''}"))
    print(f"   maps, particle sets and FSC curves: {run}/ (each model's own refinement in {run}/model_MM/)")
    return 0
