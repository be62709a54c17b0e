"""A set for focused classification (issue "Masks, focused classification, and choosing K"):
a subunit that comes and goes, while a larger part elsewhere comes and goes with it or not.

    python bench/focused.py make OUT [--n 4000] [--snr 0.05] [--seed 0]
    python bench/focused.py score RUN OUT [--iteration N]
    python bench/focused.py poses RUN OUT --iteration N [--step 3] [--radius 6] [--shift-step 0.5] [--band 10]
    python bench/focused.py searched OUT [--band 8] [--speed 5]
    python bench/focused.py unknown RUN OUT --iteration N [--step 3] [--radius 12] [--shift-step 0.5]

The progesterone receptor LBD dimer (mdanalysistests 1a28, both chains, 4082 atoms, ~60 kDa),
box 48, 2.4 Å/px, CTF (defocus 1-2.5 µm). Its atoms are cut into a core, a *subunit* (the
atoms of chain B nearest its far end, 10 % of the atoms) and a *distractor* (the atoms of
chain A farthest from the dimer's centre, 25 %). Four states, a quarter of the particles
each: core, core + subunit, core + distractor, core + subunit + distractor (truth classes
1-4). The question asked of the data is whether the subunit is there (classes 2 and 4); the
distractor, larger, varies independently and is what a classification of the whole map
separates first.

``OUT/`` holds what ``multirefine simulate`` writes, plus ``consensus_lp20.mrc`` (all
particles reconstructed at their true poses, Gaussian low-pass, amplitude 1/2 at 20 Å),
``focus.mrc`` (a soft mask around the subunit: its own map thresholded, grown by 2 px, a
3 px edge; ``multirefine mask``'s recipe), ``subunit.json`` (which true classes hold the
subunit) and ``limits.json``: the true-pose limit, each particle judged at its true pose
against the four true maps (least squares in the particles' units, white noise: the
simulation's), the subunit present where the likelihood summed over the two distractor
states is larger (the Bayes-optimal decision).

``poses`` judges the focused choice alone, on every 4th particle: at the true poses or the
run's (its ``particles_NN.star``), against the ideal two maps (the mean of the true maps
without and with the subunit) or the run's (``threed_NN_MM.mrc``), within a ``--band`` Å band
(10): what the run's poses and maps each cost; the choice at the pose alone and summed over a
lattice of local poses (``multirefine.refine.focus.local_poses``: rotations ``--step`` apart
within ``--radius`` degrees, 3 x 3 shifts ``--shift-step`` px apart). ``searched`` gives the choice (ideal maps, the pose alone) at poses the engine's
search finds against ideal references (the four true maps, or the two ideal ones; globally, or
locally from ``consensus_like.star`` with a 2° prior): the accuracy a search's poses allow.
``unknown``: the Bayes decision of the limit (four true maps, the whole band), at the true or the
run's poses, alone or summed over the local lattice: what the data allow where each pose is
known only to within that neighbourhood.

``score`` prints the accuracy of a run's last (or ``--iteration``) assignment against
subunit present / absent (its two models matched to the two by the Hungarian method) beside
the limit, and how the run's models split the distractor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realistic import gaussian_lowpass
from score_realistic import pose_errors_deg

from multirefine.evaluate import classification_accuracy
from multirefine.fourier.masks import mask_from_map
from multirefine.fourier.projection import prepare_volume_ft
from multirefine.io.maps import write_map
from multirefine.io.particles import open_particles
from multirefine.io.star import read_particles_star
from multirefine.refine.batch import load_batch, origins_px_for_rows
from multirefine.refine.reconstruct import reconstruct_from_stack
from multirefine.refine.scoring import band_phase_ramp, band_slices, make_band, particle_terms
from multirefine.simulate import (
    AtomicModel,
    SimulationParameters,
    maps_from_models,
    read_atomic_model,
    simulate_dataset,
)

BOX, APIX = 48, 2.4
SUBUNIT_FRACTION, DISTRACTOR_FRACTION = 0.10, 0.25
WITH_SUBUNIT = [2, 4]


def _parts() -> tuple[AtomicModel, np.ndarray, np.ndarray]:
    """The dimer and the indices of the subunit's and the distractor's atoms."""
    import MDAnalysisTests.datafiles as data

    path = str(Path(data.__file__).parent / "data" / "1a28.pdb.gz")
    full, chain_b = read_atomic_model(path), read_atomic_model(path + ":B")
    x = full.positions_angstrom
    n_a = len(x) - len(chain_b.positions_angstrom)  # chain A's atoms come first
    centre = x.mean(0)
    b = np.arange(n_a, len(x))
    far_end = x[b[np.argmax(np.linalg.norm(x[b] - centre, axis=1))]]
    subunit = b[np.argsort(np.linalg.norm(x[b] - far_end, axis=1))[: round(SUBUNIT_FRACTION * len(x))]]
    a = np.arange(n_a)
    distractor = a[np.argsort(-np.linalg.norm(x[a] - centre, axis=1))[: round(DISTRACTOR_FRACTION * len(x))]]
    return full, subunit, distractor


def state_maps() -> list[np.ndarray]:
    """The four states' true maps (core, + subunit, + distractor, + both) and the subunit's own."""
    full, subunit, distractor = _parts()
    core = np.setdiff1d(np.arange(len(full.positions_angstrom)), np.concatenate([subunit, distractor]))

    def model(index: np.ndarray, name: str) -> AtomicModel:
        index = np.sort(index)
        return AtomicModel(full.positions_angstrom[index], full.atomic_numbers[index], name)

    states = [model(core, "core"), model(np.concatenate([core, subunit]), "core+subunit"),
              model(np.concatenate([core, distractor]), "core+distractor"),
              model(np.concatenate([core, subunit, distractor]), "core+subunit+distractor")]
    return maps_from_models([full, *states, model(subunit, "subunit")], BOX, APIX, 2 * APIX)[1:]


def write_start_map(out: Path) -> None:
    """``consensus_lp20.mrc``: every particle at its true pose, Gaussian low-pass to 20 Å."""
    stack = open_particles(out / "truth.star")
    write_map(out / "consensus_lp20.mrc", gaussian_lowpass(reconstruct_from_stack(stack).full_map, 20.0, APIX), APIX)


def make(out: Path, n: int, snr: float, seed: int) -> None:
    maps = state_maps()
    full, subunit, distractor = _parts()
    simulate_dataset(out, maps[:4], SimulationParameters(n_particles=n, snr=snr, fractions=[0.25] * 4,
                                                         pixel_size_angstrom=APIX, seed=seed))
    write_start_map(out)
    piece = torch.from_numpy(maps[4])
    write_map(out / "focus.mrc", mask_from_map(piece, 0.05 * float(piece.max()), 2.0, 3.0).numpy(), APIX)
    (out / "subunit.json").write_text(json.dumps({"with_subunit": WITH_SUBUNIT, "subunit_atoms": len(subunit),
                                                  "distractor_atoms": len(distractor), "atoms": len(full.positions_angstrom)}))
    limits = {"true_pose_limit": true_pose_limit(out)}
    (out / "limits.json").write_text(json.dumps(limits, indent=2) + "\n")
    print(f"{out}: {n} particles, SNR {snr}; {limits}")


def true_pose_log_likelihoods(out: Path, batch_size: int = 500) -> torch.Tensor:
    """``(n, K)``: each particle's log-likelihood at its true pose under each true map
    (least squares in the particles' units, the simulation's white noise), up to a constant."""
    from multirefine.io.maps import read_map

    sim = json.loads((out / "simulation.json").read_text())
    stack = open_particles(out / "truth.star")
    k = len(sim["fractions"])
    maps = torch.stack([torch.from_numpy(read_map(out / f"gt_{c:02d}.mrc")[0]) for c in range(1, k + 1)])
    volumes = prepare_volume_ft(maps / sim["noise_sigma"])
    box = maps.shape[-1]
    band = make_band(box, box / 2 - 1)
    parts = []
    for start in range(0, len(stack), batch_size):
        rows = np.arange(start, min(start + batch_size, len(stack)))
        batch = load_batch(stack, rows, center=False)
        x, wc, wc2, _ = particle_terms(batch.images_ft, batch.ctf, band)
        ramp = band_phase_ramp(origins_px_for_rows(stack.metadata.iloc[rows], sim["pixel_size_angstrom"]), band)
        ll = []
        for c in range(k):
            p = band_slices(volumes[c], batch.rotations, band)
            ls = ((x * ramp * wc) * p.conj()).real.sum(-1) - 0.5 * (wc2 * (p.real**2 + p.imag**2)).sum(-1)
            ll.append(2 * ls)  # unit noise per pixel, both halves of the plane
        parts.append(torch.stack(ll, 1).double())
    return torch.cat(parts)


def true_pose_limit(out: Path, batch_size: int = 500) -> float:
    """The Bayes-optimal subunit decision at the true poses (module docstring)."""
    stack = open_particles(out / "truth.star")
    truth = np.isin(stack.metadata["rlnClassNumber"].to_numpy(), WITH_SUBUNIT)
    ll = true_pose_log_likelihoods(out, batch_size)
    decided = torch.logsumexp(ll[:, [1, 3]], 1) > torch.logsumexp(ll[:, [0, 2]], 1)
    return float(np.mean(decided.numpy() == truth))


def score(run: Path, out: Path, iteration: int | None) -> dict:
    found = sorted(int(m.group(1)) for p in run.glob("particles_*.star") if (m := re.fullmatch(r"particles_(\d+)\.star", p.name)))
    iteration = iteration or found[-1]
    table = read_particles_star(run / f"particles_{iteration:02d}.star").metadata
    truth_table = read_particles_star(out / "truth.star").metadata
    truth_classes = truth_table["rlnClassNumber"].to_numpy()
    errors = pose_errors_deg(table, truth_table)  # the consensus map was made at the true poses: their frame
    truth = np.isin(truth_classes, WITH_SUBUNIT).astype(int) + 1
    model = table["rlnClassNumber"].to_numpy()
    accuracy = classification_accuracy(truth, model).accuracy
    split = {f"model {m}": [int(np.sum((model == m) & (truth_classes == c))) for c in range(1, 5)]
             for m in sorted(set(model.tolist()))}
    limit = json.loads((out / "limits.json").read_text())["true_pose_limit"]
    row = {"run": str(run), "iteration": iteration, "subunit_accuracy": float(accuracy), "true_pose_limit": limit,
           "true_classes_per_model": split, "pose_error_median_deg": float(np.median(errors)),
           "pose_within_10_deg": float(np.mean(errors < 10))}
    print(f"{run} it {iteration}: subunit present/absent {100 * accuracy:.1f} % (true-pose limit {100 * limit:.1f} %); "
          f"true classes 1-4 (core, +S, +D, +S+D) per model {split}; poses {np.median(errors):.1f}° median error, "
          f"{100 * np.mean(errors < 10):.0f} % within 10°")
    return row


@dataclass
class _Sample:
    """What the pose and choice studies judge: every 4th particle of the set (``rows``), its
    stack and loaded batch, whether each holds the subunit, and the simulation's noise SD."""

    rows: np.ndarray
    stack: object
    batch: object
    with_subunit: np.ndarray
    sigma: float

    @classmethod
    def of(cls, out: Path) -> _Sample:
        rows = np.arange(0, len(read_particles_star(out / "truth.star").metadata), 4)
        stack = open_particles(out / "truth.star").subset(rows)
        return cls(rows, stack, load_batch(stack, np.arange(len(stack)), center=False),
                   np.isin(stack.metadata["rlnClassNumber"].to_numpy(), WITH_SUBUNIT),
                   json.loads((out / "simulation.json").read_text())["noise_sigma"])

    def true_maps(self, out: Path) -> list[np.ndarray]:
        """The four states' true maps in the particles' units."""
        from multirefine.io.maps import read_map

        return [read_map(out / f"gt_{k:02d}.mrc")[0] / self.sigma for k in range(1, 5)]


