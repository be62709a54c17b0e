#!/bin/bash
# A whole run with --nmodels auto, or one given the true K (--nmodels 4, seeded by a random split), 6 main iterations, k4_s1
# bash run_refine.sh auto|given
cd /work/main/bench/work/count
S=k4_s1 mode=$1
n="--nmodels auto"; [ "$mode" = given ] && n="--nmodels 4"
rm -rf run_${S}_$mode; start=$(date +%s)
/work/main/.venv/bin/multirefine refine --input $S/particles.star --model $S/consensus_lp20.mrc $n --iter 6 --nosingle \
  --j 1 --path run_${S}_$mode > log_run_${S}_$mode.txt 2>&1
echo "$S $mode rc=$? $(( $(date +%s) - start )) s" >> refine_done.txt
