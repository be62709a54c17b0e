#!/bin/bash
# issue 22: the focused choice summed over local poses (src snapshot in $SNAP): the hard set with seeds 1 and 2,
# the easier set2 with seeds 0-2; two runs at a time, one thread each
cd /work/main/bench/work/focused
SNAP=${SNAP:-/tmp/snap3}
run() {  # name set seed
  rm -rf $1; start=$(date +%s)
  PYTHONPATH=$SNAP/src /work/main/.venv/bin/multirefine refine --input $2/consensus_like.star --model $2/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --focusmask $2/focus.mrc --parallel thread:1 --seed $3 --path $1 > log_$1.txt 2>&1
  echo "$1 rc=$? $(( $(date +%s) - start )) s" >> done.txt
}
run run_mfocus_s1 set 1 & run run_mfocus_set2_s0 set2 0; wait
run run_mfocus_s2 set 2 & run run_mfocus_set2_s1 set2 1; wait
run run_mfocus_set2_s2 set2 2
