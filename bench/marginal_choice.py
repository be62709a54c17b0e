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
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realistic import _background

from multirefine.fourier.fft import frequency_grid_2d, rfft2_centered
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.io.maps import read_map
from multirefine.io.particles import open_particles
from multirefine.refine import polar as P
from multirefine.refine.batch import load_batch
from multirefine.refine.plan import plan_search
from multirefine.refine.seeding import particle_radius_px

set_dir = Path(sys.argv[1]); band_a = float(sys.argv[2]); maps_from = sys.argv[3]; variant = sys.argv[4]
nsamp = int(sys.argv[5]) if len(sys.argv) > 5 else 500
torch.set_num_threads(2)
sim = json.loads((set_dir / "simulation.json").read_text())
stack = open_particles(set_dir / "truth.star"); meta = stack.metadata
box = stack.box_size; apix = stack.pixel_size_angstrom
real = np.nonzero(meta["rlnClassNumber"].to_numpy() > 0)[0]
sample = real[np.unique(np.linspace(0, len(real) - 1, min(nsamp, len(real))).round().astype(np.int64))]
k = len(sim["fractions"])
names = [f"gt_{i:02d}.mrc" if maps_from == "gt" else f"lp30_{i}.mrc" for i in range(1, k + 1)]
maps = torch.stack([torch.from_numpy(read_map(set_dir / n)[0]) for n in names])
radius = max(particle_radius_px(m.numpy()) for m in maps)
plan = plan_search(box, apix, band_a, radius, int(sys.argv[6]) if len(sys.argv) > 6 else 5, ["c1"] * k, 5.0); print("coarse", plan.coarse_step_deg)
kx, ky = frequency_grid_2d(box, dtype=torch.float64)
shells = np.asarray(sim.get("noise_power_per_shell", [1.0]*box), dtype=np.float64)
sigma = torch.from_numpy(np.sqrt(np.interp(torch.sqrt(kx**2 + ky**2).numpy(), np.arange(len(shells)), shells))).float()
enveloped = meta.copy()
enveloped["rlnCtfBfactor"] = enveloped.get("rlnCtfBfactor", 0.0) + sim.get("bfactor_angstrom2", 0.0)
env_stack = stack.with_metadata(enveloped)
truth = meta["rlnClassNumber"].to_numpy()[sample]
limits = json.loads((set_dir / "limits.json").read_text())
scale = 1.0 / sim["noise_sigma"] if variant == "bayes" else limits["ls_white_scale"]
volumes_ft = prepare_volume_ft(maps * scale)
refs = plan.references(volumes_ft)
grid = refs.grid
npix = float((grid.weight[:, None].expand(grid.kx.shape)).sum())
best_choice, marg_choice, marg_shift_choice, refined_choice, topk_choice = [], [], [], [], []
for start in range(0, len(sample), 100):
    idx = sample[start:start + 100]; rows = meta.iloc[idx]
    if variant == "bayes":
        batch = load_batch(env_stack, idx, center=False)
        x = batch.images_ft
        if "mrBackgroundOffset" in meta.columns:
            x = x - rfft2_centered(_background(rows, box))
        contrast = rows["mrContrastScale"].to_numpy(dtype=np.float64, copy=True) if "mrContrastScale" in rows.columns else np.ones(len(idx))
        c = batch.ctf * torch.from_numpy(contrast).float()[:, None, None] / sigma
        x = x / sigma
    else:
        batch = load_batch(stack, idx, center=False); x, c = batch.images_ft, batch.ctf
    parts = P._polar_particles(x, c, refs, plan.coarse_shifts_px)
    n, S = parts.n, parts.n_shifts
    n_psi = grid.n_inplane; h = n_psi // 2 + 1; n_t = refs.spectra.shape[-1]; norm = n_psi / n_t
    beta = (2.0 / (parts.x_power / npix))  # (n,)
    best = torch.full((n, k), -math.inf); lse = torch.full((n, k), -math.inf); lse_s = torch.full((n, k), -math.inf)
    for m in range(k):
        J = refs.counts[m]
        r = refs.spectra[m, :J, :, :h].permute(2, 1, 0).conj()
        cross = torch.fft.irfft(torch.bmm(parts.a, r).permute(1, 2, 0), n=n_psi, dim=-1).reshape(S, n, -1) * norm
        pw = refs.power_spectra[m, :J, :, :h].permute(2, 1, 0).conj()
        refpower = torch.fft.irfft(torch.bmm(parts.b, pw).permute(1, 2, 0), n=n_psi, dim=-1).reshape(n, -1) * norm
        s = cross - 0.5 * refpower[None]  # (S, n, JT)
        ll = s * beta[None, :, None]
        best[:, m] = s.amax((0, 2))
        lse[:, m] = ll.amax(0).logsumexp(-1) - math.log(ll.shape[-1])
        lse_s[:, m] = ll.permute(1, 0, 2).reshape(n, -1).logsumexp(-1) - math.log(S * ll.shape[-1])
    best_choice.append(best.argmax(1).numpy() + 1); marg_choice.append(lse.argmax(1).numpy() + 1)
    marg_shift_choice.append(lse_s.argmax(1).numpy() + 1)
    found = plan.search(x, c, refs, volumes_ft, score="ls")
    refined_choice.append(found.model[:, 0].numpy() + 1)
acc = lambda c: float((np.concatenate(c) == truth).mean())
print(json.dumps({"set": set_dir.name, "band": band_a, "maps": maps_from, "variant": variant, "n": len(sample),
                      "global_best": acc(best_choice), "refined_best": acc(refined_choice),
                      "marginal_poses": acc(marg_choice), "marginal_poses_shifts": acc(marg_shift_choice)}))
