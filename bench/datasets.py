"""The benchmark's simulated data sets (issue: compositional, conformational, three-state).

Each set is a folder made by :func:`multirefine.simulate.simulate_dataset` plus
``consensus_lp30.mrc``: the reconstruction of all particles at their true poses,
low-passed to 30 Å — the single starting map a user has after a consensus refinement,
given to both RELION (``--ref``) and multirefine (``--model ... --nmodels K``).

    python bench/datasets.py OUT_ROOT [--only three_state] [--n 6000] [--maps-from ROOT]

``--maps-from ROOT`` takes each set's true maps from ``ROOT/SET/gt_NN.mrc`` (a set made
before) instead of building them from the atomic models: for a machine without
mdanalysistests, such as the GPU machine (bench/gpu_choice.sh).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from multirefine.fourier.filters import lowpass_volume
from multirefine.io.maps import read_map, write_map
from multirefine.io.particles import open_particles
from multirefine.refine.reconstruct import reconstruct_from_stack
from multirefine.simulate import (
    AtomicModel,
    SimulationParameters,
    maps_from_models,
    read_atomic_model,
    simulate_dataset,
)


def _data(name: str) -> str:
    import MDAnalysisTests

    return os.path.join(os.path.dirname(MDAnalysisTests.__file__), "data", name)


def _intermediate(a: AtomicModel, b: AtomicModel) -> AtomicModel:
    """Half-way between two conformations of the same atoms (adk open and closed)."""
    return AtomicModel((a.positions_angstrom + b.positions_angstrom) / 2, a.atomic_numbers, "intermediate")


@dataclass
class DataSet:
    name: str
    description: str
    box: int
    apix: float
    diameter_angstrom: float
    fractions: list[float]

    def models(self) -> list[AtomicModel]:
        if self.name == "compositional":
            return [read_atomic_model(_data("1a28.pdb.gz")), read_atomic_model(_data("1a28.pdb.gz") + ":A")]
        adk_open, adk_closed = read_atomic_model(_data("adk_open.pdb")), read_atomic_model(_data("adk_closed.pdb"))
        if self.name == "conformational":
            return [adk_open, adk_closed]
        return [adk_open, _intermediate(adk_open, adk_closed), adk_closed]


DATASETS = {
    "compositional": DataSet("compositional", "progesterone receptor LBD dimer (1a28) vs its monomer (chain A)", 80, 1.8, 110, [0.5, 0.5]),
    "conformational": DataSet("conformational", "adenylate kinase open vs closed (adk_open/adk_closed)", 64, 1.5, 80, [0.5, 0.5]),
    "three_state": DataSet("three_state", "adenylate kinase open, intermediate, closed", 64, 1.5, 80, [0.4, 0.3, 0.3]),
}


def make(root: Path, ds: DataSet, n: int, snr: float, seed: int = 0, maps_from: Path | None = None) -> Path:
    out = root / ds.name
    if maps_from is None:
        maps = maps_from_models(ds.models(), ds.box, ds.apix, 2 * ds.apix)
    else:
        maps = [read_map(maps_from / ds.name / f"gt_{k:02d}.mrc")[0] for k in range(1, len(ds.fractions) + 1)]
    params = SimulationParameters(n_particles=n, snr=snr, fractions=ds.fractions, pixel_size_angstrom=ds.apix, seed=seed)
    simulate_dataset(out, maps, params)
    stack = open_particles(out / "truth.star")
    consensus = reconstruct_from_stack(stack).full_map
    write_map(out / "consensus_lp30.mrc", lowpass_volume(torch.from_numpy(consensus), 30.0, ds.apix).numpy(), ds.apix)
    (out / "README").write_text(f"{ds.description}\nbox {ds.box}, {ds.apix} A/px, {n} particles, SNR {snr}, seed {seed}\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--only", choices=sorted(DATASETS))
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--maps-from", type=Path, help="take the true maps from ROOT/SET/gt_NN.mrc")
    args = parser.parse_args()
    for name, ds in DATASETS.items():
        if args.only and name != args.only:
            continue
        print("made", make(Path(args.root), ds, args.n, args.snr, maps_from=args.maps_from))


if __name__ == "__main__":
    main()
