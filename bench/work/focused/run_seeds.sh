#!/bin/bash
# the local focused runs again with other seeds (random split and half-sets)
cd /work/main/bench/work/focused
for seed in 1 2; do
  for f in plain focus; do
    extra=""; [ $f = focus ] && extra="--focusmask set/focus.mrc"
    rm -rf run_local_${f}_s$seed; start=$(date +%s)
    /work/main/.venv/bin/multirefine refine --input set/consensus_like.star --model set/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --parallel thread:1 --seed $seed $extra --path run_local_${f}_s$seed > log_local_${f}_s$seed.txt 2>&1
    echo "local $f seed $seed rc=$? $(( $(date +%s) - start )) s" >> done.txt
  done
done
