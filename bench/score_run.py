"""Score one run folder against its simulated truth: accuracy and FSC-0.143 per map.

    python bench/score_run.py SIM_DIR RUN_DIR ITERATION
"""

import json
import sys
from pathlib import Path

from bench_refine import score

from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star

sim, run, iteration = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
classes = read_particles_star(run / f"particles_{iteration:02d}.star").metadata["rlnClassNumber"].to_numpy()
k = int(classes.max())
maps = [read_map(run / f"threed_{iteration:02d}_{i:02d}.mrc")[0] for i in range(1, k + 1)]
apix = float(json.loads((sim / "simulation.json").read_text())["pixel_size_angstrom"])
result = score(sim, classes, maps, apix)
seconds = [c["seconds"] for c in json.loads((run / "convergence.json").read_text())]
print(json.dumps({**result, "seconds_per_iteration": seconds}))
