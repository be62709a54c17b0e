#!/bin/bash
# --nmodels auto's count on every set (bench/count_models.py make . --seeds 0,1,2), two at a time, one thread each
cd /work/main/bench/work/count
ls -d k?_s? | xargs -P 2 -I{} sh -c '(time ../../../.venv/bin/python ../../count_models.py count {} --threads 1) > log_{}.txt 2>&1; echo "{} rc=$?" >> done.txt'