def _composites(maps: list[np.ndarray], out: Path) -> torch.Tensor:
    """Two maps as the focused choice scores them: each one's inside of ``focus.mrc`` plus
    their common outside (``choice.leave_out_volumes``, nothing left out)."""
    from multirefine.io.maps import read_map
    from multirefine.refine.choice import LastReconstruction, leave_out_volumes
    from multirefine.refine.solvent import ModelMasks

    last = LastReconstruction([None] * 2, [None] * 2, [m.astype(np.float32) for m in maps], [])
    return leave_out_volumes(last, 0, 0, [torch.eye(3)[None]] * 2, ModelMasks(BOX, BOX / 2 - 2), 10.0, np.ones(2),
                             "cpu", ModelMasks(BOX, 0.0, [read_map(out / "focus.mrc")[0]]))


def _ideal(true_maps: list[np.ndarray]) -> list[np.ndarray]:
    """The two ideal maps: without and with the subunit, the distractor at half occupancy."""
    return [(true_maps[0] + true_maps[2]) / 2, (true_maps[1] + true_maps[3]) / 2]


def _log_likelihoods(scores: np.ndarray, images_ft: torch.Tensor, band) -> np.ndarray:
    """The model choice's log-likelihoods (``splitmerge.log_likelihoods``) of scores ``(n, K)``."""
    from multirefine.refine.splitmerge import log_likelihoods

    return log_likelihoods(scores, band.power(images_ft).numpy(), float(band.weight.sum()), "ls")


