#!/bin/bash
# --nmodels auto's count (three seeds per split, the default since the twenty-fourth session) on the sets of
# 2-4 states (bench/count_models.py make . --seeds 0,1,2), two at a time, one thread each; logs in seeds3/
cd /work/main/bench/work/count
mkdir -p seeds3
ls -d k[234]_s? | xargs -P 2 -I{} sh -c '(time ../../../.venv/bin/python ../../count_models.py count {} --threads 1) > seeds3/log_{}.txt 2>&1; echo "{} rc=$?" >> seeds3/done.txt'
