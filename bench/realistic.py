"""Simulated sets that look like real data, with their truth, starting maps and the
classification accuracy the data allow (issue "Accuracy on data that look real").

    python bench/realistic.py OUT_ROOT [--n 3000] [--only adk_real] [--limits-only]

Sets (adenylate kinase open vs closed, mdanalysistests adk_open.pdb / adk_closed.pdb; box 40,
2.4 Å/px, SNR 0.1 as ``multirefine simulate`` defines it, seed 0):

* ``adk_real``: B-factor 80 Å², coloured noise ``falloff:30,0.3,2`` (power
  ``1/(1+(30 k)^2) + 0.3``: 4x more noise power at low frequency than at Nyquist, the
  image-wide variance the SNR sets), contrast SD 0.2, background offset SD 0.5 and ramp SD 0.5
  (noise SDs), 15 % junk (empty boxes, aggregates, broken particles; truth class 0), defocus
  0.8-3.0 µm;
* ``adk_ideal``: the same n, seed and defocus range with none of the realism (white noise,
  no envelope, contrast, background or junk): the control.

Each ``OUT_ROOT/SET/`` holds what ``multirefine simulate`` writes (``particles.star``,
``truth.star``, ``gt_NN.mrc``, ``simulation.json``, ...) plus the starting maps, each
low-passed by a Gaussian ``exp(-k^2 / (2 s^2))`` with amplitude 1/2 at 1/30 Å:
``lp30_1.mrc``, ``lp30_2.mrc`` (the true maps) and ``consensus_lp30.mrc`` (all real
particles reconstructed at their true poses, as bench/datasets.py makes consensus maps),
and ``limits.json``.

**The true-pose limit.** Each real particle is scored against every true map at its true
pose and shift. ``bayes`` is the log-likelihood given everything the simulation drew: CTF
times the true B-factor envelope, the particle's contrast factor over the noise sigma (the
images' units), the background offset and ramp removed, and the noise spectrum of
``simulation.json`` (``noise_power_per_shell`` is E|F(k)|^2 / D^2 of the plain DFT, so a pixel
of :func:`multirefine.fourier.fft.rfft2_centered` has variance ``D^2 p(|k|)``; ``p``
interpolated linearly between shells), plus the log of the class fraction: the Bayes-optimal
classifier. ``ls_white`` is today's least-squares score at the same poses: white noise, one
intensity scale for every particle (least squares over the real particles), no envelope, no
background removal, the DC pixel left out (as the search's band). The other rows take one
ingredient away from ``bayes`` each, to show what each is worth. All scores use the whole
band to Nyquist (the engine's band is narrower in early iterations). ``residual_power`` is a
check of the units: the mean of ``|X - S_true|^2 / (D^2 p)`` over the band (1 if the model of
signal and noise is right).

**The searched-pose limit** (``--searched N``, a sample of N real particles, evenly spaced;
0 skips it): the same two scores, but the pose and shift are searched, by the engine's own
search (:meth:`multirefine.refine.plan.SearchPlan.search`: global polar pass, two local
passes; speed 5, shifts to 5 px) against the true maps at full resolution within a band of
``--searched-band`` Å (10): the accuracy a perfect reference set allows today's search.
``bayes`` whitens image and CTF by the true spectrum (``X / sqrt(p)``, ``c / sqrt(p)``: the
least-squares score is then the coloured-noise log-likelihood), puts the envelope and the
particle's contrast into the CTF and removes the background; ``ls_white`` is today's.
``--searched-from lp30`` searches against the starting maps instead (at the band the engine's
first iteration takes from them, e.g. ``--searched-band 24``): how much a better score alone
would change the first assignment.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from multirefine.cli.demo import adenylate_kinase_models
from multirefine.fourier.fft import (
    frequency_grid_2d,
    frequency_grid_3d,
    irfftn3_centered,
    rfft2_centered,
    rfftn3_centered,
)
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.fourier.shift import shift_images_ft
from multirefine.io.maps import read_map, write_map
from multirefine.io.particles import open_particles
from multirefine.refine.batch import load_batch, origins_px_for_rows
from multirefine.refine.plan import plan_search
from multirefine.refine.reconstruct import reconstruct_from_stack
from multirefine.refine.scoring import band_slices, make_band
from multirefine.refine.seeding import particle_radius_px
from multirefine.simulate import (
    SimulationParameters,
    maps_from_models,
    read_atomic_model,
    simulate_dataset,
)

BOX, APIX, SNR, SEED = 40, 2.4, 0.1, 0
LOWPASS_ANGSTROM = 30.0
BANDS_ANGSTROM = (10.0, 20.0, 30.0)  # besides Nyquist: the engine searches a narrower band early on


@dataclass
class RealisticSet:
    name: str
    description: str
    realism: dict = field(default_factory=dict)  # SimulationParameters fields

    def parameters(self, n: int, seed: int = SEED) -> SimulationParameters:
        return SimulationParameters(
            n_particles=n, snr=SNR, fractions=[0.5, 0.5], pixel_size_angstrom=APIX, seed=seed,
            defocus_min_angstrom=8000.0, defocus_max_angstrom=30000.0, **self.realism,
        )


SETS = {
    "adk_real": RealisticSet(
        "adk_real",
        "adenylate kinase open vs closed, realistic: B 80, noise falloff:30,0.3,2, contrast SD 0.2, "
        "background SD 0.5, ramp SD 0.5, 15 % junk, defocus 0.8-3.0 um",
        {
            "bfactor_angstrom2": 80.0,
            "noise_spectrum": "falloff:30,0.3,2",
            "contrast_sd": 0.2,
            "background_sd_noise_sigmas": 0.5,
            "ramp_sd_noise_sigmas_per_box": 0.5,
            "junk_fraction": 0.15,
        },
    ),
    "adk_ideal": RealisticSet(
        "adk_ideal", "adenylate kinase open vs closed, the control: white noise, nothing else, defocus 0.8-3.0 um"
    ),
}


def gaussian_lowpass(volume: np.ndarray, resolution_angstrom: float, apix: float) -> np.ndarray:
    """``exp(-k^2 / (2 s^2))`` on the map's transform, ``s`` such that it is 1/2 at
    ``1 / resolution_angstrom``."""
    box = volume.shape[-1]
    kx, ky, kz = frequency_grid_3d(box, dtype=torch.float64)
    k2 = (kx**2 + ky**2 + kz**2) / (box * apix) ** 2
    s2 = (1.0 / resolution_angstrom) ** 2 / (2 * math.log(2))
    ft = rfftn3_centered(torch.as_tensor(volume, dtype=torch.float64)) * torch.exp(-k2 / (2 * s2))
    return irfftn3_centered(ft, box).numpy().astype(np.float32)


def make_set(root: Path, spec: RealisticSet, n: int) -> Path:
    out = root / spec.name
    (out / "limits.json").unlink(missing_ok=True)  # of the set made before
    maps = maps_from_models([read_atomic_model(p) for p in adenylate_kinase_models()], BOX, APIX, 2 * APIX)
    simulate_dataset(out, maps, spec.parameters(n))
    for k, volume in enumerate(maps, start=1):
        write_map(out / f"lp30_{k}.mrc", gaussian_lowpass(volume, LOWPASS_ANGSTROM, APIX), APIX)
    # RELION's --ref for the same two starting maps (bench/run_relion.sh with REF=refs_lp30.star)
    (out / "refs_lp30.star").write_text(
        "\ndata_\n\nloop_\n_rlnReferenceImage #1\n" + "".join(f"lp30_{k}.mrc\n" for k in range(1, len(maps) + 1)))
    stack = open_particles(out / "truth.star")
    real = np.nonzero(stack.metadata["rlnClassNumber"].to_numpy() > 0)[0]
    consensus = reconstruct_from_stack(stack, rows=real).full_map
    write_map(out / "consensus_lp30.mrc", gaussian_lowpass(consensus, LOWPASS_ANGSTROM, APIX), APIX)
    (out / "README").write_text(
        f"{spec.description}\nbox {BOX}, {APIX} A/px, {n} particles, SNR {SNR}, seed {SEED}\n"
        "starting maps: lp30_K.mrc (true map K), consensus_lp30.mrc (real particles at true poses), "
        "Gaussian low-pass, amplitude 1/2 at 30 A\n"
    )
    return out


# --- the true-pose limit -------------------------------------------------------------------

# name -> (whiten by the noise spectrum, per-particle contrast, B envelope, background removed,
#          true units (1/noise sigma) rather than one fitted scale, DC pixel kept)
VARIANTS = {
    "bayes": (True, True, True, True, True, True),
    "bayes_white": (False, True, True, True, True, True),
    "bayes_no_contrast": (True, False, True, True, True, True),
    "bayes_no_envelope": (True, True, False, True, True, True),
    "bayes_background_kept": (True, True, True, False, True, False),
    "ls_white": (False, False, False, False, False, False),
}


def _background(rows, box: int) -> torch.Tensor:
    """Offset + ramp per row ``(n, D, D)`` (README, truth.star's mrBackground columns)."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    col = lambda name: torch.tensor(rows[name].to_numpy(dtype=np.float64))[:, None, None]
    return (col("mrBackgroundOffset") + (col("mrBackgroundRampX") * x + col("mrBackgroundRampY") * y) / box).float()


def _noise_power(band, sim: dict, box: int) -> torch.Tensor:
    """Variance of each band pixel of an rfft2 image transform ``(M,)``: ``D^2 p(|k|)``."""
    shells = np.asarray(sim["noise_power_per_shell"], dtype=np.float64)
    radius = torch.sqrt(band.kx.double() ** 2 + band.ky.double() ** 2).numpy()
    return torch.from_numpy(box**2 * np.interp(radius, np.arange(len(shells)), shells)).float()


def _terms(set_dir: Path, batch_size: int = 500):
    """Per real particle and class, the pieces every variant is made of, in the band."""
    sim = json.loads((set_dir / "simulation.json").read_text())
    stack = open_particles(set_dir / "truth.star")
    meta = stack.metadata
    box, apix = stack.box_size, stack.pixel_size_angstrom
    real = np.nonzero(meta["rlnClassNumber"].to_numpy() > 0)[0]
    k = len(sim["fractions"])
    maps = torch.stack([torch.from_numpy(read_map(set_dir / f"gt_{i:02d}.mrc")[0]) for i in range(1, k + 1)])
    volumes_ft = prepare_volume_ft(maps)
    band = make_band(box, box / 2, low_radius_px=0.0)  # DC kept; variants that leave it out mask it
    enveloped = meta.copy()
    enveloped["rlnCtfBfactor"] = enveloped.get("rlnCtfBfactor", 0.0) + sim["bfactor_angstrom2"]
    env_stack = stack.with_metadata(enveloped)
    out = {key: [] for key in ("x", "x_bg", "c", "c_env", "p")}
    for start in range(0, len(real), batch_size):
        idx = real[start : start + batch_size]
        plain = load_batch(stack, idx)  # centred by the true origin
        with_env = load_batch(env_stack, idx)
        x_raw = band.gather(plain.images_ft)
        if "mrBackgroundOffset" in meta.columns:
            rows = meta.iloc[idx]
            bg_ft = shift_images_ft(rfft2_centered(_background(rows, box)), origins_px_for_rows(rows, apix))
            x = band.gather(plain.images_ft - bg_ft)
        else:
            x = x_raw
        out["x"].append(x)
        out["x_bg"].append(x_raw)
        out["c"].append(band.gather(plain.ctf))
        out["c_env"].append(band.gather(with_env.ctf))
        out["p"].append(torch.stack([band_slices(volumes_ft[j], plain.rotations, band) for j in range(k)], 1))
    terms = {name: torch.cat(v) for name, v in out.items()}
    truth = meta["rlnClassNumber"].to_numpy()[real]
    contrast = meta["mrContrastScale"].to_numpy()[real] if "mrContrastScale" in meta.columns else np.ones(len(real))
    terms["contrast"] = torch.from_numpy(contrast).float()
    return terms, truth, band, _noise_power(band, sim, box), sim


def _log_likelihoods(terms, band, noise, sim, variant, resolution: float | None) -> tuple[torch.Tensor, float]:
    """``(n, K)`` log-likelihoods (up to a per-particle constant) of a variant within
    ``resolution`` Å (None: Nyquist), and the mean residual power at the true class (units
    check, 1 when the model is right)."""
    whiten, contrast, envelope, no_background, true_units, dc = VARIANTS[variant]
    x = terms["x"] if no_background else terms["x_bg"]
    c = terms["c_env"] if envelope else terms["c"]
    amplitude = (terms["contrast"] if contrast else torch.ones_like(terms["contrast"]))[:, None, None]
    weight = band.weight.clone()
    if not dc:
        weight[(band.kx == 0) & (band.ky == 0)] = 0
    if resolution is not None:
        radius = band.box_size * sim["pixel_size_angstrom"] / resolution
        weight[band.kx**2 + band.ky**2 >= radius**2] = 0
    variance = noise if whiten else torch.full_like(noise, float(noise.mean()))
    model = amplitude * c[:, None, :] * terms["p"]  # (n, K, M), map units
    if true_units:
        scale = 1.0 / sim["noise_sigma"]
    else:  # one least-squares factor, over every real particle at its true class
        truth = terms["truth"]
        at_truth = model[torch.arange(len(truth)), torch.as_tensor(truth - 1)]
        scale = float((weight * (x * at_truth.conj()).real).sum() / (weight * at_truth.abs() ** 2).sum())
        terms.setdefault("fitted_scale", {})[(variant, resolution)] = scale
    residual = (x[:, None, :] - scale * model).abs() ** 2  # (n, K, M)
    ll = -(weight * residual / (2 * variance)).sum(-1)
    ll = ll + torch.log(torch.as_tensor(sim["fractions"], dtype=torch.float64) / sum(sim["fractions"])).float()
    truth = torch.as_tensor(terms["truth"] - 1)
    own = residual[torch.arange(len(truth)), truth] / noise  # with the true spectrum
    return ll, float(own[:, weight > 0].mean())


def limits(set_dir: Path) -> dict:
    terms, truth, band, noise, sim = _terms(set_dir)
    terms["truth"] = truth
    nyquist = 2 * sim["pixel_size_angstrom"]
    result = {
        "set": set_dir.name,
        "n_real": len(truth),
        "n_junk": int(sim["n_particles"] - len(truth)),
        "bands_angstrom": [nyquist, *BANDS_ANGSTROM],
        "variants": {},
    }
    for variant in VARIANTS:
        rows = []
        for resolution in (None, *BANDS_ANGSTROM):
            ll, residual_power = _log_likelihoods(terms, band, noise, sim, variant, resolution)
            chosen = ll.argmax(1).numpy() + 1
            at = (torch.arange(len(truth)), torch.as_tensor(truth - 1))
            others = ll.clone()
            others[at] = -torch.inf
            rows.append({
                "band_angstrom": nyquist if resolution is None else resolution,
                "accuracy": float((chosen == truth).mean()),
                # log-likelihood of the true class minus the best other (> 0: right)
                "median_margin": float((ll[at] - others.max(1).values).median()),
                "residual_power": residual_power,
            })
        result["variants"][variant] = rows
    result["ls_white_scale"] = terms["fitted_scale"][("ls_white", None)]
    if (set_dir / "limits.json").exists():  # searched-pose limits computed before are kept
        before = json.loads((set_dir / "limits.json").read_text())
        result.update({key: value for key, value in before.items() if key.startswith("searched")})
    (set_dir / "limits.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@dataclass
class SearchedSetup:
    """What a search against a set's true (or starting) maps needs: a sample of its real
    particles, the maps, the plan, and for the ``bayes`` variant the true noise spectrum and
    the enveloped stack (bench/marginal_choice.py uses it too)."""

    stack: object
    env_stack: object  # the CTF with the true B-factor envelope
    sample: np.ndarray  # stack rows of the real particles sampled
    truth: np.ndarray  # their true classes
    maps: torch.Tensor  # (K, D, D, D)
    plan: object
    sigma: torch.Tensor  # (D, D//2+1): the noise's amplitude per pixel
    sim: dict
    limits: dict

    def scale(self, variant: str) -> float:
        """The maps' factor into the particles' units: the true one, or today's fitted one."""
        return 1.0 / self.sim["noise_sigma"] if variant == "bayes" else self.limits["ls_white_scale"]

    def terms(self, variant: str, idx: np.ndarray):
        """``(batch, X, c)`` of stack rows ``idx``: ``bayes`` whitens image and CTF by the true
        spectrum (``X / sqrt(p)``, ``c / sqrt(p)``), puts the envelope and the particle's contrast
        into the CTF and removes the background; ``ls_white`` is today's."""
        meta, box = self.stack.metadata, self.stack.box_size
        if variant != "bayes":
            batch = load_batch(self.stack, idx, center=False)
            return batch, batch.images_ft, batch.ctf
        rows = meta.iloc[idx]
        batch = load_batch(self.env_stack, idx, center=False)
        x = batch.images_ft
        if "mrBackgroundOffset" in meta.columns:
            x = x - rfft2_centered(_background(rows, box))
        contrast = rows["mrContrastScale"].to_numpy(dtype=np.float64, copy=True) if "mrContrastScale" in rows.columns else np.ones(len(idx))
        return batch, x / self.sigma, batch.ctf * torch.from_numpy(contrast).float()[:, None, None] / self.sigma


def searched_setup(set_dir: Path, n_sample: int, band_angstrom: float, maps_from: str = "gt",
                   speed: int = 5) -> SearchedSetup:
    """:class:`SearchedSetup` for ``n_sample`` real particles, evenly spaced, and a search of
    ``band_angstrom`` at ``speed`` against the true maps (``maps_from="gt"``) or the starting
    maps ``lp30_K.mrc``."""
    sim = json.loads((set_dir / "simulation.json").read_text())
    limits_file = json.loads((set_dir / "limits.json").read_text())
    stack = open_particles(set_dir / "truth.star")
    meta = stack.metadata
    box, apix = stack.box_size, stack.pixel_size_angstrom
    real = np.nonzero(meta["rlnClassNumber"].to_numpy() > 0)[0]
    sample = real[np.unique(np.linspace(0, len(real) - 1, min(n_sample, len(real))).round().astype(np.int64))]
    k = len(sim["fractions"])
    names = [f"gt_{i:02d}.mrc" if maps_from == "gt" else f"lp30_{i}.mrc" for i in range(1, k + 1)]
    maps = torch.stack([torch.from_numpy(read_map(set_dir / name)[0]) for name in names])
    radius = max(particle_radius_px(m.numpy()) for m in maps)
    plan = plan_search(box, apix, band_angstrom, radius, speed, ["c1"] * k, 5.0)
    kx, ky = frequency_grid_2d(box, dtype=torch.float64)
    shells = np.asarray(sim["noise_power_per_shell"], dtype=np.float64)
    sigma = torch.from_numpy(np.sqrt(np.interp(torch.sqrt(kx**2 + ky**2).numpy(), np.arange(len(shells)), shells))).float()
    enveloped = meta.copy()
    enveloped["rlnCtfBfactor"] = enveloped.get("rlnCtfBfactor", 0.0) + sim["bfactor_angstrom2"]
    return SearchedSetup(stack, stack.with_metadata(enveloped), sample, meta["rlnClassNumber"].to_numpy()[sample],
                         maps, plan, sigma, sim, limits_file)


def searched_limits(set_dir: Path, n_sample: int, band_angstrom: float, maps_from: str = "gt",
                    batch_size: int = 200) -> dict:
    """Accuracy with poses searched against the true maps (module docstring), on a sample;
    ``maps_from="lp30"``: against the starting maps ``lp30_K.mrc`` instead (key ``searched_lp30``)."""
    setup = searched_setup(set_dir, n_sample, band_angstrom, maps_from)
    plan, sample, limits_file = setup.plan, setup.sample, setup.limits
    out = {"maps": maps_from, "n": len(sample), "band_angstrom": plan.band_resolution_angstrom,
           "coarse_step_deg": plan.coarse_step_deg, "variants": {}}
    for variant in ("bayes", "ls_white"):
        volumes_ft = prepare_volume_ft(setup.maps * setup.scale(variant))
        references = plan.references(volumes_ft)
        chosen, errors = [], []
        for start in range(0, len(sample), batch_size):
            batch, x, c = setup.terms(variant, sample[start : start + batch_size])
            found = plan.search(x, c, references, volumes_ft, score="ls")
            chosen.append(found.model[:, 0].numpy() + 1)
            relative = found.rotations[:, 0].double() @ batch.rotations.double().transpose(-1, -2)
            cosine = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
            errors.append(np.degrees(torch.arccos(cosine).numpy()))
        chosen, errors = np.concatenate(chosen), np.concatenate(errors)
        out["variants"][variant] = {
            "accuracy": float((chosen == setup.truth).mean()),
            "pose_error_median_deg": float(np.median(errors)),
            "pose_within_10_deg": float((errors < 10).mean()),
        }
    limits_file["searched" if maps_from == "gt" else f"searched_{maps_from}"] = out
    (set_dir / "limits.json").write_text(json.dumps(limits_file, indent=2) + "\n")
    return limits_file


def print_table(results: list[dict]) -> None:
    """Per set: accuracy (%) and median margin (log-likelihood, true class minus best other)
    of each variant in each band."""
    for r in results:
        print(f"\n{r['set']}: true-pose limit on {r['n_real']} real particles ({r['n_junk']} junk left out); "
              "accuracy %, median margin, per band")
        print(f"{'':24s}" + "".join(f"{f'to {b:.1f} A':>20s}" for b in r["bands_angstrom"]) + f"{'resid.pow':>11s}")
        for variant, rows in r["variants"].items():
            cells = "".join(f"{100 * c['accuracy']:>11.2f} {c['median_margin']:>8.1f}" for c in rows)
            print(f"{variant:24s}{cells}{rows[0]['residual_power']:>11.3f}")
        for key, maps in (("searched", "true maps"), ("searched_lp30", "lp30 maps")):
            if key not in r:
                continue
            found = r[key]
            print(f"searched poses ({maps}, to {found['band_angstrom']:.1f} A, global step "
                  f"{found['coarse_step_deg']:.1f} deg, {found['n']} particles): " + "; ".join(
                      f"{v} {100 * c['accuracy']:.1f} % (poses: median error {c['pose_error_median_deg']:.1f} deg, "
                      f"{100 * c['pose_within_10_deg']:.0f} % within 10)" for v, c in found["variants"].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--only", choices=sorted(SETS))
    parser.add_argument("--limits-only", action="store_true", help="the sets exist: compute their limits only")
    parser.add_argument("--searched", type=int, default=500, metavar="N",
                        help="particles in the searched-pose limit (default 500; 0: skip it)")
    parser.add_argument("--searched-band", type=float, default=10.0, metavar="A",
                        help="the searched-pose limit's band, Å (default 10)")
    parser.add_argument("--searched-from", choices=("gt", "lp30"), default="gt",
                        help="search against the true maps (gt, default) or the starting maps lp30_K.mrc "
                             "(what the engine's first iteration sees; kept beside the other)")
    args = parser.parse_args(argv)
    results = []
    for name, spec in SETS.items():
        if args.only and name != args.only:
            continue
        set_dir = args.root / name
        if not args.limits_only:
            make_set(args.root, spec, args.n)
            print("made", set_dir, flush=True)
        result = limits(set_dir)
        if args.searched > 0:
            result = searched_limits(set_dir, args.searched, args.searched_band, args.searched_from)
        results.append(result)
    print_table(results)


if __name__ == "__main__":
    sys.exit(main())