def poses(run: Path, out: Path, iteration: int, step: float, radius: float, shift_step: float,
          band_angstrom: float = 10.0) -> None:
    """The focused choice at true or the run's poses, with ideal or the run's maps, at the pose
    alone and summed over a local lattice around it (module docstring)."""
    from multirefine.io.maps import read_map
    from multirefine.refine.batch import rotations_for_rows
    from multirefine.refine.focus import focused_scores, local_poses

    sample = _Sample.of(out)
    table = read_particles_star(run / f"particles_{iteration:02d}.star").metadata.iloc[sample.rows]
    batch = sample.batch
    band = make_band(BOX, min(BOX / 2 - 1, BOX * APIX / band_angstrom))
    local = local_poses(radius, shift_step, reach=round(radius / step))
    runs = [read_map(run / f"threed_{iteration:02d}_{m:02d}.mrc")[0] for m in (1, 2)]
    print(f"{len(local.rotations)} rotations x {len(local.shifts_px)} shifts, step {step} deg, radius {radius} deg")
    for pose_name, meta in (("true poses", sample.stack.metadata), ("run's poses", table)):
        rotations = np.repeat(rotations_for_rows(meta).double().numpy()[:, None], 2, 1)
        shifts = np.repeat(origins_px_for_rows(meta, APIX).double().numpy()[:, None], 2, 1)
        for map_name, maps in (("ideal maps", _ideal(sample.true_maps(out))), ("run's maps", runs)):
            volumes = _composites(maps, out)
            for name, poses in (("the pose alone", None), ("summed over local poses", local)):
                chosen = focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band,
                                        poses).argmax(1)
                accuracy = max(np.mean(chosen == sample.with_subunit), np.mean(chosen != sample.with_subunit))
                print(f"{pose_name}, {map_name}, {name}: {100 * accuracy:.1f} %")


