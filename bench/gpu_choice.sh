#!/usr/bin/env bash
# The model choice on a GPU machine (device tool): which maps a particle's model is chosen
# against. Variants, each its own source tree: "leaveout" (this tree: the models' last maps
# rebuilt without the particle's fold), "halves" (.variants/halves/src: the other half-set's
# maps) and "full" (.variants/full/src: the full maps, which the particle is in).
# Runs the three-state set (12 iterations, --randclassify, as bench_refine.py) and the
# one-state control (600 particles, 2 models split at random: nothing should stick) with each,
# then the other two benchmark sets and the CUDA tests with this tree.
# Carry: .whl (mrcfile, starfile, gemmi wheels), .variants, .gpu (true maps of each set in
# .gpu/maps/SET, the one-state set in .gpu/one_state), all made by bench/gpu_prepare.sh.
# A dry run on a CPU: DEVICE=cpu N=300 IT=2 ITS=2 ONE_IT=2 OUT=/tmp/dry bash bench/gpu_choice.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
# VARIANTS (default "leaveout halves full"), OTHERS=0 (skip the other two sets), ONE=0 (skip the
# one-state control), TESTS=0 (skip the tests) pick a part.
DEVICE=${DEVICE:-cuda} N=${N:-6000} IT=${IT:-12} ITS=${ITS:-4 8 12} ONE_IT=${ONE_IT:-6}
VARIANTS=${VARIANTS:-leaveout halves full} OTHERS=${OTHERS:-1} ONE=${ONE:-1} TESTS=${TESTS:-1}
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  nvidia-smi -L
fi
here=$PWD
export PYTHONPATH=/tmp/site:$here/src
w=/tmp/gw; rm -rf $w; mkdir -p $w $OUT
python3 bench/datasets.py $w --n $N --maps-from .gpu/maps > /dev/null || exit 1
score() {  # score SET RUN ITERATIONS...
  local set=$1 run=$2; shift 2
  for it in "$@"; do
    echo "$(basename $run) it $it $(PYTHONPATH=/tmp/site:$here/src:$here/bench python3 bench/score_run.py $w/$set $run $it)"
  done
}
refine() {  # refine VARIANT SET K ITER [extra...]
  local variant=$1 set=$2 k=$3 iter=$4; shift 4
  local src=$here/src; [ "$variant" != leaveout ] && src=$here/.variants/$variant/src
  PYTHONPATH=/tmp/site:$src python3 -m multirefine.cli.main refine --input $w/$set/particles.star \
    --model $w/$set/consensus_lp30.mrc --nmodels $k --randclassify --iter $iter --path $w/${set}_$variant \
    --device $DEVICE "$@" > $w/log_${set}_$variant.txt 2>&1
  echo "$set $variant rc=$? $(grep -c 'done in' $w/log_${set}_$variant.txt) iterations"
}
# 1. three-state, the three variants at once (the GPU has room; 16 cores)
for v in $VARIANTS; do refine $v three_state 3 $IT & done; wait
for v in $VARIANTS; do score three_state $w/three_state_$v $ITS; done | tee -a $OUT/results.txt
# 2. the one-state control
[ "$ONE" = 1 ] && for v in $VARIANTS; do
  src=$here/src; [ "$v" != leaveout ] && src=$here/.variants/$v/src
  (PYTHONPATH=/tmp/site:$src python3 -m multirefine.cli.main refine --input .gpu/one_state/sim/particles.star \
    --model .gpu/one_state/consensus_lp20.mrc --nmodels 2 --randclassify --iter $ONE_IT --targetres 12 \
    --path $w/one_$v --device $DEVICE > $w/log_one_$v.txt 2>&1;
   echo "one_state $v changed: $(python3 -c "import json; print([round(s['fraction_changed_model'] or 0, 3) for s in json.load(open('$w/one_$v/convergence.json'))])")") &
done 2>&1 | tee -a $OUT/results.txt; wait
# 3. the other sets with this tree
if [ "$OTHERS" = 1 ]; then
  refine leaveout conformational 2 $IT & refine leaveout compositional 2 $IT & wait
  score conformational $w/conformational_leaveout $ITS | tee -a $OUT/results.txt
  score compositional $w/compositional_leaveout $ITS | tee -a $OUT/results.txt
fi
(cd $w && tar czf $OUT/runs.tgz */convergence.json */0_refine_parms.json log_*.txt)
# 4. the device-parametrised tests on cuda
[ "$TESTS" = 1 ] && timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/fourier tests/geometry tests/refine/test_search.py \
  tests/refine/test_polar.py tests/refine/test_model_choice.py 2>&1 | tail -4
