#!/bin/bash
# issue 22: focused classification on bench/focused.py's set; the same run with and without --focusmask
cd /work/main/bench/work/focused
for f in plain focus; do
  extra=""; [ $f = focus ] && extra="--focusmask set/focus.mrc"
  rm -rf run_$f; start=$(date +%s)
  /work/main/.venv/bin/multirefine refine --input set/particles.star --model set/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --parallel thread:2 $extra --path run_$f > log_$f.txt 2>&1
  echo "$f rc=$? $(( $(date +%s) - start )) s" >> done.txt
done
