#!/usr/bin/env bash
# Time one `multirefine refine` command with the code of two commits, one after the other on
# this machine. Sessions do not always get the same kind of machine, so a time measured on
# another one says nothing about a change: run the old code again here.
# usage: bench/ab_commits.sh OUT_DIR COMMIT_A COMMIT_B -- REFINE_OPTIONS...   (no --path)
# Each commit's code is checked out in a git worktree and run through the project's venv
# (PYTHONPATH=its src); OUT_DIR/COMMIT/ gets the run folder, log.txt and GNU time's time.txt
# (wall time, peak memory), and a summary line per commit is printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
out=$1; a=$2; b=$3; shift 3
[ "${1:-}" = "--" ] && shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
for commit in "$a" "$b"; do
  tree=$(mktemp -d)
  git -C "$repo" worktree add --quiet --detach "$tree" "$commit"
  dir="$out/$commit"
  rm -rf "$dir" && mkdir -p "$dir"
  /usr/bin/time -v -o "$dir/time.txt" env PYTHONPATH="$tree/src" "$python" -m multirefine.cli.main refine \
    "$@" --path "$dir/run" > "$dir/log.txt" 2>&1 || echo "$commit: refine failed, see $dir/log.txt"
  git -C "$repo" worktree remove --force "$tree"
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time.txt")
  peak=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time.txt")
  echo "$commit: wall $wall, peak $((peak / 1024)) MiB; $(grep -E '^(done|multi-model):' "$dir/log.txt" | cut -c1-160)"
done
