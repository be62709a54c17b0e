#!/bin/bash
# issue 20: an explicit junk model: a third model seeded with the consensus map's rotational average
cd /work/main/bench/work/realistic
s=adk_real
rm -rf run_${s}_junkclass; start=$(date +%s)
/work/main/.venv/bin/multirefine refine --input $s/particles.star --models $s/lp30_1.mrc,$s/lp30_2.mrc,$s/blob_lp30.mrc --iter 4 --noise coloured --nosingle --nosplitmerge --parallel thread:2 --path run_${s}_junkclass > log_${s}_junkclass.txt 2>&1
echo "$s junkclass rc=$? $(( $(date +%s) - start )) s" >> junk_done.txt
