"""The model choice by the best pose against the choice marginalised over every pose of the global
grid, with poses searched against the *true* maps (what a realistic set allows without input
poses; issue "Accuracy on data that look real").

    python bench/marginal_choice.py SET BAND_A gt|lp30 bayes|ls_white [N] [SPEED]

SET is a folder of bench/realistic.py. Prints the accuracy on N real particles (default 500,
evenly spaced) of: the global polar pass's best pose (``global_best``), the full search's
(``refined_best``), and the log-sum-exp of the log-likelihood ``2 ls / sigma^2`` over every
direction and in-plane angle of the grid (``marginal_poses``; also over the shifts,
``marginal_poses_shifts``), each particle to the model with the larger. ``bayes``: image and CTF
whitened by the true spectrum, the contrast and envelope in the CTF, the background removed
(as bench/realistic.py's searched-pose limit); ``ls_white``: today's score.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realistic import searched_setup

from multirefine.fourier.projection import prepare_volume_ft
from multirefine.refine import polar


def _grid_choices(x, c, refs, plan, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per particle, the model of (the best pose of the global grid, the log-sum-exp of the
    log-likelihood over its poses, over its poses and shifts)."""
    grid = refs.grid
    n_pixels = float((grid.weight[:, None].expand(grid.kx.shape)).sum())
    parts = polar._polar_particles(x, c, refs, plan.coarse_shifts_px)
    n, n_shifts = parts.n, parts.n_shifts
    n_psi = grid.n_inplane
    h, norm = n_psi // 2 + 1, n_psi / refs.spectra.shape[-1]
    beta = 2.0 / (parts.x_power / n_pixels)  # (n,): ls to log-likelihood, white noise per particle
    best, poses, poses_shifts = (torch.full((n, k), -math.inf) for _ in range(3))
    for m in range(k):
        j = refs.counts[m]
        spectra = refs.spectra[m, :j, :, :h].permute(2, 1, 0).conj()
        cross = torch.fft.irfft(torch.bmm(parts.a, spectra).permute(1, 2, 0), n=n_psi, dim=-1).reshape(n_shifts, n, -1)
        power = refs.power_spectra[m, :j, :, :h].permute(2, 1, 0).conj()
        refpower = torch.fft.irfft(torch.bmm(parts.b, power).permute(1, 2, 0), n=n_psi, dim=-1).reshape(n, -1)
        ls = (cross - 0.5 * refpower[None]) * norm  # (S, n, J T')
        ll = ls * beta[None, :, None]
        best[:, m] = ls.amax((0, 2))
        poses[:, m] = ll.amax(0).logsumexp(-1) - math.log(ll.shape[-1])
        poses_shifts[:, m] = ll.permute(1, 0, 2).reshape(n, -1).logsumexp(-1) - math.log(n_shifts * ll.shape[-1])
    return tuple(t.argmax(1).numpy() + 1 for t in (best, poses, poses_shifts))


def main(argv: list[str]) -> None:
    set_dir, band, maps_from, variant = Path(argv[0]), float(argv[1]), argv[2], argv[3]
    n_sample = int(argv[4]) if len(argv) > 4 else 500
    speed = int(argv[5]) if len(argv) > 5 else 5
    torch.set_num_threads(2)
    setup = searched_setup(set_dir, n_sample, band, maps_from, speed)
    k = len(setup.maps)
    volumes_ft = prepare_volume_ft(setup.maps * setup.scale(variant))
    refs = setup.plan.references(volumes_ft)
    chosen = {"global_best": [], "marginal_poses": [], "marginal_poses_shifts": [], "refined_best": []}
    for start in range(0, len(setup.sample), 100):
        _, x, c = setup.terms(variant, setup.sample[start : start + 100])
        for name, models in zip(("global_best", "marginal_poses", "marginal_poses_shifts"),
                                _grid_choices(x, c, refs, setup.plan, k)):
            chosen[name].append(models)
        chosen["refined_best"].append(setup.plan.search(x, c, refs, volumes_ft, score="ls").model[:, 0].numpy() + 1)
    print(json.dumps({"set": set_dir.name, "band": band, "maps": maps_from, "variant": variant, "n": len(setup.sample),
                      "coarse_step_deg": setup.plan.coarse_step_deg,
                      **{name: float((np.concatenate(v) == setup.truth).mean()) for name, v in chosen.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
