"""Benchmark: multirefine refine against RELION 3.1 3-D classification on the simulated sets.

For each set made by ``bench/datasets.py`` (``bench/work/SET``), runs

    multirefine refine --input particles.star --model consensus_lp30.mrc --nmodels K
                       --randclassify --iter N --path multirefine --parallel thread:2 --nosingle

under ``/usr/bin/time -v`` (wall time, peak memory) and ``bench/cpu_log.py`` (CPU seconds
over time), reads RELION's run from ``bench/work/SET/relion`` (``bench/run_relion.sh``,
which logs the same; whatever iterations exist) and prints, side by side: classification
accuracy (Hungarian matching against ``truth.star``), FSC-0.143 resolution of every output
map against its matched true map, wall and CPU seconds per iteration and per run, and peak
memory. CPU seconds compare the programs fairly when they share the machine (both use two
threads). Results go to ``bench/results/SET.json``; a run that is not on this machine
(``bench/work`` is not kept from one machine to the next) keeps what that file holds of it.
``bench/relion_checkpoint.py`` carries an unfinished RELION run to the next machine.

    python bench/bench_refine.py [--sets conformational,...] [--iter 10] [--seeding randphase] [--threads 2] [--skip-run | --rerun]

``--randclassify`` (particles aligned to the one map, then split at random) is how RELION's
Class3D seeds K classes from one reference (``do_generate_seeds``), so both programs start alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cpu_log import cpu_seconds_at, describe_machine, machine_file, read_log
from relion_checkpoint import iteration_ends

from multirefine.evaluate import classification_accuracy, map_resolution_against
from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star

ROOT = Path(__file__).resolve().parent
K_OF = {"compositional": 2, "conformational": 2, "three_state": 3}


def gnu_time(path: Path) -> dict:
    """Wall seconds and peak RSS (MiB) from a ``/usr/bin/time -v`` report."""
    text = path.read_text() if path.exists() else ""
    out = {}
    if m := re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text):
        h, mnt, s = m.groups()
        out["wall_s"] = (int(h) if h else 0) * 3600 + int(mnt) * 60 + float(s)
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        out["peak_mib"] = int(m.group(1)) / 1024
    return out


def score(set_dir: Path, classes: np.ndarray, maps: list[np.ndarray], apix: float) -> dict:
    """Accuracy (Hungarian) and FSC-0.143 resolution of each matched map against the truth."""
    truth = read_particles_star(set_dir / "truth.star").metadata["rlnClassNumber"].to_numpy()
    scored = classification_accuracy(truth, classes)
    resolutions = [
        map_resolution_against(maps[scored.matching[i]], read_map(set_dir / f"gt_{i + 1:02d}.mrc")[0], apix)[1]
        for i in range(len(maps))
    ]
    return {"accuracy": scored.accuracy, "resolution_0143_angstrom": resolutions, "confusion": scored.confusion.tolist()}


def cpu_per_iteration(csvs: list[Path], stamps: list[float]) -> dict:
    """CPU seconds per iteration between successive file times, CPU seconds in all and the
    peak memory sampled (bench/cpu_log.py; a run resumed in segments has one log each), and
    the processor of each log: CPU seconds compare only between runs on one kind of machine."""
    csvs = [c for c in csvs if c.exists()]
    if not csvs or len(stamps) < 2:
        return {}
    cpu = cpu_seconds_at(csvs, stamps)
    logs = [read_log(c) for c in csvs]
    return {
        "cpu_seconds_per_iteration": np.diff(cpu).tolist(),
        "cpu_s": float(sum(rows[-1, 2] for rows in logs)),
        "peak_sampled_mib": float(max(rows[:, 3].max() for rows in logs)),
        "machines": {
            c.name: describe_machine(json.loads(machine_file(c).read_text()))
            if machine_file(c).exists() else "not recorded"
            for c in csvs
        },
    }


def accuracy_per_iteration(set_dir: Path, tables: list[Path]) -> dict:
    """Accuracy after every iteration (the particle tables in order): time to a given accuracy."""
    truth = read_particles_star(set_dir / "truth.star").metadata["rlnClassNumber"].to_numpy()
    return {"accuracy_per_iteration": [
        classification_accuracy(truth, read_particles_star(t).metadata["rlnClassNumber"].to_numpy()).accuracy
        for t in tables
    ]}


def relion_result(set_dir: Path) -> dict | None:
    run = set_dir / "relion"
    data = sorted(run.glob("run_it*_data.star"))
    if not data:
        return None
    last = data[-1]
    iteration = int(re.search(r"it(\d+)", last.name).group(1))
    meta = read_particles_star(last).metadata
    maps = []
    for i in range(1, K_OF[set_dir.name] + 1):
        maps.append(read_map(run / f"run_it{iteration:03d}_class{i:03d}.mrc")[0])
    apix = float(json.loads((set_dir / "simulation.json").read_text())["pixel_size_angstrom"])
    out = score(set_dir, meta["rlnClassNumber"].to_numpy(), maps, apix)
    # Time per iteration from when each ended (iteration 0 is the start).
    stamps = list(iteration_ends(run).values())
    # A run resumed with --continue: an iteration's wall time starts when its segment did.
    starts = [read_log(c)[0, 0] for c in run.glob("cpu*.csv")]
    per_iteration = [
        b - max([a] + [s for s in starts if a < s < b]) for a, b in itertools.pairwise(stamps)
    ]
    out.update(iterations=iteration, seconds_per_iteration=per_iteration)
    out.update(cpu_per_iteration(sorted(run.glob("cpu*.csv")), stamps))
    out.update(accuracy_per_iteration(set_dir, [p for p in data if not p.name.startswith("run_it000")]))
    # Wall time: the iterations' own spans (a run resumed in segments has gaps between them;
    # a segment killed has no GNU time report). They include any contention on the machine,
    # so the CPU seconds above are the fair figure. Peak memory: the largest report or sample.
    out.update(wall_s=float(sum(per_iteration)))
    peaks = [t["peak_mib"] for t in map(gnu_time, run.glob("time*.txt")) if "peak_mib" in t]
    if peaks:
        out.update(peak_mib=float(max(peaks)))
    return out


def run_multirefine(set_dir: Path, iterations: int, skip: bool, seeding: str, threads: int = 2,
                    rerun: bool = False) -> dict:
    out_dir = set_dir / "multirefine"
    k = K_OF[set_dir.name]
    if not skip:
        if (out_dir / "0_refine_parms.json").exists():  # the benchmark's own earlier run: minutes to hours
            if not rerun:
                sys.exit(f"{out_dir} holds a run (finished or cut): --skip-run reads it, --rerun replaces it")
            shutil.rmtree(out_dir)
        cmd = [sys.executable, str(ROOT / "cpu_log.py"), str(set_dir / "multirefine_cpu.csv"), "--",
               "/usr/bin/time", "-v", "-o", str(set_dir / "multirefine_time.txt"), sys.executable, "-m",
               "multirefine.cli.main", "refine", "--input", str(set_dir / "particles.star"),
               "--model", str(set_dir / "consensus_lp30.mrc"), "--nmodels", str(k), f"--{seeding}",
               "--iter", str(iterations), "--path", str(out_dir), "--parallel", f"thread:{threads}",
               "--nosingle"]  # RELION's Class3D has no per-class refinement: bench_single.py times ours
        subprocess.run(cmd, check=True)
    convergence = json.loads((out_dir / "convergence.json").read_text())
    last = convergence[-1]["iteration"]
    meta = read_particles_star(out_dir / f"particles_{last:02d}.star").metadata
    maps = [read_map(out_dir / f"threed_{last:02d}_{i:02d}.mrc")[0] for i in range(1, k + 1)]
    apix = float(json.loads((set_dir / "simulation.json").read_text())["pixel_size_angstrom"])
    result = score(set_dir, meta["rlnClassNumber"].to_numpy(), maps, apix)
    seeding = json.loads((out_dir / "0_refine_parms.json").read_text())["seeding"]
    result.update(seeding=seeding, iterations=last, seconds_per_iteration=[c["seconds"] for c in convergence])
    stamps = [(out_dir / "threed_00_01.mrc").stat().st_mtime]
    stamps += [(out_dir / f"particles_{c['iteration']:02d}.star").stat().st_mtime for c in convergence]
    result.update(cpu_per_iteration([set_dir / "multirefine_cpu.csv"], stamps))
    result.update(accuracy_per_iteration(set_dir, [out_dir / f"particles_{c['iteration']:02d}.star" for c in convergence]))
    result.update(gnu_time(set_dir / "multirefine_time.txt"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "work"))
    parser.add_argument("--sets", default="compositional,conformational,three_state")
    parser.add_argument("--iter", type=int, default=10)
    parser.add_argument("--seeding", default="randclassify", choices=["randclassify", "randphase", "mapfragment"])
    parser.add_argument("--threads", type=int, default=2, help="multirefine's --parallel thread:N")
    parser.add_argument("--skip-run", action="store_true", help="only read existing results")
    parser.add_argument("--rerun", action="store_true", help="run multirefine again where a run exists")
    args = parser.parse_args()
    results_dir = ROOT / "results"
    results_dir.mkdir(exist_ok=True)
    rows = []
    for name in args.sets.split(","):
        set_dir = Path(args.work) / name
        # A run not on this machine (bench/work is not kept between machines): what was read of it before.
        earlier_file = results_dir / f"{name}.json"
        earlier = json.loads(earlier_file.read_text()) if earlier_file.exists() else {}
        if args.skip_run and not (set_dir / "multirefine" / "convergence.json").exists() and earlier.get("multirefine"):
            ours = earlier["multirefine"]
        else:
            ours = run_multirefine(set_dir, args.iter, args.skip_run, args.seeding, args.threads, args.rerun)
        theirs = relion_result(set_dir) or earlier.get("relion")
        record = {"set": name, "multirefine": ours, "relion": theirs, "when": time.strftime("%Y-%m-%d %H:%M")}
        (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        rows.append(record)
    print("| set | program | iterations | accuracy | FSC-0.143 vs truth (Å) | s / iteration | CPU s / iteration "
          "| wall (s) | CPU (s) | peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for prog in ("multirefine", "relion"):
            x = r[prog]
            if x is None:
                print(f"| {r['set']} | {prog} | not run | | | | | | | |")
                continue
            per = np.mean(x["seconds_per_iteration"]) if x["seconds_per_iteration"] else float("nan")
            res = ", ".join(f"{v:.1f}" for v in x["resolution_0143_angstrom"])
            cpu = np.mean(x["cpu_seconds_per_iteration"]) if x.get("cpu_seconds_per_iteration") else float("nan")
            print(f"| {r['set']} | {prog} | {x['iterations']} | {100 * x['accuracy']:.1f} % | {res} | {per:.0f} | "
                  f"{cpu:.0f} | {x.get('wall_s', float('nan')):.0f} | {x.get('cpu_s', float('nan')):.0f} | "
                  f"{x.get('peak_mib', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
