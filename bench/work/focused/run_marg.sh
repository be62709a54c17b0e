#!/bin/bash
# issue 22: the focused choice summed over local poses (snapshot of src in $SNAP); seeds 0-2 on the hard set, seed 0 on set2
cd /work/main/bench/work/focused
SNAP=${SNAP:-/tmp/snap1}
run() {  # name input extra...
  name=$1; input=$2; shift 2
  rm -rf $name; start=$(date +%s)
  PYTHONPATH=$SNAP/src /work/main/.venv/bin/multirefine refine --input $input --nmodels 2 --iter 10 --nosingle --focusmask ${input%/*}/focus.mrc --path $name "$@" > log_$name.txt 2>&1
  echo "$name rc=$? $(( $(date +%s) - start )) s" >> done.txt
}
run ${NAME:-run_marg_s0} set/consensus_like.star --model set/consensus_lp20.mrc --parallel thread:2
