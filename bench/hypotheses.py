"""Distinct pose hypotheses (``--hypotheses``): how often the true pose is among them, and at what cost.

    python bench/hypotheses.py SET_DIR [--model 2] [--n 400] [--bands 20,12] [--hypotheses 0,3,5,10]

Particles of one model of a simulated set (``truth.star``, ``particles.star``, ``gt_MM.mrc``,
``simulation.json``) searched against their own true map low-passed to each band, so the
only error is the search's (what a refinement faces when its map is right but coarse). For
each number of hypotheses: the best pose's median error and the share within 15 degrees of
the truth; the share of particles with a hypothesis within 15 degrees (the true pose among
them); the posterior weight that hypothesis carries (median, where there is one); and the
seconds the search took (this process, ``--threads``).
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
from multirefine.refine.layers import hypothesis_weights
from multirefine.refine.plan import plan_search
from multirefine.refine.scales import reference_scales
from multirefine.refine.seeding import particle_radius_px

NEAR_DEG = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--model", type=int, default=2)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--bands", default="20,12")
    parser.add_argument("--hypotheses", default="0,3,5,10")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truth = open_particles(args.set_dir / "truth.star")
    apix = float(json.loads((args.set_dir / "simulation.json").read_text())["pixel_size_angstrom"])
    rows = np.nonzero(truth.metadata["rlnClassNumber"].to_numpy() == args.model)[0][: args.n]
    meta = truth.metadata.iloc[rows]
    true_rot = euler_to_matrix(meta["rlnAngleRot"], meta["rlnAngleTilt"], meta["rlnAnglePsi"])
    volume = read_map(args.set_dir / f"gt_{args.model:02d}.mrc")[0]
    particles = open_particles(args.set_dir / "particles.star").subset(rows)
    batch = load_batch(particles, np.arange(len(rows)), center=False)
    print(f"{len(rows)} particles of model {args.model}, {args.threads} thread(s)")
    for band_res in (float(b) for b in args.bands.split(",")):
        plan = plan_search(truth.box_size, apix, band_res, particle_radius_px(volume), 5, ["C1"], 5.0)
        band = lowpass_volume(torch.from_numpy(volume), plan.band_resolution_angstrom, apix)
        scale = reference_scales(particles, plan, band[None], 500)
        volume_ft = prepare_volume_ft(band * float(scale[0]))[None]
        references = plan.references(volume_ft)
        power = plan.band.power(batch.images_ft).numpy()
        print(f"band {plan.band_resolution_angstrom:.1f} Å, global step {plan.coarse_step_deg:.1f}°")
        for hypotheses in (int(h) for h in args.hypotheses.split(",")):
            started = time.perf_counter()
            found = plan.search(batch.images_ft, batch.ctf, references, volume_ft, "ls", hypotheses=hypotheses)
            seconds = time.perf_counter() - started
            rotations = (found.rotations if hypotheses > 1 else found.model_rotations).double().numpy()
            scores = (found.score if hypotheses > 1 else found.model_scores).numpy()
            errors = np.stack([rotation_change_deg(true_rot, rotations[:, j], np.eye(3)[None])
                               for j in range(rotations.shape[1])], 1)
            errors = np.where(np.isfinite(scores), errors, np.inf)
            weights = hypothesis_weights(scores, power, float(plan.band.weight.sum()))
            near = errors.min(1) < NEAR_DEG
            near_weight = weights[np.arange(len(rows)), errors.argmin(1)][near]
            print(f"  hypotheses {hypotheses:2d}: best pose median {np.median(errors[:, 0]):5.1f}°, "
                  f"{100 * np.mean(errors[:, 0] < NEAR_DEG):4.1f} % within {NEAR_DEG:g}°; a hypothesis within "
                  f"{NEAR_DEG:g}°: {100 * np.mean(near):4.1f} %, its weight median "
                  f"{np.median(near_weight) if len(near_weight) else float('nan'):.2f}; "
                  f"distinct per particle {np.isfinite(scores).sum(1).mean():.1f}; {seconds:.1f} s")


if __name__ == "__main__":
    main()
