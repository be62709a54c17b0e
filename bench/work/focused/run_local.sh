#!/bin/bash
# issue 22: focused classification from a consensus refinement's poses (stand-in: true poses turned by
# 9 degrees median, bench/input_poses.py), local searches with the default prior; with and without --focusmask
cd /work/main/bench/work/focused
while pgrep -f run_focus.sh > /dev/null; do sleep 10; done
for f in plain focus; do
  extra=""; [ $f = focus ] && extra="--focusmask set/focus.mrc"
  rm -rf run_local_$f; start=$(date +%s)
  /work/main/.venv/bin/multirefine refine --input set/consensus_like.star --model set/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --parallel thread:2 $extra --path run_local_$f > log_local_$f.txt 2>&1
  echo "local $f rc=$? $(( $(date +%s) - start )) s" >> done.txt
done
