"""A RELION 3-D classification's iteration as a multirefine run folder, to score it alike.

    python bench/relion_as_run.py RELION_PREFIX ITERATION OUT_FOLDER
    python bench/score_realistic.py OUT_FOLDER SET_FOLDER

``RELION_PREFIX`` is relion_refine's ``--o`` (e.g. ``SET/relion/run``). Links
``PREFIX_itNNN_data.star`` as ``particles_NN.star`` and ``PREFIX_itNNN_classMMM.mrc`` as
``threed_NN_MM.mrc`` into ``OUT_FOLDER`` (no ``convergence.json``: RELION's classification
claims no half-map resolution).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    prefix, iteration, out = (argv or sys.argv[1:])[:3]
    prefix, iteration, out = Path(prefix).resolve(), int(iteration), Path(out)
    data = Path(f"{prefix}_it{iteration:03d}_data.star")
    if not data.is_file():
        raise SystemExit(f"{data}: not found")
    out.mkdir(parents=True, exist_ok=True)
    links = {out / f"particles_{iteration:02d}.star": data}
    for cls in sorted(prefix.parent.glob(f"{prefix.name}_it{iteration:03d}_class*.mrc")):
        links[out / f"threed_{iteration:02d}_{int(cls.stem[-3:]):02d}.mrc"] = cls
    for link, target in links.items():
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    print(f"{out}: {len(links) - 1} maps and the particles of iteration {iteration}")


if __name__ == "__main__":
    main()
