#!/usr/bin/env bash
# What bench/gpu_choice.sh carries to the GPU machine, made here (needs the benchmark sets in
# bench/work from bench/datasets.py, and .venv). Each folder is ignored through .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.variants/ /.gpu/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
# the packages that machine's image lacks
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  mrcfile==1.5.4 starfile==0.5.13 gemmi==0.7.5
# the model-choice variants compared: the other half-set's maps, the full maps
rm -rf .variants && mkdir -p .variants/halves .variants/full
git archive c011bcb src | tar -x -C .variants/halves
git archive e311989 src | tar -x -C .variants/full
# the sets' true maps (the particles are simulated there again), and the one-state control
for s in compositional conformational three_state; do
  [ -d bench/work/$s ] || { echo "bench/work/$s missing (bench/datasets.py makes it): its maps are not carried"; continue; }
  mkdir -p .gpu/maps/$s && cp bench/work/$s/gt_0*.mrc .gpu/maps/$s/; done
.venv/bin/python - <<'PY'
"""The e2e test's one-state set (tests/refine/test_refine_e2e.py, fixture one_state)."""
from pathlib import Path

import torch

from multirefine.cli.demo import adenylate_kinase_models
from multirefine.fourier.filters import lowpass_volume
from multirefine.io.maps import write_map
from multirefine.io.particles import open_particles
from multirefine.refine.reconstruct import reconstruct_from_stack
from multirefine.simulate import SimulationParameters, maps_from_models, read_atomic_model, simulate_dataset

apix, box, root = 2.4, 40, Path(".gpu/one_state")
maps = maps_from_models([read_atomic_model(adenylate_kinase_models()[0])], box, apix, 2 * apix)
simulate_dataset(root / "sim", maps, SimulationParameters(n_particles=600, snr=0.1, fractions=[1.0],
                                                          pixel_size_angstrom=apix, seed=2))
consensus = reconstruct_from_stack(open_particles(root / "sim" / "truth.star")).full_map
write_map(root / "consensus_lp20.mrc", lowpass_volume(torch.from_numpy(consensus), 20.0, apix).numpy(), apix)
PY
# The two adenylate kinase models the end-to-end tests and the demo take from mdanalysistests
# (113 MB, too big to carry): a package of that name holding only them, put on PYTHONPATH by
# bench/gpu_sets.sh for the tests.
mkdir -p .gpu/stubs/MDAnalysisTests/data
for f in adk_open.pdb adk_closed.pdb; do
  .venv/bin/python -c "import os, MDAnalysisTests as m; print(os.path.join(os.path.dirname(m.__file__), 'data', '$f'))" \
    | xargs -I{} cp {} .gpu/stubs/MDAnalysisTests/data/
done
cat > .gpu/stubs/MDAnalysisTests/__init__.py <<'PY'
"""The two files of mdanalysistests that multirefine's tests use, for a machine without it."""
PY
cat > .gpu/stubs/MDAnalysisTests/datafiles.py <<'PY'
import os

_DATA = os.path.join(os.path.dirname(__file__), "data")
PDB_small = os.path.join(_DATA, "adk_open.pdb")
PDB_closed = os.path.join(_DATA, "adk_closed.pdb")
PY
du -sh .whl .variants .gpu
