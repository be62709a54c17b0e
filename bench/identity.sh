#!/usr/bin/env bash
# Same results before and after a change that must not change them (a refactoring): run a
# set of small `multirefine refine` jobs that reach every stage of the iteration (two
# models from maps; three from one map with --randclassify and a split and merge trial;
# --sep 2; --soft; --usefilt; --continue; each model on its own) with the code of COMMIT,
# and write the md5 of every result file (maps, STAR, state, FSC and convergence records
# without their timings) to OUT/COMMIT.md5. Two commits' files are then compared with diff.
# usage: bench/identity.sh OUT COMMIT [SRC]   (data are simulated into OUT/data once; with SRC,
#        a copy of a src/ folder not committed yet is run instead, under the name COMMIT)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
out=$1; commit=$2
mkdir -p "$out"; out=$(cd "$out" && pwd)
tree=$(mktemp -d)
if [ -n "${3:-}" ]; then
  cp -r "$3" "$tree/src"
  trap 'rm -rf "$tree"' EXIT
else
  git -C "$repo" worktree add --quiet --detach "$tree" "$commit"
  trap 'git -C "$repo" worktree remove --force "$tree"' EXIT
fi
export PYTHONPATH="$tree/src:$repo/tests"
if [ ! -f "$out/data/done" ]; then
  mkdir -p "$out/data"
  "$python" - "$out/data" <<'PY'
import sys
from pathlib import Path
from helpers import simulate_adk
root = Path(sys.argv[1])
(root / "two").mkdir(); (root / "three").mkdir()
simulate_adk(root / "two" / "set", 800, [0.5, 0.5], seed=3, lowpass_angstrom=20.0)
simulate_adk(root / "three" / "set", 900, [0.34, 0.33, 0.33], seed=5, half_way=True, lowpass_angstrom=20.0)
PY
  touch "$out/data/done"
fi
runs="$out/$commit"; rm -rf "$runs"; mkdir -p "$runs"
d=$out/data
refine() { name=$1; shift; "$python" -m multirefine.cli.main refine "$@" --path "$runs/$name" > "$runs/$name.log" 2>&1 \
  || { echo "$commit: $name failed"; tail -5 "$runs/$name.log"; }; }
two="--input $d/two/set/particles.star --models $d/two/lp_1.mrc,$d/two/lp_2.mrc"
refine models $two --iter 3 --singleiter 2 --parallel thread:2
refine sep $two --iter 2 --sep 2 --nosingle --parallel thread:2
refine soft $two --iter 2 --soft --nosingle --parallel thread:2
refine usefilt $two --iter 2 --usefilt $d/two/set/particles.star --nosingle --parallel thread:2 --mass 25
refine cont $two --iter 2 --nosingle --parallel thread:2
"$python" -m multirefine.cli.main refine --continue "$runs/cont" --iter 3 > "$runs/cont2.log" 2>&1 || echo "$commit: continue failed"
refine three --input $d/three/set/particles.star --model $d/three/lp_2.mrc --nmodels 3 --randclassify --iter 5 --nosingle --parallel thread:2
"$python" "$here/identity_hash.py" "$runs" > "$out/$commit.md5"
grep -h -E "^multi-model|^model [0-9]" "$runs"/*.log > "$out/$commit.summary" || true
echo "$commit: $(wc -l < "$out/$commit.md5") files hashed into $out/$commit.md5"
