#!/usr/bin/env bash
# The CUDA path on a GPU machine (device tool): the device-parametrised tests, then one
# timed refinement of the conformational benchmark set (6000 particles, box 64) on cuda.
# Expects wheels of mrcfile, starfile, gemmi in .whl (that image lacks them) and the
# set's gt maps in bench/gpu_maps (simulated there, since the stack is too big to carry).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider tests/fourier tests/geometry tests/refine/test_search.py tests/refine/test_polar.py tests/cli 2>&1 | tail -4
work=/tmp/gpuwork; mkdir -p $work
python3 -m multirefine.cli.main simulate $work/sim --maps bench/gpu_maps/gt_01.mrc,bench/gpu_maps/gt_02.mrc \
  --n 6000 --snr 0.05 --seed 0 > /dev/null
python3 - <<'PY'
import torch
from multirefine.io.particles import open_particles
from multirefine.refine.reconstruct import reconstruct_from_stack
from multirefine.fourier.filters import lowpass_volume
from multirefine.io.maps import write_map
s = open_particles('/tmp/gpuwork/sim/truth.star')
m = reconstruct_from_stack(s, device='cuda').full_map
write_map('/tmp/gpuwork/consensus_lp30.mrc', lowpass_volume(torch.from_numpy(m), 30.0, s.pixel_size_angstrom).numpy(), s.pixel_size_angstrom)
PY
/usr/bin/time -v -o $work/time.txt python3 -m multirefine.cli.main refine --input $work/sim/particles.star \
  --model $work/consensus_lp30.mrc --nmodels 2 --randphase --iter 20 --path $work/run --device cuda
grep -E "Elapsed|Maximum resident" $work/time.txt
python3 bench/score_run.py $work/sim $work/run 8
python3 bench/score_run.py $work/sim $work/run 20
cp $work/run/convergence.json $OUT/gpu_convergence.json
