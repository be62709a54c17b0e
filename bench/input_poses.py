"""A consensus refinement's STAR file as a stand-in: a set's true poses turned and shifted by random errors.

    python bench/input_poses.py SET_FOLDER OUT.star [--sd-deg 6] [--shift-sd-px 0.5] [--seed 0]

Reads ``SET_FOLDER/truth.star`` (bench/realistic.py, ``multirefine simulate``) and writes its
particles with no class, each pose turned about a random axis by an angle whose rotation
vector has SD ``--sd-deg`` per axis (median angle about 1.5 x that) and each origin moved by
``--shift-sd-px`` per axis: what local searches (``multirefine refine`` with input poses,
``--sigma_ang``) start from when a consensus refinement found the poses to that precision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from multirefine.geometry.conversions import axis_angle_to_matrix
from multirefine.geometry.euler import euler_to_matrix, matrix_to_euler
from multirefine.io.star import read_particles_star, write_particles_star


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set_folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--sd-deg", type=float, default=6.0)
    p.add_argument("--shift-sd-px", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    star = read_particles_star(args.set_folder / "truth.star")
    table = star.metadata.drop(columns=["rlnClassNumber"])
    rng = np.random.default_rng(args.seed)
    n = len(table)
    true = np.asarray(euler_to_matrix(*(table[c].to_numpy(dtype=np.float64)
                                        for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))))
    rotvec = np.radians(args.sd_deg) * rng.normal(size=(n, 3))
    turn = axis_angle_to_matrix(rotvec)
    rot, tilt, psi = matrix_to_euler(turn @ true)
    table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = rot, tilt, psi
    apix = float(table["rlnImagePixelSize"].iloc[0])
    for axis in ("X", "Y"):
        table[f"rlnOrigin{axis}Angst"] += rng.normal(scale=args.shift_sd_px * apix, size=n)
    write_particles_star(args.out, table, star.optics)
    angle = np.degrees(np.linalg.norm(rotvec, axis=1))
    print(f"{args.out}: {n} particles, pose error median {np.median(angle):.1f} deg")


if __name__ == "__main__":
    main()
