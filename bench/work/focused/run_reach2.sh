#!/bin/bash
# issue 22: the focused choice summed over 33 local rotations (reach 2, src snapshot in $SNAP) instead of 123:
# the hard set's seed 2 and set2's seed 0, one thread each, side by side
cd /work/main/bench/work/focused
SNAP=${SNAP:-/tmp/snap4}
while pgrep -f run_marg_seeds.sh > /dev/null; do sleep 10; done
run() {  # name set seed
  rm -rf $1; start=$(date +%s)
  PYTHONPATH=$SNAP/src /work/main/.venv/bin/multirefine refine --input $2/consensus_like.star --model $2/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --focusmask $2/focus.mrc --parallel thread:1 --seed $3 --path $1 > log_$1.txt 2>&1
  echo "$1 rc=$? $(( $(date +%s) - start )) s" >> done.txt
}
run run_r2_s2 set 2 & run run_r2_set2_s0 set2 0; wait
