#!/bin/bash
# a second focused set (bench/focused.py make set2 --n 3000 --snr 0.1 --seed 1), from consensus-like poses
cd /work/main/bench/work/focused
for f in plain focus; do
  extra=""; [ $f = focus ] && extra="--focusmask set2/focus.mrc"
  rm -rf run_set2_$f; start=$(date +%s)
  /work/main/.venv/bin/multirefine refine --input set2/consensus_like.star --model set2/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --parallel thread:1 $extra --path run_set2_$f > log_set2_$f.txt 2>&1
  echo "set2 $f rc=$? $(( $(date +%s) - start )) s" >> done.txt
done
