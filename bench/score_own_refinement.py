"""Each model's own refinement (``RUN/model_MM/``) against the truth, beside what it claims.

    python bench/score_own_refinement.py RUN SET_FOLDER [--apix A]

For every ``model_MM/threed_final.mrc``: its FSC at 0.5 and 0.143 against the true map it
matches best (``SET_FOLDER/gt_NN.mrc``, translation aligned only:
:func:`multirefine.evaluate.map_resolution_against`), the resolution its half maps claim at
0.143 (the last row of its ``convergence.json``) and, where the run had ``--mask``, the claim
within the mask, solvent-corrected (``fsc_masked.json``). A half-map FSC of 0.143 should match
an FSC of 0.5 against the truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multirefine.evaluate import map_resolution_against
from multirefine.io.maps import read_map


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("set_folder", type=Path)
    args = parser.parse_args(argv)
    truths = sorted(args.set_folder.glob("gt_*.mrc"))
    for folder in sorted(args.run.glob("model_*")):
        if not (folder / "threed_final.mrc").exists():
            continue
        volume, apix = read_map(folder / "threed_final.mrc")
        scores = [(map_resolution_against(volume, read_map(t)[0], apix), t.name) for t in truths]
        (at_05, at_0143), name = min(scores, key=lambda s: s[0][0])
        claims = json.loads((folder / "convergence.json").read_text())
        claim = (claims if isinstance(claims, list) else claims["iterations"])[-1]["resolution_0143_angstrom"]
        masked_file = folder / "fsc_masked.json"
        masked = json.loads(masked_file.read_text())["resolution_0143_angstrom"] if masked_file.exists() else None
        print(f"{args.run.name} {folder.name} ({name}): against the truth {at_05:.1f} / {at_0143:.1f} Å (FSC 0.5 / "
              f"0.143); claims {claim:.1f} Å" + ("" if masked is None else f", {masked:.1f} Å within the mask"))


if __name__ == "__main__":
    main()
