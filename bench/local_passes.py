"""The search's local passes: how close to the true pose each schedule ends, and at what cost.

    python bench/local_passes.py bench/work/conformational [--n 300] [--band 4.0] [--threads 1]

Particles of model 1 of a simulated set (``bench/datasets.py``) searched against their own
true map low-passed to ``--band``, so the only error is the search's. The driver's schedule
(:meth:`multirefine.refine.plan.SearchPlan.search`: a pass at the global step / 3 within
the global step, then one at ``SearchPlan.local_steps_deg[1]`` within twice that) against variants,
each with the same global pass and shifts. Prints the median and 90th percentile of the
angular error (degrees) and shift error (px) against the truth, and the seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multirefine.fourier.filters import lowpass_volume
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import euler_to_matrix, rotation_change_deg
from multirefine.io.maps import read_map
from multirefine.io.particles import open_particles
from multirefine.refine.batch import load_batch
from multirefine.refine.plan import plan_search
from multirefine.refine.scales import reference_scales
from multirefine.refine.search import refine_assignments
from multirefine.refine.seeding import particle_radius_px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--band", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truth = open_particles(args.set_dir / "truth.star")
    apix = float(json.loads((args.set_dir / "simulation.json").read_text())["pixel_size_angstrom"])
    rows = np.nonzero(truth.metadata["rlnClassNumber"].to_numpy() == 1)[0][: args.n]
    meta = truth.metadata.iloc[rows]
    true_rot = euler_to_matrix(meta["rlnAngleRot"], meta["rlnAngleTilt"], meta["rlnAnglePsi"])
    true_shift = meta[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix
    volume = read_map(args.set_dir / "gt_01.mrc")[0]
    plan = plan_search(truth.box_size, apix, args.band, particle_radius_px(volume), 5, ["C1"], 5.0)
    band = lowpass_volume(torch.from_numpy(volume), plan.band_resolution_angstrom, apix)
    particles = open_particles(args.set_dir / "particles.star").subset(rows)
    scale = reference_scales(particles, plan, band[None], 500)
    volume_ft = prepare_volume_ft(band * float(scale[0]))[None]
    references = plan.references(volume_ft)
    batch = load_batch(particles, np.arange(len(rows)), center=False)
    coarse, fine = plan.coarse_step_deg, plan.fine_step_deg
    print(f"{len(rows)} particles, band {plan.band_resolution_angstrom:.1f} Å, global step {coarse:.2f}°, "
          f"fine step {fine:.2f}°, shift step {plan.shift_step_px:.2f} px, {args.threads} thread(s)")
    offsets = plan.shift_offsets_px
    first, second = plan.local_steps_deg
    schedules = {
        "driver: (coarse, coarse/3), (2 x second, second)": ([coarse, 2 * second], [first, second], offsets),
        "before the tenth session: (coarse, coarse/3), (2 fine, fine)": ([coarse, 2 * fine], [coarse / 3, fine], offsets),
        "one pass: (coarse, coarse/3)": ([coarse], [coarse / 3], offsets[:1]),
        "second pass half the first: (coarse, coarse/3), (coarse/3, coarse/6)":
            ([coarse, coarse / 3], [coarse / 3, coarse / 6], offsets),
        "second pass angles fixed: (coarse, coarse/3), (0, -)": ([coarse, 0.0], [coarse / 3, 1.0], offsets),
    }
    from multirefine.refine.polar import search_global_polar

    started = time.perf_counter()
    global_pass = search_global_polar(batch.images_ft, batch.ctf, references, plan.coarse_shifts_px, score="ls", top=2)
    print(f"global pass: {time.perf_counter() - started:.1f} s")
    for name, (ranges, steps, shift_offsets) in schedules.items():
        started = time.perf_counter()
        found = refine_assignments(
            batch.images_ft, batch.ctf, references, volume_ft, coarse_shifts_px=plan.coarse_shifts_px,
            local_range_deg=ranges, local_step_deg=steps, fine_shift_offsets_px=shift_offsets, candidates=2,
            band=plan.band, score="ls", previous=global_pass,
        )
        seconds = time.perf_counter() - started
        error = rotation_change_deg(true_rot, found.model_rotations[:, 0].double().numpy(), np.eye(3)[None])
        shift_error = np.linalg.norm(found.model_shift_px[:, 0].double().numpy() - true_shift, axis=1)
        print(f"{name:75s} angle median {np.median(error):5.2f}°, q90 {np.quantile(error, 0.9):6.2f}°; "
              f"shift median {np.median(shift_error):.2f} px, q90 {np.quantile(shift_error, 0.9):.2f} px; "
              f"{seconds:.1f} s (local passes)")


if __name__ == "__main__":
    main()
