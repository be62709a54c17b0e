#!/usr/bin/env bash
# Assignment x score variants on the conformational set, 20 iterations each, on a GPU
# machine (device tool), scored at iterations 8, 14 and 20. Run after bench/gpu_check.sh
# on the same warm machine (it reuses /tmp/gpuwork: the simulated set and consensus map).
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
w=/tmp/gpuwork
for cfg in "ls soft" "cc hard" "ls hard" "cc soft"; do
  set -- $cfg
  extra=""; [ "$2" = soft ] && extra="--soft"
  python3 -m multirefine.cli.main refine --input $w/sim/particles.star --model $w/consensus_lp30.mrc --nmodels 2 \
    --randphase --iter 20 --path $w/r_$1_$2 --device cuda --score $1 $extra > $w/log_$1_$2.txt 2>&1
  echo "$cfg"; tail -1 $w/log_$1_$2.txt
  for it in 8 14 20; do python3 bench/score_run.py $w/sim $w/r_$1_$2 $it; done
done
