"""Reconstruct a map from particles with known poses (like relion_reconstruct --ctf).

Reads the poses (rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst) and CTF of every particle,
inserts the CTF-weighted images into a Fourier accumulator and writes the Wiener
reconstruction. With --class only that rlnClassNumber is used; --compare prints the FSC
against a known map and the resolution at FSC 0.5 and 0.143.

example:
  multirefine reconstruct sim/truth.star --class 1 -o class1.mrc --compare sim/gt_01.mrc
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from multirefine.errors import InputError
from multirefine.progress import progress_bar


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="particles with poses: RELION STAR, cryoSPARC .cs, EMAN2 .lst/.hdf")
    parser.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    parser.add_argument("--class", dest="class_number", type=int, help="only particles of this rlnClassNumber")
    parser.add_argument("--sym", default="c1", help="point-group symmetry to impose (default c1)")
    parser.add_argument("--apix", type=float, help="pixel size in Å (overrides the file)")
    parser.add_argument("--no-ctf", action="store_true", help="insert the images without CTF correction (phase-"
                        "flipped already, or made without a CTF); needed where the particles have no CTF parameters")
    parser.add_argument("--compare", help="a map to compute the FSC against (e.g. the ground truth)")
    parser.add_argument("--batch", type=int, default=256, help="particles per batch")


def main(args: argparse.Namespace) -> int:
    import torch

    from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
    from multirefine.geometry.symmetry import symmetry_operators
    from multirefine.io.columns import optics_note
    from multirefine.io.maps import read_map, write_map
    from multirefine.io.particles import open_particles, use_ctf
    from multirefine.refine.reconstruct import reconstruct_from_stack

    if args.batch < 1:
        raise InputError(f"--batch {args.batch}: expected 1 or more particles per batch")
    output = Path(args.output)
    if output.is_dir() or not output.absolute().parent.is_dir():  # said now, not after the work
        raise InputError(f"-o {output}: " + ("a folder; give a file name" if output.is_dir()
                                             else f"no folder {output.absolute().parent} to write it in"))
    if not os.access(output.absolute().parent, os.W_OK | os.X_OK):  # read-only: said now too
        raise InputError(f"-o {output}: the folder {output.absolute().parent} cannot be written")
    operators = symmetry_operators(args.sym)
    stack = open_particles(args.input, apix=args.apix)
    use_ctf(stack, args.no_ctf)
    missing = [c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if c not in stack.metadata.columns]
    if missing:
        raise InputError(f"{args.input}: no {', '.join(missing)}; reconstruct needs each particle's pose")
    rows = np.arange(len(stack))
    if args.class_number is not None:
        if "rlnClassNumber" not in stack.metadata.columns:
            raise InputError(f"{args.input}: --class given but the file has no rlnClassNumber")
        rows = np.nonzero(stack.metadata["rlnClassNumber"].to_numpy() == args.class_number)[0]
        if len(rows) == 0:
            raise InputError(f"{args.input}: no particle has rlnClassNumber {args.class_number}")
    if stack.has_ctf and (note := optics_note(stack.metadata)):
        print(note)
    compare = read_map(args.compare)[0] if args.compare else None
    if compare is not None and compare.shape[-1] != stack.box_size:
        raise InputError(f"{args.compare}: box {compare.shape[-1]} differs from the particles' {stack.box_size}")
    with progress_bar(len(rows), "inserting") as advance:
        volume = reconstruct_from_stack(stack, rows, operators, args.batch, progress=advance).full_map
    write_map(Path(args.output), volume, stack.pixel_size_angstrom)
    print(f"wrote {args.output} from {len(rows)} particles ({stack.box_size} px, {stack.pixel_size_angstrom:g} Å/px)")
    if compare is not None:
        fsc = fourier_shell_correlation(torch.from_numpy(volume), torch.from_numpy(compare)).numpy()
        apix = stack.pixel_size_angstrom
        print(
            f"FSC against {args.compare}: "
            f"{resolution_at_threshold(fsc, apix, 0.5):.2f} Å at 0.5, "
            f"{resolution_at_threshold(fsc, apix, 0.143):.2f} Å at 0.143"
        )
    return 0
