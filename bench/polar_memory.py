"""Peak memory and time of the polar global pass for one batch, at one band.

One batch of random images (``--n``, box ``--box``) against K = 2 random maps' polar
references, as an iteration at ``--res`` Å plans it (plan_search: directions, in-plane
angles, shifts), in a fresh process per run so that each peak is its own:

    python bench/polar_memory.py [--res 4] [--n 500] [--box 64] [--apix 1.5] [--chunk N]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.refine.plan import plan_search
from multirefine.refine.polar import search_global_polar
from multirefine.refine.scoring import DEFAULT_MAX_ELEMENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=float, default=4.0)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--apix", type=float, default=1.5)
    parser.add_argument("--chunk", type=int, default=DEFAULT_MAX_ELEMENTS)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    plan = plan_search(args.box, args.apix, args.res, args.box / 3, 5, ["C1", "C1"], 5.0)
    volumes_ft = prepare_volume_ft(torch.randn((2, args.box, args.box, args.box), generator=generator))
    references = plan.references(volumes_ft)
    images_ft = torch.fft.rfft2(torch.randn((args.n, args.box, args.box), generator=generator))
    ctf = torch.ones(images_ft.shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    search_global_polar(images_ft, ctf, references, plan.coarse_shifts_px, score="ls", top=3, max_elements=args.chunk)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grid = plan.polar_grid
    print(f"{args.res:g} Å, {args.n} particles, {len(plan.coarse_shifts_px)} shifts, polar {tuple(grid.kx.shape)}, "
          f"{[len(d) for d in plan.directions]} directions, chunk {args.chunk}: {seconds:.2f} s, "
          f"peak {peak:.0f} MiB ({peak - before:.0f} MiB above the set-up)")


if __name__ == "__main__":
    main()
