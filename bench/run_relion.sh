#!/usr/bin/env bash
# RELION 3.1 3-D classification on one benchmark set, the baseline command of docs/architecture.md, "How we measure".
# usage: [REF=refs.star] bench/run_relion.sh SET_FOLDER K DIAMETER_A [ITER] [THREADS] [CONTINUE_FROM]
# REF: the reference(s), relative to SET_FOLDER (default consensus_lp30.mrc, seeded into K classes;
# a STAR file of K maps, e.g. bench/realistic.py's refs_lp30.star, gives each class its own).
# Writes SET_FOLDER/relion/run_*, relion/time*.txt (GNU time: wall, peak RSS) and
# relion/cpu*.csv (bench/cpu_log.py: CPU seconds and memory over time). CONTINUE_FROM = the
# last finished iteration (e.g. 2) resumes a stopped run from run_it002_optimiser.star.
set -euo pipefail
# Started with `setsid nice -n 19 ...`, RELION has its own session, and the kernel's autogroups share
# the CPU between sessions as equals whatever the nice value (measured: 135 % CPU for RELION at nice
# 19 against 90 % for the test suite beside it). The autogroup's own nice makes it yield.
niceness=$(nice)
if [ "$niceness" -gt 0 ] && [ -w /proc/self/autogroup ]; then echo "$niceness" > /proc/self/autogroup || true; fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../.venv/bin/python}
set_dir=$1; k=$2; diameter=$3; iter=${4:-25}; threads=${5:-2}; from=${6:-}
mkdir -p "$set_dir/relion"
cd "$set_dir"
if [ -n "$from" ]; then
  # --continue writes iteration $from's files again: keep when each iteration really ended.
  "$python" "$here/relion_checkpoint.py" stamps .
  tag=$(printf "_from%03d" "$from")
  "$python" "$here/cpu_log.py" "relion/cpu$tag.csv" -- \
    /usr/bin/time -v -o "relion/time$tag.txt" relion_refine --continue "$(printf "relion/run_it%03d_optimiser.star" "$from")" \
    --o relion/run --iter "$iter" --j "$threads" --pool 30 --dont_combine_weights_via_disc >> relion/stdout.txt 2>&1
  exit
fi
"$python" "$here/cpu_log.py" relion/cpu.csv -- \
  /usr/bin/time -v -o relion/time.txt relion_refine --i particles.star --o relion/run --ref "${REF:-consensus_lp30.mrc}" \
  --firstiter_cc --ini_high 30 --K "$k" --tau2_fudge 4 --iter "$iter" \
  --particle_diameter "$diameter" --ctf --flatten_solvent --zero_mask --oversampling 1 \
  --healpix_order 2 --offset_range 5 --offset_step 2 --sym C1 --norm --scale \
  --j "$threads" --pool 30 --dont_combine_weights_via_disc --random_seed 0 > relion/stdout.txt 2>&1
