"""The global search pass: Cartesian references (every in-plane angle a reference) against the
polar grid (every in-plane angle from one FFT), same particles, maps, shifts and steps.

    python bench/bench_search.py [--particles 500] [--box 64]

Prints, per (band, step), the seconds of each pass and their ratio. Random maps and images:
the cost does not depend on the content.
"""

import argparse
import time

import numpy as np
import torch

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.geometry.grids import orientation_grid, projection_directions
from multirefine.refine.polar import make_polar_grid, make_polar_references, search_global_polar
from multirefine.refine.scoring import shift_grid
from multirefine.refine.search import make_references, search_global


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--models", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    box, n = args.box, args.particles
    volumes_ft = prepare_volume_ft(torch.randn(args.models, box, box, box))
    images = torch.randn(n, box, box // 2 + 1, dtype=torch.complex64)
    ctf = torch.rand(n, box, box // 2 + 1)
    shifts = shift_grid(5.0, 2.0)
    print(f"{n} particles, box {box}, {args.models} models, {len(shifts)} shifts, {torch.get_num_threads()} threads")
    # The driver's global passes on the benchmark sets: 8.5 Å at 1.5 Å/px, then 4.4 Å.
    for band, step in ((11.0, 8.3), (22.0, 7.5)):
        poses = torch.as_tensor(euler_to_matrix(*orientation_grid(step)), dtype=torch.float32)
        rot, tilt = projection_directions(step)
        directions = torch.as_tensor(euler_to_matrix(rot, tilt, np.zeros_like(rot)), dtype=torch.float32)
        grid = make_polar_grid(box, band, step)
        started = time.perf_counter()
        cartesian = make_references(volumes_ft, poses, band)
        search_global(images, ctf, cartesian, shifts, score="ls", top=2)
        middle = time.perf_counter()
        polar = make_polar_references(volumes_ft, directions, grid)
        search_global_polar(images, ctf, polar, shifts, score="ls", top=2)
        done = time.perf_counter()
        print(
            f"band {band:.0f} px, step {step}°: {len(poses)} Cartesian poses {middle - started:.2f} s; "
            f"{len(directions)} directions x {grid.n_inplane} in-plane polar {done - middle:.2f} s; "
            f"ratio {(middle - started) / (done - middle):.1f}"
        )


if __name__ == "__main__":
    main()
