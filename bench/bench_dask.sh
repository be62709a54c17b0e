#!/usr/bin/env bash
# The Dask path against the same cores used in one process (BENCHMARKS.md, "The particle loops
# on a Dask cluster"): one benchmark set refined twice from the same start, first with
# --parallel thread:W, then on a local scheduler with W worker processes of one thread each
# (--parallel dask:SCHEDULER_FILE); per-stage times from -v 1, GNU time for this process, the
# workers' largest RSS sampled, and how far the two runs' poses and maps differ.
#   bench/bench_dask.sh [SET_FOLDER] [ITER] [WORKERS] [OUT]
#   bench/bench_dask.sh bench/work/conformational 2 2 /tmp/bench_dask
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
set_dir=$(cd "${1:-$here/bench/work/conformational}" && pwd); iter=${2:-2}; workers=${3:-2}; out=${4:-/tmp/bench_dask}
bin=$here/.venv/bin
k=$(ls "$set_dir"/gt_*.mrc | wc -l)
rm -rf "$out" && mkdir -p "$out"
run() {  # run NAME PARALLEL
  /usr/bin/time -v -o "$out/time_$1.txt" "$bin/multirefine" refine --input "$set_dir/particles.star" \
    --model "$set_dir/consensus_lp30.mrc" --nmodels "$k" --randclassify --iter "$iter" --nosingle -v 1 \
    --path "$out/$1" --parallel "$2" > "$out/log_$1.txt" 2>&1
  echo "$1: rc $?; $(grep -E 'Elapsed|Maximum resident' "$out/time_$1.txt" | sed 's/^\s*//' | tr '\n' ';')"
  grep -E "stages|done in" "$out/log_$1.txt"
}
run here "thread:$workers"
"$bin/dask" scheduler --scheduler-file "$out/scheduler.json" --dashboard-address :0 > "$out/scheduler.log" 2>&1 &
scheduler=$!
sleep 5
"$bin/dask" worker --scheduler-file "$out/scheduler.json" --nworkers "$workers" --nthreads 1 \
  --dashboard-address :0 > "$out/workers.log" 2>&1 &
worker=$!
( while kill -0 $worker 2> /dev/null; do  # the largest RSS of the worker processes (children of the CLI), kB
    children=$(pgrep -d, -P $worker)
    [ -n "$children" ] && ps -o rss= -p "$children" | sort -n | tail -1
    sleep 3
  done > "$out/worker_rss.txt" ) &
sleep 10
run dask "dask:$out/scheduler.json"
echo "largest worker RSS $(sort -n "$out/worker_rss.txt" | tail -1) kB"
kill $worker $scheduler 2> /dev/null
wait 2> /dev/null
"$bin/python" - "$out" "$iter" "$k" <<'PY'
import sys
import numpy as np
from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star
out, it, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a, b = (read_particles_star(f"{out}/{r}/particles_{it:02d}.star").metadata for r in ("here", "dask"))
angle = np.max([np.abs(a[c].to_numpy() - b[c].to_numpy()) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], 0)
angle = np.minimum(angle, 360 - angle)  # -180 and 180 are one angle
print(f"same model {np.mean(a.rlnClassNumber.to_numpy() == b.rlnClassNumber.to_numpy()):.4f}; "
      f"{int((angle > 0.01).sum())} of {len(angle)} particles at another pose (largest {angle.max():.2f} deg)")
for m in range(1, k + 1):
    x, y = (read_map(f"{out}/{r}/threed_{it:02d}_{m:02d}.mrc")[0] for r in ("here", "dask"))
    print(f"map {m}: largest difference {np.abs(x - y).max() / np.abs(x).max():.2e} of its largest value")
PY
