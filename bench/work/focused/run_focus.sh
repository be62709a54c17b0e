#!/bin/bash
cd /work/main/bench/work/focused
rm -rf run_focus; start=$(date +%s)
/work/main/.venv/bin/multirefine refine --input set/particles.star --model set/consensus_lp20.mrc --nmodels 2 --iter 10 --nosingle --parallel thread:2 --focusmask set/focus.mrc --path run_focus > log_focus.txt 2>&1
echo "focus(shared pose) rc=$? $(( $(date +%s) - start )) s" >> done.txt
