#!/usr/bin/env bash
# The whole CUDA path on a GPU machine (device tool): each benchmark set refined as
# bench_refine.py refines it (12 iterations, --randclassify) and then each model on its own
# (the default; --nosingle off), timed and scored against the truth; the test suite with
# --device auto (so cuda; the end-to-end tests take the adenylate kinase models from the
# two-file stand-in for mdanalysistests in .gpu/stubs); --continue on cuda; and the same
# machine's 16 CPU cores on the conformational set for 2 iterations, the CPU baseline; then
# bench/profile_iteration.py on that set (PROFILE=0 skips it).
# Carry .whl (mrcfile, starfile, gemmi wheels) and .gpu (each set's true maps in
# .gpu/maps/SET), both made by bench/gpu_prepare.sh.
# A dry run on a CPU: DEVICE=cpu N=300 IT=2 SETS=conformational TESTS=0 OUT=/tmp/dry bash bench/gpu_sets.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
# The eighth session ran SETS="conformational three_state compositional" BASELINE=1 PROFILE=0
# (BENCHMARKS.md, "On a GPU"), the ninth the defaults below with a batch-2000 profile too
# ("The profile on the device"), the thirteenth SETS=three_state TESTS=1 PROFILE=0 (split and
# merge on cuda, the whole suite: 89 s with -n 12; bench/results/gpu_split_merge_h200/).
# It then ran `SETS= TESTS=0 PROFILE=1` (the profile alone, with the larger chunk; an empty
# SETS runs no set). Each set named is simulated here; .gpu/maps must hold its maps.
DEVICE=${DEVICE:-cuda} N=${N:-6000} IT=${IT:-12} SETS=${SETS-conformational}
TESTS=${TESTS:-1} BASELINE=${BASELINE:-0} PROFILE=${PROFILE:-1}
here=$PWD
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  nvidia-smi -L
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
fi
export PYTHONPATH=/tmp/site:$here/src:$here/bench
w=/tmp/gs; rm -rf $w; mkdir -p $w $OUT
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
need=$SETS; { [ "$PROFILE" = 1 ] || [ "$BASELINE" = 1 ]; } && need="$need conformational"
for set in $(echo $need | tr ' ' '\n' | sort -u); do  # only the sets this call uses
  python3 bench/datasets.py $w --only $set --n $N --maps-from .gpu/maps > /dev/null || exit 1
done
stamp "sets simulated"
for set in $SETS; do
  k=2; [ $set = three_state ] && k=3
  /usr/bin/time -v -o $w/time_$set.txt python3 -m multirefine.cli.main refine --input $w/$set/particles.star \
    --model $w/$set/consensus_lp30.mrc --nmodels $k --randclassify --iter $IT --path $w/run_$set \
    --device $DEVICE > $w/log_$set.txt 2>&1
  stamp "$set rc=$? $(grep -E 'Elapsed|Maximum resident' $w/time_$set.txt | sed 's/^\s*//' | tr '\n' ';')"
  grep -E "^multi-model|on its own|peak GPU" $w/log_$set.txt
  echo "$set $(python3 bench/score_run.py $w/$set $w/run_$set $IT)" | tee -a $OUT/scores.txt
  python3 -c "import json; [print('split and merge at iteration', i + 1, c['split_merge']) for i, c in
    enumerate(json.load(open('$w/run_$set/convergence.json'))) if c.get('split_merge')]" | tee -a $OUT/scores.txt
done
if [ -d $w/run_conformational ]; then  # --continue on this device: one more iteration from state.npz
  python3 -m multirefine.cli.main refine --continue $w/run_conformational --iter $((IT + 1)) --nosingle \
    --device $DEVICE > $w/log_continue.txt 2>&1
  stamp "continue rc=$? $(grep -E '^multi-model' $w/log_continue.txt)"
  echo "continued $(python3 bench/score_run.py $w/conformational $w/run_conformational $((IT + 1)))" | tee -a $OUT/scores.txt
fi
if [ "$BASELINE" = 1 ]; then
  python3 -m multirefine.cli.main refine --input $w/conformational/particles.star \
    --model $w/conformational/consensus_lp30.mrc --nmodels 2 --randclassify --iter 2 --nosingle \
    --path $w/cpu16 --device cpu --parallel thread:16 > $w/log_cpu16.txt 2>&1
  stamp "cpu thread:16 conformational, 2 iterations: $(grep '^multi-model' $w/log_cpu16.txt)"
  echo "cpu16 $(python3 -c "import json; print([round(c['seconds'], 1) for c in json.load(open('$w/cpu16/convergence.json'))])")" | tee -a $OUT/scores.txt
fi
(cd $w && tar czf $OUT/runs.tgz log_*.txt time_*.txt */convergence.json */0_refine_parms.json */model_*/*.json 2>/dev/null)
if [ "$TESTS" = 1 ]; then
  # one host thread per worker: the ninth session's -n 14 with torch's default 16 threads each
  # did not finish in 240 s (bench/results/gpu_profile_h200/)
  OMP_NUM_THREADS=1 PYTHONPATH=$PYTHONPATH:$here/.gpu/stubs timeout 300 python3 -m pytest -q -p no:cacheprovider -n 12 --durations=8 \
    tests > $OUT/tests.txt 2>&1
  stamp "tests rc=$?"; tail -25 $OUT/tests.txt
  # the tests that use another test's run folder skip when xdist puts them on another worker
  OMP_NUM_THREADS=4 PYTHONPATH=$PYTHONPATH:$here/.gpu/stubs timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:xdist \
    tests/refine/test_refine_e2e.py -k "low_passed or continue or report_is_rebuilt" > $OUT/tests_in_order.txt 2>&1
  stamp "tests that build on another's run, in one process: rc=$?"; tail -3 $OUT/tests_in_order.txt
fi
if [ "$PROFILE" = 1 ]; then  # where an iteration's time goes on this device (wall against device busy)
  python3 bench/profile_iteration.py $w/conformational --n $N --iter 3 --device $DEVICE --threads 16 \
    --trace $w/trace.json > $OUT/profile.txt 2>&1
  stamp "profile rc=$?"; grep -E "^wall|^device busy" $OUT/profile.txt
  gzip -c $w/trace.json > $OUT/trace.json.gz
  for c in 67108864; do  # larger search chunks (2**26 entries): fewer, bigger kernels
    python3 bench/profile_iteration.py $w/conformational --n $N --iter 3 --device $DEVICE --threads 16 --batch 2000 \
      --chunk $c --top 0 2>&1 | grep -E "^wall|^device busy" | sed "s/^/batch 2000, chunk $c: /"
  done | tee -a $OUT/profile.txt
fi
