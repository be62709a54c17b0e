"""Score one run folder against its simulated truth: accuracy and FSC-0.143 per map.

    python bench/score_run.py SIM_DIR RUN_DIR ITERATION

When the run also refined each model on its own after this iteration
(``model_MM/threed_final.mrc``, ``finished.json``), those maps are scored too, each against
the true map its model's particles were matched to.
"""

import json
import sys
from pathlib import Path

from bench_refine import score

from multirefine.evaluate import classification_accuracy, map_resolution_against
from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star

sim, run, iteration = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
classes = read_particles_star(run / f"particles_{iteration:02d}.star").metadata["rlnClassNumber"].to_numpy()
k = int(classes.max())
maps = [read_map(run / f"threed_{iteration:02d}_{i:02d}.mrc")[0] for i in range(1, k + 1)]
apix = float(json.loads((sim / "simulation.json").read_text())["pixel_size_angstrom"])
result = score(sim, classes, maps, apix)
finals = [run / f"model_{i:02d}" / "threed_final.mrc" for i in range(1, k + 1)]
markers = [run / f"model_{i:02d}" / "finished.json" for i in range(1, k + 1)]
if all(f.exists() for f in finals) and all(
    json.loads(m.read_text())["after_iteration"] == iteration for m in markers if m.exists()
):  # made from this iteration's classes (older runs have no finished.json)
    truth = read_particles_star(sim / "truth.star").metadata["rlnClassNumber"].to_numpy()
    matching = classification_accuracy(truth, classes).matching
    result["refined_resolution_0143_angstrom"] = [
        map_resolution_against(read_map(finals[matching[i]])[0], read_map(sim / f"gt_{i + 1:02d}.mrc")[0], apix)[1]
        for i in range(k)
    ]
seconds = [c["seconds"] for c in json.loads((run / "convergence.json").read_text())]
print(json.dumps({**result, "seconds_per_iteration": seconds}))
