"""Choosing K (``--nmodels auto``): simulated sets of 1, 2, 3 and 4 states of one molecule.

    python bench/count_models.py make ROOT [--n 2000] [--snr 0.1] [--seeds 0,1,2]
    python bench/count_models.py count ROOT/SET [--kmax 6] [--threads 1]
    python bench/count_models.py table ROOT
    python bench/count_models.py score RUN SET

The states are bench/focused.py's maps of the progesterone receptor LBD dimer (1a28, box 48,
2.4 Å/px, CTF): the whole dimer; its core (less the subunit, 10 % of the atoms, and the
distractor, 25 %); the core with the distractor; the core with the subunit. A set of K
states holds the first K of them in equal parts (``kK_sS``, simulation seed S), with
``consensus_lp20.mrc`` (every particle at its true pose, low-passed to 20 Å: the one starting
map) and ``limits.json``: the K-way accuracy at the true poses against the true maps (each
particle to the map of highest likelihood), what the data allow.

``count`` runs what ``--nmodels auto`` runs before the multi-model iterations
(:func:`multirefine.refine.driver.count_models`) and writes ``SET/count.json``: the K chosen,
the reason, each step's gain per particle, the seconds, and the accuracy of the grown
assignment against the truth (the models matched to the true classes by the Hungarian method,
extra models counting as wrong). ``table`` prints every set's. ``score`` gives a whole run's
(``multirefine refine``, e.g. ``--nmodels auto``) last assignment the same accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from focused import APIX, state_maps, true_pose_log_likelihoods, write_start_map

from multirefine.simulate import SimulationParameters, simulate_dataset

ORDER = [3, 0, 2, 1]  # whole dimer, core, core + distractor, core + subunit


def make(root: Path, n: int, snr: float, seeds: list[int]) -> None:
    maps = state_maps()
    for k in (1, 2, 3, 4):
        for seed in seeds:
            out = root / f"k{k}_s{seed}"
            simulate_dataset(out, [maps[i] for i in ORDER[:k]],
                             SimulationParameters(n_particles=n, snr=snr, fractions=[1 / k] * k,
                                                  pixel_size_angstrom=APIX, seed=seed))
            write_start_map(out)
            limit = 1.0
            if k > 1:
                ll = true_pose_log_likelihoods(out).numpy()
                truth = _truth(out)
                limit = float(np.mean(ll.argmax(1) + 1 == truth))
            (out / "limits.json").write_text(json.dumps({"states": k, "true_pose_limit": limit}, indent=2) + "\n")
            print(f"{out}: {n} particles, {k} states, SNR {snr}, true-pose limit {100 * limit:.1f} %")


def _truth(out: Path) -> np.ndarray:
    from multirefine.io.star import read_particles_star

    return read_particles_star(out / "truth.star").metadata["rlnClassNumber"].to_numpy()


def count(set_dir: Path, kmax: int, threads: int) -> dict:
    import torch

    from multirefine.io.maps import read_map
    from multirefine.io.particles import open_particles
    from multirefine.refine.driver import count_models
    from multirefine.refine.options import RefineOptions

    torch.set_num_threads(threads)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stack = open_particles(set_dir / "particles.star")
    start_map = read_map(set_dir / "consensus_lp20.mrc")[0]
    opts = RefineOptions(input=str(set_dir / "particles.star"), path=str(set_dir / "unused"), symmetries=["c1"],
                         kmax=kmax)
    started = time.perf_counter()
    result = count_models(opts, stack, stack, start_map)
    seconds = time.perf_counter() - started
    truth = _truth(set_dir)
    model = result.classified.model
    accuracy = matched_accuracy(truth, model + 1)
    errors = _pose_errors_deg(set_dir, result.classified.found.model_rotations[:, 0])
    confusion = np.zeros((truth.max(), model.max() + 1), int)
    np.add.at(confusion, (truth - 1, model), 1)
    record = {**result.to_json(), "seconds": seconds, "accuracy": accuracy,
              "states": json.loads((set_dir / "limits.json").read_text()),
              "confusion_true_by_model": confusion.tolist(),
              "median_pose_error_deg_per_model": [float(np.median(errors[model == m])) if (model == m).any() else None
                                                  for m in range(model.max() + 1)],
              "fraction_poses_off_20_deg_per_model": [float(np.mean(errors[model == m] > 20)) if (model == m).any()
                                                      else None for m in range(model.max() + 1)]}
    (set_dir / "count.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _pose_errors_deg(set_dir: Path, rotations: np.ndarray) -> np.ndarray:
    """Angle between each particle's pose (the counted poses, ``(n, 3, 3)``) and its true one
    (the start map was made at the true poses: one frame)."""
    import torch

    from multirefine.io.star import read_particles_star
    from multirefine.refine.batch import rotations_for_rows

    true = rotations_for_rows(read_particles_star(set_dir / "truth.star").metadata).double()
    relative = torch.as_tensor(rotations, dtype=torch.float64) @ true.transpose(-1, -2)
    cosine = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.arccos(cosine).numpy())


def matched_accuracy(truth: np.ndarray, assigned: np.ndarray) -> float:
    """The fraction of particles in their true class, models matched one to one to true
    classes (Hungarian) on the confusion matrix; unmatched models and classes count as wrong."""
    from scipy.optimize import linear_sum_assignment

    confusion = np.zeros((truth.max(), assigned.max()))
    np.add.at(confusion, (truth - 1, assigned - 1), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / len(truth))


def table(root: Path) -> None:
    print("| set | states | true-pose limit | K chosen | gains per particle (K=2, 3, ...) | accuracy | seconds |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(root.glob("k*_s*/count.json")):
        r = json.loads(path.read_text())
        gains = ", ".join(("-" if s["gain_per_particle"] is None else f"{s['gain_per_particle']:+.3f}")
                          + ("" if s["kept"] else " (refused)") for s in r["steps"][1:])
        print(f"| {path.parent.name} | {r['states']['states']} | {100 * r['states']['true_pose_limit']:.1f} % | "
              f"{r['chosen']} | {gains} | {100 * r['accuracy']:.1f} % | {r['seconds']:.0f} |")


def score(run: Path, set_dir: Path) -> dict:
    from score_realistic import last_iteration

    from multirefine.io.star import read_particles_star

    iteration = last_iteration(run)
    classes = read_particles_star(run / f"particles_{iteration:02d}.star").metadata["rlnClassNumber"].to_numpy()
    counted = run / "nmodels.json"
    return {"run": str(run), "iteration": iteration, "models": int(classes.max()),
            "counted": json.loads(counted.read_text())["chosen"] if counted.exists() else None,
            "accuracy": matched_accuracy(_truth(set_dir), classes)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("root", type=Path)
    m.add_argument("--n", type=int, default=2000)
    m.add_argument("--snr", type=float, default=0.1)
    m.add_argument("--seeds", default="0,1,2")
    c = sub.add_parser("count")
    c.add_argument("set", type=Path)
    c.add_argument("--kmax", type=int, default=6)
    c.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("root", type=Path)
    r = sub.add_parser("score")
    r.add_argument("run", type=Path)
    r.add_argument("set", type=Path)
    args = p.parse_args(argv)
    if args.command == "make":
        make(args.root, args.n, args.snr, [int(s) for s in args.seeds.split(",")])
    elif args.command == "count":
        r = count(args.set, args.kmax, args.threads)
        print(json.dumps({k: v for k, v in r.items() if k != "steps"}), "\n", *r["steps"], sep="\n")
    elif args.command == "score":
        print(json.dumps(score(args.run, args.set)))
    else:
        table(args.root)


if __name__ == "__main__":
    main()
