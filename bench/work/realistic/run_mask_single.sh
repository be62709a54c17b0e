#!/bin/bash
# each model refined on its own after run_mask.sh's runs (--continue --single): claims against the truth
cd /work/main/bench/work/realistic
for s in adk_ideal adk_real; do
  for m in mask sphere; do
    start=$(date +%s)
    /work/main/.venv/bin/multirefine refine --continue run_${s}_$m --single --parallel thread:2 > log_${s}_${m}_single.txt 2>&1
    echo "$s $m single rc=$? $(( $(date +%s) - start )) s" >> mask_done.txt
  done
done
