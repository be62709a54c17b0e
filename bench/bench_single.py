"""Benchmark: each model's particles refined on their own after the split (refine/single.py).

For each set of ``bench/datasets.py`` with a finished ``bench/work/SET/multirefine`` run
(``bench_refine.py``), runs the per-model refinement that ``multirefine refine`` runs after
its last iteration (the same function, :func:`multirefine.refine.single.refine_each_model`)
into ``bench/work/SET/single_RES`` and prints, per model: its particles, the FSC of the
classification's map and of the refined map against the matched true map (at 0.5 and
0.143), the refined half maps' own FSC-0.143 resolution (the gold-standard estimate, which
should name the resolution where the FSC against the truth crosses 0.5), the share of
particles whose pose is within 10 degrees of the truth (after the one rotation that best
maps the refined frame onto the true one), iterations and seconds. Results go to
``bench/results/SET_single.json``.

    python bench/bench_single.py [--sets conformational,...] [--singleres 30] [--singleiter 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multirefine.evaluate import map_resolution_against
from multirefine.geometry.euler import euler_to_matrix, rotation_change_deg
from multirefine.io.maps import read_map
from multirefine.io.particles import open_particles
from multirefine.io.star import read_particles_star
from multirefine.refine.driver import RefinementResult
from multirefine.refine.options import RefineOptions
from multirefine.refine.single import refine_each_model
from multirefine.runfolder.writer import ModelFolder

ROOT = Path(__file__).resolve().parent
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def share_within(table, truth, degrees: float = 10.0, sample: int = 300) -> float:
    """Share of particles whose pose is within ``degrees`` of the truth, after the common
    rotation between the two frames (the most popular per-particle difference)."""
    ours = euler_to_matrix(*(table[c].to_numpy() for c in ANGLES))
    true = euler_to_matrix(*(truth.loc[table["rlnImageName"]][c].to_numpy() for c in ANGLES))
    difference = np.einsum("nji,njk->nik", true, ours)
    picks = np.random.default_rng(0).choice(len(difference), min(sample, len(difference)), replace=False)

    def near(i: int) -> np.ndarray:
        return rotation_change_deg(np.repeat(difference[i][None], len(difference), 0), difference, np.eye(3)[None])

    best = max(picks, key=lambda i: (near(i) < degrees).mean())
    return float((near(best) < degrees).mean())


def bench_set(set_dir: Path, start_resolution: float, iterations: int) -> list[dict]:
    run = set_dir / "multirefine"
    convergence = json.loads((run / "convergence.json").read_text())
    last = convergence[-1]["iteration"]
    k = len(convergence[-1]["particles_per_model"])
    parms = json.loads((run / "0_refine_parms.json").read_text())
    stack = open_particles(set_dir / "particles.star")
    table = read_particles_star(run / f"particles_{last:02d}.star").metadata
    # The maps in the particles' units, as run_refinement hands them over (written unnormalised
    # when the run had no --mass, as the benchmark's runs have not).
    assert not parms.get("mass_kda"), "the benchmark's run must have no --mass"
    maps = [read_map(run / f"threed_{last:02d}_{m:02d}.mrc")[0] for m in range(1, k + 1)]
    out = set_dir / f"single_{start_resolution:g}"
    opts = RefineOptions(input=str(set_dir / "particles.star"), path=str(out), symmetries=parms["symmetries"],
                         single_iterations=iterations, single_start_resolution_angstrom=start_resolution)
    started = time.perf_counter()
    results = refine_each_model(opts, stack, stack, RefinementResult([], table, maps),
                                recorders=lambda m: ModelFolder(out / f"model_{m:02d}", stack.pixel_size_angstrom, stack.optics))
    wall = time.perf_counter() - started
    truth = read_particles_star(set_dir / "truth.star").metadata.set_index("rlnImageName")
    apix = stack.pixel_size_angstrom
    rows = []
    for m in range(1, k + 1):
        own = table[table["rlnClassNumber"] == m]
        state = int(np.bincount(truth.loc[own["rlnImageName"]]["rlnClassNumber"]).argmax())
        true_map = read_map(set_dir / f"gt_{state:02d}.mrc")[0]
        result = results[m - 1]
        row = {"model": m, "state": state, "particles": len(own),
               "classification_vs_truth_0.5_0.143": map_resolution_against(maps[m - 1], true_map, apix),
               "classification_half_maps_0.143": convergence[-1]["resolution_0143_angstrom"][m - 1],
               "classification_poses_within_10deg": share_within(own, truth)}
        if result is not None:
            final = read_particles_star(out / f"model_{m:02d}" / "particles_final.star").metadata
            row.update({
                "refined_vs_truth_0.5_0.143": map_resolution_against(
                    read_map(out / f"model_{m:02d}" / "threed_final.mrc")[0], true_map, apix),
                "refined_half_maps_0.143": result.resolution_0143_angstrom,
                "refined_poses_within_10deg": share_within(final, truth),
                "iterations": len(result.stats),
                "seconds": sum(s.seconds for s in result.stats),
            })
        rows.append(row)
    return [{"command": f"bench/bench_single.py --sets {set_dir.name} --singleres {start_resolution:g} "
                        f"--singleiter {iterations}", "wall_seconds": wall, "threads": torch.get_num_threads()}] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="conformational,three_state,compositional")
    parser.add_argument("--work", default=str(ROOT / "work"))
    parser.add_argument("--singleres", type=float, default=30.0)
    parser.add_argument("--singleiter", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.sets.split(","):
        rows = bench_set(Path(args.work) / name, args.singleres, args.singleiter)
        (ROOT / "results" / f"{name}_single.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{name}: {rows[0]['wall_seconds']:.0f} s")
        for row in rows[1:]:
            print("  " + ", ".join(f"{key} {value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
