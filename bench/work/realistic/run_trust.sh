#!/bin/bash
# issue 20: claimed against true resolution with each model's own refinement; the poses' change per iteration
cd /work/main/bench/work/realistic
for s in "$@"; do
  rm -rf run_${s}_trust; start=$(date +%s)
  /work/main/.venv/bin/multirefine refine --input $s/particles.star --models $s/lp30_1.mrc,$s/lp30_2.mrc --iter 4 --noise coloured --parallel thread:2 --path run_${s}_trust > log_${s}_trust.txt 2>&1
  echo "$s trust rc=$? $(( $(date +%s) - start )) s" >> trust_done.txt
done
