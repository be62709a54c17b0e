#!/bin/bash
# issue 22: the 33-rotation focused choice (src snapshot in $SNAP) on the other seeds: the hard set's 0 and 1, set2's 1 and 2
cd /work/main/bench/work/focused
SNAP=${SNAP:-/tmp/snap4}
while pgrep -f "run_alone.sh|run_reach2.sh" > /dev/null; do sleep 10; done
run() {  # name set seed
  rm -rf $1; start=$(date +%s)
  PYTHONPATH=$SNAP/src /work/main/.venv/bin/multirefine refine --input $2/consensus_like.star --model $2/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --focusmask $2/focus.mrc --parallel thread:1 --seed $3 --path $1 > log_$1.txt 2>&1
  echo "$1 rc=$? $(( $(date +%s) - start )) s" >> done.txt
}
run run_r2_s0 set 0 & run run_r2_set2_s1 set2 1; wait
run run_r2_s1 set 1 & run run_r2_set2_s2 set2 2; wait
