#!/bin/bash
# issue 22: --mask (made by `multirefine mask` from the 30 Å consensus map, 24 kDa) against the sphere
cd /work/main/bench/work/realistic
for s in adk_real adk_ideal; do
  for m in sphere mask; do
    extra=""; [ $m = mask ] && extra="--mask $s/mask_consensus.mrc"
    rm -rf run_${s}_$m; start=$(date +%s)
    /work/main/.venv/bin/multirefine refine --input $s/particles.star --models $s/lp30_1.mrc,$s/lp30_2.mrc --iter 4 --noise coloured --nosingle --parallel thread:2 $extra --path run_${s}_$m > log_${s}_$m.txt 2>&1
    echo "$s $m rc=$? $(( $(date +%s) - start )) s" >> mask_done.txt
  done
done
