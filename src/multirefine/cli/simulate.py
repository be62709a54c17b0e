"""Simulate a particle stack with ground truth from maps or atomic models.

Particles get uniform random orientations, random shifts, an astigmatic CTF (defocus
1-2.5 um, 300 kV, Cs 2.7 mm, Q 0.1) and white noise at --snr (mean variance of the clean
images / noise variance). Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1, CTF
only: what a user would have), OUT/truth.star (plus rlnClassNumber, angles and origins),
OUT/gt_NN.mrc (the true map of class NN) and OUT/simulation.json.

What real stacks have besides is off unless asked for (--bfactor, --noise-spectrum,
--contrast-sd, --background-sd, --ramp-sd, --junk, a wider --defocus); truth.star then also
has the mr* columns of what was drawn per particle, and junk has rlnClassNumber 0.

examples:
  multirefine simulate sim --pdb adk_open.pdb,adk_closed.pdb --n 2000 --snr 0.1
  multirefine simulate sim --pdb complex.pdb,complex.pdb:AB --n 5000 --snr 0.05 --fractions 0.6,0.4
  multirefine simulate sim --maps a.mrc,b.mrc --n 1000 --snr 0.1
  multirefine simulate hard --maps a.mrc,b.mrc --n 5000 --snr 0.05 --bfactor 80 \\
      --noise-spectrum falloff:30,0.3 --contrast-sd 0.2 --background-sd 1 --ramp-sd 1 \\
      --junk 0.15 --defocus 0.5,3.5
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from multirefine.errors import InputError
from multirefine.io.columns import MAX_PIXEL_SIZE_ANGSTROM
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
    real = parser.add_argument_group("realism (each off by default)")
    real.add_argument("--bfactor", type=float, default=0.0,
                      help="B-factor envelope exp(-B k^2/4) on the signal's amplitude, Å^2 (default 0)")
    real.add_argument("--noise-spectrum", default="white",
                      help="noise power spectrum: white (default); falloff:CORNER_A,FLOOR[,EXPONENT] "
                           "= 1/(1+(k*CORNER)^EXPONENT)+FLOOR, k in 1/Å, EXPONENT 1 by default; or a text "
                           "file with the power per shell (one column: shells 0,1,2.. of this box) or "
                           "frequency in 1/Å and power (two columns). The SNR sets the overall level")
    real.add_argument("--contrast-sd", type=float, default=0.0,
                      help="SD of each particle's contrast factor (mean 1, gamma-distributed; default 0)")
    real.add_argument("--background-sd", type=float, default=0.0,
                      help="SD of each image's background offset, in noise SDs (default 0)")
    real.add_argument("--ramp-sd", type=float, default=0.0,
                      help="SD of each image's background ramp along x and along y, in noise SDs "
                           "across the box (default 0)")
    real.add_argument("--junk", type=float, default=0.0,
                      help="fraction of junk images, rlnClassNumber 0 in truth.star (default 0); "
                           "--fractions apply to the rest")
    real.add_argument("--junk-mix", default="1,1,1",
                      help="relative shares of empty boxes, blob aggregates and broken particles "
                           "in the junk (default 1,1,1)")
    real.add_argument("--defocus", help="defocus range MIN,MAX in µm (default 1,2.5)")
    real.add_argument("--beamtilt", help="beam tilt X,Y in mrad (rlnBeamTiltX/Y in data_optics; default none)")
    real.add_argument("--odd-zernike", help="odd Zernike coefficients, comma-separated, in RELION's order "
                                            "(rlnOddZernike; default none)")
    real.add_argument("--even-zernike", help="even Zernike coefficients, comma-separated, in RELION's order "
                                             "(rlnEvenZernike; default none)")


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


BYTES_PER_PARTICLE = 1024  # the truth table's row and what simulating a batch holds, generously


def _check_memory(n: int) -> None:
    from multirefine.cli.machine import available_memory_bytes

    available = available_memory_bytes()
    if available is not None and n * BYTES_PER_PARTICLE > available[0]:
        raise InputError(f"--n {n}: about {n * BYTES_PER_PARTICLE / 2**30:.0f} GiB for the particles' table, more "
                         f"than {available[1]} ({available[0] / 2**30:.1f} GiB)")


def main(args: argparse.Namespace) -> int:
    from multirefine.simulate import JUNK_KINDS, SimulationParameters, simulate_dataset

    if args.n <= 0:
        raise InputError(f"--n {args.n}: expected a positive number of particles")
    if args.apix is not None and not (math.isfinite(args.apix) and 0 < args.apix <= MAX_PIXEL_SIZE_ANGSTROM):
        raise InputError(f"--apix {args.apix}: expected a positive number of Å per pixel, up to "
                         f"{MAX_PIXEL_SIZE_ANGSTROM:g}")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: expected 0 or more")
    if args.maps and ("box" in args.given or "res" in args.given):
        raise InputError("--box and --res make maps from --pdb; with --maps the maps' own box and resolution are used")
    if args.pdb and not (8 <= args.box <= 1024 and (args.res is None or math.isfinite(args.res) and args.res > 0)):
        raise InputError(f"--box {args.box} --res {args.res}: expected a box of 8 to 1024 px and a resolution in Å")
    if args.pdb:
        specs = args.pdb.split(",")
        apix = 1.5 if args.apix is None else args.apix
        maps = _maps_from_pdb(specs, args.box, apix, args.res or 2 * apix)
    else:
        maps, apix = _maps_from_files(args.maps.split(","), args.apix)
    fractions = _floats(args.fractions, "--fractions") if args.fractions else [1.0] * len(maps)
    if len(fractions) != len(maps) or min(fractions) < 0 or sum(fractions) <= 0:
        raise InputError(f"--fractions {args.fractions}: expected {len(maps)} non-negative numbers")
    junk_mix = _floats(args.junk_mix, "--junk-mix")
    if len(junk_mix) != len(JUNK_KINDS):
        kinds = ", ".join(JUNK_KINDS)
        raise InputError(f"--junk-mix {args.junk_mix}: expected {len(JUNK_KINDS)} shares ({kinds})")
    box = maps[0].shape[-1]
    if not 0 <= args.max_shift < box / 2:
        raise InputError(f"--max-shift {args.max_shift:g}: expected 0 or more, under half the box ({box} px)")
    _check_memory(args.n)
    defocus = {}
    if args.defocus is not None:
        values = _floats(args.defocus, "--defocus")
        if len(values) != 2:
            raise InputError(f"--defocus {args.defocus}: expected MIN,MAX in µm")
        defocus = {"defocus_min_angstrom": values[0] * 1e4, "defocus_max_angstrom": values[1] * 1e4}
    params = SimulationParameters(
        n_particles=args.n,
        snr=args.snr,
        fractions=fractions,
        pixel_size_angstrom=apix,
        seed=args.seed,
        max_shift_px=args.max_shift,
        bfactor_angstrom2=args.bfactor,
        noise_spectrum=args.noise_spectrum,
        contrast_sd=args.contrast_sd,
        background_sd_noise_sigmas=args.background_sd,
        ramp_sd_noise_sigmas_per_box=args.ramp_sd,
        junk_fraction=args.junk,
        junk_kind_weights=dict(zip(JUNK_KINDS, junk_mix, strict=True)),
        beam_tilt_mrad=_floats(args.beamtilt, "--beamtilt") if args.beamtilt else [0.0, 0.0],
        odd_zernike=_floats(args.odd_zernike, "--odd-zernike") if args.odd_zernike else [],
        even_zernike=_floats(args.even_zernike, "--even-zernike") if args.even_zernike else [],
        **defocus,
    )
    out = Path(args.out)
    created = not out.exists()
    try:
        with progress_bar(args.n, "simulating particles") as advance:
            truth = simulate_dataset(out, maps, params, progress=advance)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the folder this command made, left empty by its failure
        raise
    counts = truth["rlnClassNumber"].value_counts().sort_index()
    print(
        f"wrote {len(truth)} particles "
        f"({', '.join(f'class {k}: {v}' if k else f'junk: {v}' for k, v in counts.items())}), "
        f"box {maps[0].shape[-1]}, {apix:g} Å/px, SNR {args.snr:g} to {args.out}/"
    )
    return 0
