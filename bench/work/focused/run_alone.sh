#!/bin/bash
# issue 22: the focused choice at the pose alone (the code before, 00ea9e6, a worktree in $SNAP), for the times
# the same runs as run_reach2.sh
cd /work/main/bench/work/focused
SNAP=${SNAP:-/tmp/wt_old}
while pgrep -f run_marg_seeds.sh > /dev/null; do sleep 10; done
run() {  # name set seed
  rm -rf $1; start=$(date +%s)
  PYTHONPATH=$SNAP/src /work/main/.venv/bin/multirefine refine --input $2/consensus_like.star --model $2/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --focusmask $2/focus.mrc --parallel thread:1 --seed $3 --path $1 > log_$1.txt 2>&1
  echo "$1 rc=$? $(( $(date +%s) - start )) s" >> done.txt
}
run run_alone_s2 set 2 & run run_alone_set2_s0 set2 0; wait
