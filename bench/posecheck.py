"""Each model's caution (multirefine.refine.posecheck) beside its claim and its truth.

    python bench/posecheck.py RUN SET [--label TEXT] [--jsonl FILE]

For each ``RUN/model_MM/`` (a model's own refinement): the share of its particles whose
poses moved more than 100 degrees from the classification's (``particles_model_MM.star``
against ``model_MM/particles_final.star``, computed here from the files, so runs made before
``poses_moved.json`` was written count too), the half maps' claim (FSC 0.143, the last row of
``model_MM/convergence.json``) and the map against the true map it matches best (``SET/gt_*.mrc``,
FSC 0.5 after a rotational alignment with a hand check, as ``multirefine demo`` compares).
A claim is honest where the two agree (Rosenthal and Henderson).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multirefine.evaluate import map_resolution_against
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star
from multirefine.refine.posecheck import poses_moved


def _key(names):
    return [n.split("@")[0].lstrip("0") + "@" + Path(n.split("@")[1]).name for n in names]


def check(run: Path, truth_dir: Path) -> list[dict]:
    truths = sorted(truth_dir.glob("gt_*.mrc"))
    parms = json.loads((run / "0_refine_parms.json").read_text())
    symmetries = parms.get("symmetries", ["C1"])
    rows = []
    for folder in sorted(run.glob("model_*")):
        if not (folder / "particles_final.star").exists():
            continue
        m = int(folder.name[-2:])
        before = read_particles_star(run / f"particles_model_{m:02d}.star").metadata
        after = read_particles_star(folder / "particles_final.star").metadata
        before.index, after.index = _key(before["rlnImageName"]), _key(after["rlnImageName"])
        common = after.index.intersection(before.index)
        sym = symmetries[m - 1] if len(symmetries) >= m else symmetries[0]
        moved = poses_moved(before.loc[common], after.loc[common], symmetry_operators(sym))
        claim = json.loads((folder / "convergence.json").read_text())[-1]["resolution_0143_angstrom"]
        volume, apix = read_map(folder / "threed_final.mrc")
        true = min(map_resolution_against(volume, read_map(t)[0], apix)[0] for t in truths)
        rows.append({"run": str(run), "model": m, "particles": moved.particles, "far_share": moved.far_share,
                     "median_deg": moved.median_deg, "caution": moved.caution, "claim": claim, "true_05": true})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("set", type=Path)
    parser.add_argument("--label", default="")
    parser.add_argument("--jsonl", type=Path, default=None)
    args = parser.parse_args()
    for row in check(args.run, args.set):
        row["label"] = args.label
        print(f"{args.label or args.run.name} model {row['model']}: {row['particles']} particles, "
              f"{100 * row['far_share']:.0f} % moved > 100° (median {row['median_deg']:.0f}°)"
              f"{' CAUTION' if row['caution'] else ''}; claims {row['claim']:.1f} Å, true {row['true_05']:.1f} Å "
              f"(FSC 0.5), claim better by {row['true_05'] - row['claim']:+.1f} Å", flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
