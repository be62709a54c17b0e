"""Make a soft solvent mask from a map, for `refine --mask` (relion_mask_create's recipe).

The map (optionally low-passed first) is thresholded, the region grown by --extend px and
given a raised-cosine edge of --soft px. The threshold is --threshold, or the one that
encloses --mass kDa of protein (0.83 Da/Å³, as refine's --mass). The mask is written with
the map's voxel size; it is refused where it would hold nothing (a threshold too high), and
a warning says where it reaches the box's edge (a threshold too low, or a tight box).

examples:
  multirefine mask consensus.mrc -o mask.mrc --mass 120 --lowpass 15
  multirefine mask run/threed_10_01.mrc -o mask_01.mrc --threshold 0.02 --extend 4 --soft 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multirefine.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", help="the map (MRC) to make the mask from")
    parser.add_argument("-o", "--output", required=True, help="the mask (MRC) to write; must not exist")
    level = parser.add_mutually_exclusive_group(required=True)
    level.add_argument("--threshold", type=float, help="density above which a voxel is the molecule")
    level.add_argument("--mass", type=float, help="kDa: the threshold enclosing this mass of protein")
    parser.add_argument("--lowpass", type=float, default=0.0, metavar="A",
                        help="low-pass the map to this resolution (Å) before thresholding (default 0: not)")
    parser.add_argument("--extend", type=float, default=3.0, metavar="PX", help="grow the region by PX (default 3)")
    parser.add_argument("--soft", type=float, default=6.0, metavar="PX",
                        help="raised-cosine edge width, PX (default 6)")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from multirefine.fourier.filters import lowpass_volume
    from multirefine.fourier.masks import mask_from_map
    from multirefine.io.maps import read_map, write_map
    from multirefine.refine.postprocess import mass_threshold

    out = Path(args.output)
    if out.exists():
        raise InputError(f"{out}: exists; nothing was written (give another -o)")
    for name in ("extend", "soft", "lowpass"):
        value = getattr(args, name)
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"--{name} {value}: expected 0 or more")
    volume, voxel = read_map(args.map)  # (a map with NaN or Inf voxels is refused there)
    apix = voxel or 1.0
    density = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if args.lowpass > 0:
        density = lowpass_volume(density, args.lowpass, apix)
    if args.threshold is not None:
        threshold = args.threshold
    else:
        try:
            threshold = mass_threshold(density.numpy(), args.mass, apix)
        except ValueError as error:
            raise InputError(f"--mass {args.mass:g}: {error}") from None
    mask = mask_from_map(density, threshold, args.extend, args.soft)
    if not float(mask.max()) > 0:
        raise InputError(f"{args.map}: no voxel above the threshold {threshold:g}; nothing to mask")
    box = mask.shape[-1]
    edge = torch.cat([mask[0].flatten(), mask[-1].flatten(), mask[:, 0].flatten(), mask[:, -1].flatten(),
                      mask[:, :, 0].flatten(), mask[:, :, -1].flatten()])
    if float(edge.max()) > 0:
        print(f"warning: the mask reaches the box's edge ({box} px) and is cut there; a higher threshold or a smaller "
              "--extend/--soft keeps it within")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_map(out, mask.numpy(), apix)
    print(f"{out}: threshold {threshold:g}, {int((mask > 0.99).sum())} voxels at 1, {int((mask > 0).sum())} above 0 "
          f"of {mask.numel()}, {apix:g} Å/px")
    return 0
