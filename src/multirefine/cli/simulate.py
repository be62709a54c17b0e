"""Simulate a particle stack with ground truth from maps or atomic models.

Particles get uniform random orientations, random shifts, an astigmatic CTF (defocus
1-2.5 um, 300 kV, Cs 2.7 mm, Q 0.1) and white noise at --snr (mean variance of the clean
images / noise variance). Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1, CTF
only: what a user would have), OUT/truth.star (plus rlnClassNumber, angles and origins),
OUT/gt_NN.mrc (the true map of class NN) and OUT/simulation.json.

examples:
  multirefine simulate sim --pdb adk_open.pdb,adk_closed.pdb --n 2000 --snr 0.1
  multirefine simulate sim --pdb complex.pdb,complex.pdb:AB --n 5000 --snr 0.05 --fractions 0.6,0.4
  multirefine simulate sim --maps a.mrc,b.mrc --n 1000 --snr 0.1
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from multirefine.errors import InputError
from multirefine.progress import progress_bar

log = logging.getLogger(__name__)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers") from None


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (created; existing files of the same names are replaced)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--maps", help="comma-separated maps, one per class (MRC or EMAN2 HDF)")
    src.add_argument("--pdb", help="comma-separated atomic models PATH[:CHAINS], one per class")
    parser.add_argument("--n", type=int, required=True, help="number of particles")
    parser.add_argument("--snr", type=float, required=True, help="signal-to-noise ratio (variance ratio)")
    parser.add_argument("--fractions", help="class fractions, comma-separated (default: equal)")
    parser.add_argument("--box", type=int, default=64, help="box size in pixels for --pdb (default 64)")
    parser.add_argument("--apix", type=float, help="pixel size in Å (--pdb default 1.5; --maps: header)")
    parser.add_argument("--res", type=float, help="resolution of maps from --pdb in Å (default 2 * apix)")
    parser.add_argument("--max-shift", type=float, default=3.0, help="largest particle shift in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def _maps_from_pdb(specs: list[str], box: int, apix: float, res: float) -> list[np.ndarray]:
    from multirefine.simulate import maps_from_models, read_atomic_model

    return maps_from_models([read_atomic_model(s) for s in specs], box, apix, res)


def _maps_from_files(paths: list[str], apix: float | None) -> tuple[list[np.ndarray], float]:
    from multirefine.io.maps import read_map

    maps, sizes = [], []
    for p in paths:
        data, voxel = read_map(p)
        maps.append(data)
        sizes.append(voxel)
    if len({m.shape for m in maps}) > 1:
        raise InputError(f"--maps {','.join(paths)}: maps differ in size {[m.shape for m in maps]}")
    if apix is None:
        apix = sizes[0]
        if not apix:
            raise InputError(f"{paths[0]}: no voxel size in the header; give --apix")
    return maps, float(apix)


def main(args: argparse.Namespace) -> int:
    from multirefine.simulate import SimulationParameters, simulate_dataset

    if args.n <= 0:
        raise InputError(f"--n {args.n}: expected a positive number of particles")
    if args.pdb:
        specs = args.pdb.split(",")
        apix = args.apix or 1.5
        maps = _maps_from_pdb(specs, args.box, apix, args.res or 2 * apix)
    else:
        maps, apix = _maps_from_files(args.maps.split(","), args.apix)
    fractions = _floats(args.fractions, "--fractions") if args.fractions else [1.0] * len(maps)
    if len(fractions) != len(maps) or min(fractions) < 0 or sum(fractions) <= 0:
        raise InputError(f"--fractions {args.fractions}: expected {len(maps)} non-negative numbers")
    params = SimulationParameters(
        n_particles=args.n,
        snr=args.snr,
        fractions=fractions,
        pixel_size_angstrom=apix,
        seed=args.seed,
        max_shift_px=args.max_shift,
    )
    with progress_bar(args.n, "simulating particles") as advance:
        truth = simulate_dataset(Path(args.out), maps, params, progress=advance)
    counts = truth["rlnClassNumber"].value_counts().sort_index()
    print(
        f"wrote {len(truth)} particles ({', '.join(f'class {k}: {v}' for k, v in counts.items())}), "
        f"box {maps[0].shape[-1]}, {apix:g} Å/px, SNR {args.snr:g} to {args.out}/"
    )
    return 0
