"""How well a refined map fixes its particles' poses: a candidate signal for maps not to trust.

    python bench/pose_ambiguity.py RUN [--n 400] [--hypotheses 5] [--band A] [--threads 2] [--set SET_DIR]

For each ``RUN/model_MM/`` (a model's own refinement): a sample of its particles
(``particles_final.star``) searched once more against its final map (``threed_final.mrc``,
low-passed to its claimed resolution, or ``--band``), keeping each particle's distinct pose
hypotheses (``--hypotheses``, at least one global step apart) and their posteriors under the
ls score (:func:`multirefine.refine.layers.hypothesis_weights`). Printed per model: the median
posterior of the best hypothesis, the share of particles whose best holds over 0.9, the
share whose hypotheses more than 100 degrees from the best hold over 0.1 together (a turned
frame or hand the data cannot rule out), and the best pose's agreement with the run's final
pose. With ``--set`` (a simulated set: ``gt_NN.mrc``), each map's FSC 0.5 against the truth
beside its claim, so the signal can be read against what it should predict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from multirefine.evaluate import map_resolution_against
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

FAR_DEG = 100.0


def _claim(folder: Path) -> float:
    rows = json.loads((folder / "convergence.json").read_text())
    rows = rows if isinstance(rows, list) else rows["iterations"]
    return float(rows[-1]["resolution_0143_angstrom"])


def ambiguity(folder: Path, n: int, hypotheses: int, band_res: float | None, seed: int = 0,
              volume_path: Path | None = None) -> dict:
    """The search's distinct hypotheses for ``n`` of a model's particles against its final map."""
    particles = open_particles(folder / "particles_final.star")
    volume, apix = read_map(volume_path or folder / "threed_final.mrc")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(particles.metadata), min(n, len(particles.metadata)), replace=False))
    stack = particles.subset(rows)
    meta = stack.metadata
    final = euler_to_matrix(meta["rlnAngleRot"], meta["rlnAngleTilt"], meta["rlnAnglePsi"])
    batch = load_batch(stack, np.arange(len(rows)), center=True)
    band_res = band_res or _claim(folder)
    plan = plan_search(stack.box_size, apix, band_res, particle_radius_px(volume), 5, ["C1"], 5.0)
    band = lowpass_volume(torch.from_numpy(volume), plan.band_resolution_angstrom, apix)
    scale = reference_scales(stack, plan, band[None], 500)
    volume_ft = prepare_volume_ft(band * float(scale[0]))[None]
    found = plan.search(batch.images_ft, batch.ctf, plan.references(volume_ft), volume_ft, "ls",
                        hypotheses=hypotheses)
    rotations, scores = found.rotations.double().numpy(), found.score.numpy()
    weights = hypothesis_weights(scores, plan.band.power(batch.images_ft).numpy(), float(plan.band.weight.sum()))
    apart = np.stack([rotation_change_deg(rotations[:, 0], rotations[:, j], np.eye(3)[None])
                      for j in range(rotations.shape[1])], 1)
    far = np.where(np.isfinite(scores) & (apart > FAR_DEG), weights, 0.0).sum(1)
    agree = rotation_change_deg(final, rotations[:, 0], np.eye(3)[None])
    return {"band": plan.band_resolution_angstrom, "best_median": float(np.median(weights[:, 0])),
            "best_over_09": float(np.mean(weights[:, 0] > 0.9)), "far_over_01": float(np.mean(far > 0.1)),
            "far_mean": float(far.mean()), "agree_median": float(np.median(agree)), "n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--hypotheses", type=int, default=5)
    parser.add_argument("--band", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", type=Path, default=None)
    parser.add_argument("--truth", action="store_true", help="search against the true map (--set) it matches best instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truths = sorted(args.set.glob("gt_*.mrc")) if args.set else []
    for folder in sorted(args.run.glob("model_*")):
        if not (folder / "threed_final.mrc").exists():
            continue
        true, matched = "", None
        if truths:
            volume, apix = read_map(folder / "threed_final.mrc")
            at_05, matched = min((map_resolution_against(volume, read_map(t)[0], apix)[0], t) for t in truths)
            true = f"; true {at_05:.1f} Å (FSC 0.5)" + (f", searched against {matched.name}" if args.truth else "")
        a = ambiguity(folder, args.n, args.hypotheses, args.band, volume_path=matched if args.truth else None)
        print(f"{args.run.name} {folder.name}: claims {_claim(folder):.1f} Å{true}; band {a['band']:.1f} Å, "
              f"{a['n']} particles: best hypothesis's posterior median {a['best_median']:.2f}, over 0.9 for "
              f"{100 * a['best_over_09']:.0f} %; hypotheses > {FAR_DEG:g}° away hold > 0.1 for "
              f"{100 * a['far_over_01']:.0f} % (mean weight {a['far_mean']:.2f}); best pose vs the run's: "
              f"median {a['agree_median']:.1f}°", flush=True)


if __name__ == "__main__":
    main()
