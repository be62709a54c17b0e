"""Carry an unfinished RELION benchmark run from one machine to the next.

A RELION run on a benchmark set takes hours (``bench/run_relion.sh``); a session's machine
may be a new one, with ``bench/work`` gone. ``pack`` keeps, in one small file under
``bench/results/relion_checkpoint/``, what ``relion_refine --continue`` needs from the last
finished iteration (its optimiser, model, sampling and data STAR files and class maps) and
what ``bench/bench_refine.py`` reads from every earlier one (each iteration's class numbers
and the optimiser file whose time stamp ends it), with the timing logs. Time stamps travel
with the files. ``unpack`` puts them back into a set made again by ``bench/datasets.py``,
after checking that its particles are the same (md5 of ``particles.star`` and
``particles.mrcs``).

    python bench/relion_checkpoint.py pack bench/work/three_state
    python bench/datasets.py bench/work --only three_state
    python bench/relion_checkpoint.py unpack bench/work/three_state
    python bench/relion_checkpoint.py stamps bench/work/three_state   # run_relion.sh does this
    bench/run_relion.sh bench/work/three_state 3 80 25 2 N    # N: the iteration unpack names
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import starfile

OUT = Path(__file__).resolve().parent / "results" / "relion_checkpoint"
CHECKED = ("particles.star", "particles.mrcs")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finished(run: Path) -> list[int]:
    """Iterations whose optimiser file is there (RELION writes it last)."""
    return sorted(int(m.group(1)) for p in run.glob("run_it*_optimiser.star")
                  if (m := re.fullmatch(r"run_it(\d+)_optimiser\.star", p.name)))


STAMPS = "stamps.json"  # in relion/: when each iteration ended (Unix seconds), kept once read


def iteration_ends(run: Path) -> dict[int, float]:
    """When each finished iteration ended (Unix seconds): as ``relion/stamps.json`` recorded it,
    else its optimiser file's time. ``relion_refine --continue`` writes the files of the
    iteration it continues from again when it starts (seen with 3.1.3), so their time stamps
    say when the next segment began, not when that iteration ended."""
    path = run / STAMPS
    recorded = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    return {i: recorded.get(i, (run / f"run_it{i:03d}_optimiser.star").stat().st_mtime) for i in _finished(run)}


def record_stamps(run: Path) -> dict[int, float]:
    """Record :func:`iteration_ends` in ``relion/stamps.json``: an iteration's end, once written,
    is never changed. ``run_relion.sh`` calls this before every continued segment."""
    ends = iteration_ends(run)
    (run / STAMPS).write_text(json.dumps({str(k): ends[k] for k in sorted(ends)}, indent=1) + "\n")
    return ends


def _thin_data(path: Path) -> bytes:
    """An earlier iteration's data STAR file with only what the benchmark reads from it."""
    blocks = starfile.read(path, always_dict=True)
    particles = blocks["particles"][["rlnImageName", "rlnOpticsGroup", "rlnClassNumber"]]
    with tempfile.TemporaryDirectory() as tmp:
        thin = Path(tmp) / path.name
        starfile.write({"optics": blocks["optics"], "particles": particles}, thin)
        return thin.read_bytes()


def pack(set_dir: Path) -> Path:
    run = set_dir / "relion"
    done = _finished(run)
    if not done:
        sys.exit(f"{run}: no finished iteration (no run_itNNN_optimiser.star)")
    last = done[-1]
    record_stamps(run)
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"{set_dir.name}.tar.xz"
    partial = target.with_suffix(".partial")
    manifest = {"set": set_dir.name, "last_iteration": last, "md5": {n: _md5(set_dir / n) for n in CHECKED}}
    with tarfile.open(partial, "w:xz") as tar:
        for path in sorted(run.iterdir()):
            m = re.fullmatch(r"run_it(\d+)_(\w+?)(\d*)\.(star|mrc)", path.name)
            logs = re.fullmatch(r"(cpu.*\.csv|cpu.*\.machine\.json|time.*\.txt|stdout\.txt|stamps\.json)", path.name)
            needed = m and int(m.group(1)) == last and m.group(2) in ("optimiser", "model", "sampling", "data", "class")
            if needed or logs or (m and m.group(2) == "optimiser"):  # every optimiser file: its time ends an iteration
                tar.add(path, arcname=path.name)
            elif m and m.group(2) == "data" and int(m.group(1)) in done:
                body = _thin_data(path)
                info = tarfile.TarInfo(path.name)
                info.size, info.mtime = len(body), path.stat().st_mtime
                tar.addfile(info, io.BytesIO(body))
        body = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("checkpoint.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    os.replace(partial, target)
    print(f"{target}: iterations up to {last} ({target.stat().st_size / 2**20:.1f} MiB)")
    return target


def unpack(set_dir: Path) -> int:
    source = OUT / f"{set_dir.name}.tar.xz"
    if not source.exists():
        sys.exit(f"{source}: no checkpoint of set {set_dir.name}")
    with tarfile.open(source, "r:xz") as tar:
        manifest = json.loads(tar.extractfile("checkpoint.json").read())
        for name, md5 in manifest["md5"].items():
            if not (set_dir / name).exists() or _md5(set_dir / name) != md5:
                sys.exit(f"{set_dir / name}: not the particles the checkpoint was made from "
                         f"(make the set again with bench/datasets.py)")
        run = set_dir / "relion"
        if _finished(run):
            sys.exit(f"{run}: already holds a run; move it away first")
        run.mkdir(exist_ok=True)
        members = [m for m in tar.getmembers() if m.name != "checkpoint.json"]
        tar.extractall(run, members=members, filter="data")
    last = manifest["last_iteration"]
    print(f"{run}: RELION's run up to iteration {last}; go on with "
          f"bench/run_relion.sh {set_dir} K DIAMETER ITER THREADS {last}")
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack", "stamps"))
    parser.add_argument("set_dir", type=Path)
    args = parser.parse_args()
    if args.action == "stamps":
        record_stamps(args.set_dir / "relion")
    else:
        (pack if args.action == "pack" else unpack)(args.set_dir)


if __name__ == "__main__":
    main()
