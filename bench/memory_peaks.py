"""The peak resident memory of one multi-model iteration by box and number of models, beside
the estimate ``multirefine refine --check`` makes from it (``multirefine.cli.machine``).

Makes 200 particles of two random atom maps at box 64, 128 and 160 (1 Å/px, SNR 0.1), then
runs ``multirefine refine --iter 1 --nosingle --targetres 12 --j 1`` on each with K = 2 and
(box 64, 128) K = 4 starting maps, each in a fresh process, and reads each process's peak
resident set size from the kernel (``os.wait4``).

    python bench/memory_peaks.py WORKDIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

CONFIGS = ((64, 2), (64, 4), (128, 2), (128, 4), (160, 2))
PARTICLES = 200


def make(root: Path) -> None:
    from helpers import random_atoms_map

    from multirefine.cli.main import main
    from multirefine.io.maps import write_map

    for box in sorted({b for b, _ in CONFIGS}):
        if (root / f"b{box}" / "particles.star").exists():
            continue
        for k, seed in enumerate((1, 2, 3, 4), 1):
            write_map(root / f"b{box}_map{k}.mrc", random_atoms_map(box, 400, seed=seed), 1.0)
        assert main(["simulate", str(root / f"b{box}"), "--maps", f"{root}/b{box}_map1.mrc,{root}/b{box}_map2.mrc",
                     "--n", str(PARTICLES), "--snr", "0.1", "--seed", "3"]) == 0


def peak(root: Path, box: int, k: int) -> tuple[int, float]:
    """Peak resident bytes and wall seconds of one run."""
    import time

    maps = ",".join(str(root / f"b{box}_map{m}.mrc") for m in range(1, k + 1))
    run = root / f"r_{box}_{k}"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "multirefine.cli.main", "refine", "--input",
                                str(root / f"b{box}" / "particles.star"), "--models", maps, "--iter", "1", "--nosingle",
                                "--targetres", "12", "--j", "1", "--path", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (box, k)
    return usage.ru_maxrss * 1024, time.monotonic() - started


def main() -> None:
    from multirefine.cli.machine import peak_memory_bytes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    root = parser.parse_args().root
    root.mkdir(parents=True, exist_ok=True)
    make(root)
    print("| box | K | peak resident (MiB) | estimate (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    for box, k in CONFIGS:
        used, seconds = peak(root, box, k)
        print(f"| {box} | {k} | {used / 2**20:.0f} | {peak_memory_bytes(box, k, PARTICLES) / 2**20:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