def searched(out: Path, band_angstrom: float, speed: int) -> None:
    """The focused choice (ideal maps) at poses searched by the engine against ideal references:
    the four true maps (each particle's distractor state known), or the two ideal maps (the
    distractor at half occupancy, what a run's models hold at best); globally, or locally from
    ``consensus_like.star`` with the runs' prior (2°)."""
    from multirefine.geometry.euler import rotation_change_deg
    from multirefine.refine.batch import rotations_for_rows
    from multirefine.refine.focus import focused_scores
    from multirefine.refine.plan import plan_search
    from multirefine.refine.seeding import particle_radius_px

    sample = _Sample.of(out)
    batch, truth = sample.batch, sample.with_subunit
    true_maps = sample.true_maps(out)
    start = read_particles_star(out / "consensus_like.star").metadata.iloc[sample.rows]
    ideal = _ideal(true_maps)
    volumes = _composites(ideal, out)
    choice_band = make_band(BOX, BOX * APIX / 10.0)
    radius = particle_radius_px(true_maps[3])
    for name, maps in (("four true maps", true_maps), ("two ideal maps", ideal)):
        plan = plan_search(BOX, APIX, band_angstrom, radius, speed, ["c1"] * len(maps), 5.0)
        volumes_ft = prepare_volume_ft(torch.from_numpy(np.stack(maps)).float())
        for how in ("global", "local from consensus_like"):
            priors, sigma_ang = None, None
            if how != "global":
                r = rotations_for_rows(start)[:, None].expand(-1, len(maps), -1, -1)
                t = origins_px_for_rows(start, APIX)[:, None].expand(-1, len(maps), -1)
                priors, sigma_ang = (r.float(), t.float()), 2.0
            found = plan.search(batch.images_ft, batch.ctf, plan.references(volumes_ft) if priors is None else None,
                                volumes_ft, score="ls", priors=priors, sigma_ang_deg=sigma_ang)
            rotations = found.rotations[:, 0].double().numpy()
            errors = rotation_change_deg(rotations, batch.rotations.double().numpy(), np.eye(3)[None])
            chosen = focused_scores(batch.images_ft, batch.ctf, volumes,
                                    np.repeat(rotations[:, None], 2, 1),
                                    np.repeat(found.shift_px[:, :1].double().numpy(), 2, 1), choice_band).argmax(1)
            print(f"poses searched against the {name}, {how} (band {plan.band_resolution_angstrom:.1f} A): "
                  f"{np.median(errors):.1f} deg median error, {100 * np.mean(errors < 10):.0f} % within 10; "
                  f"focused choice (ideal maps) {100 * max(np.mean(chosen == truth), np.mean(chosen != truth)):.1f} %")


def unknown_pose_limit(run: Path, out: Path, iteration: int, step: float, radius: float, shift_step: float) -> None:
    """The Bayes decision with the four true maps, each state's likelihood summed over a local
    lattice of poses (uniform prior) around the true pose, or around the run's: what the data
    allow where the pose is known only to that neighbourhood, not exactly."""
    from multirefine.refine.batch import rotations_for_rows
    from multirefine.refine.focus import focused_scores, local_poses

    sample = _Sample.of(out)
    batch = sample.batch
    volumes = prepare_volume_ft(torch.from_numpy(np.stack(sample.true_maps(out))).float())
    table = read_particles_star(run / f"particles_{iteration:02d}.star").metadata.iloc[sample.rows]
    band = make_band(BOX, BOX / 2 - 1)
    local = local_poses(radius, shift_step, reach=round(radius / step))
    for name, meta in (("true poses", sample.stack.metadata), ("run's poses", table)):
        rotations = np.repeat(rotations_for_rows(meta).double().numpy()[:, None], 4, 1)
        shifts = np.repeat(origins_px_for_rows(meta, APIX).double().numpy()[:, None], 4, 1)
        for how, poses in (("exact", None), ("summed over local poses", local)):
            scores = focused_scores(batch.images_ft, batch.ctf, volumes, rotations, shifts, band, poses)
            ll = torch.from_numpy(_log_likelihoods(scores, batch.images_ft, band))
            decided = (torch.logsumexp(ll[:, [1, 3]], 1) > torch.logsumexp(ll[:, [0, 2]], 1)).numpy()
            print(f"{name}, {how}: {100 * np.mean(decided == sample.with_subunit):.1f} %")


def _lattice_options(parser: argparse.ArgumentParser, radius_deg: float) -> None:
    """A study's run, set, iteration and local lattice (``focus.local_poses``)."""
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--step", type=float, default=3.0)
    parser.add_argument("--radius", type=float, default=radius_deg)
    parser.add_argument("--shift-step", type=float, default=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--n", type=int, default=4000)
    m.add_argument("--snr", type=float, default=0.05)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("run", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--iteration", type=int)
    mg = sub.add_parser("poses")
    _lattice_options(mg, 6.0)
    mg.add_argument("--band", type=float, default=10.0)
    se = sub.add_parser("searched")
    se.add_argument("out", type=Path)
    se.add_argument("--band", type=float, default=8.0)
    se.add_argument("--speed", type=int, default=5)
    _lattice_options(sub.add_parser("unknown"), 12.0)
    args = parser.parse_args(argv)
    if args.command == "unknown":
        unknown_pose_limit(args.run, args.out, args.iteration, args.step, args.radius, args.shift_step)
    elif args.command == "searched":
        searched(args.out, args.band, args.speed)
    elif args.command == "poses":
        poses(args.run, args.out, args.iteration, args.step, args.radius, args.shift_step, args.band)
    elif args.command == "make":
        make(args.out, args.n, args.snr, args.seed)
    else:
        score(args.run, args.out, args.iteration)


if __name__ == "__main__":
    main()
