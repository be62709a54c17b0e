"""Run a command and log its CPU time and memory over time (Linux /proc).

    python bench/cpu_log.py OUT.csv -- COMMAND [ARGS...]

Every ``--every`` seconds one row: the time (Unix seconds), wall seconds since start, CPU seconds (user + system)
of the whole process tree so far, resident memory of the tree (MiB), and the machine's
load average. CPU seconds per iteration, read against the times the iteration files
appear, compare programs fairly when the machine is shared (wall time does not). Beside
``OUT.csv``, ``OUT.machine.json`` says which processor ran it: a session's machine is not
always the same kind, and CPU seconds compare only on one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, cpu seconds of the process and its reaped children, rss MiB)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (stat field 3): utime is field 14, cutime 16, rss 24.
    ppid = int(fields[1])
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
    return ppid, cpu, int(fields[21]) * PAGE_MIB


def tree_usage(root: int) -> tuple[float, float]:
    """CPU seconds and RSS (MiB) of ``root`` and all its descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None:
                stats[int(entry)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    cpu = rss = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            cpu += stats[pid][1]
            rss += stats[pid][2]
        todo.extend(children.get(pid, []))
    return cpu, rss


def machine() -> dict:
    """The processor and cores this runs on (from ``/proc/cpuinfo``), to tell machines apart."""
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor's block is enough
        fields[key.strip()] = value.strip()
    return {
        "cpu": fields.get("model name", "unknown"),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "cores": os.cpu_count(),
    }


def describe_machine(info: dict) -> str:
    """``AMD EPYC (family 25, model 1), 2 cores``."""
    return f"{info['cpu']} (family {info['family']}, model {info['model']}), {info['cores']} cores"


def machine_file(csv: Path) -> Path:
    return Path(csv).with_suffix(".machine.json")


def read_log(csv: Path):
    """Rows ``(time_unix, wall_s, cpu_s, rss_mib, load1)`` of one log (numpy array)."""
    import numpy as np

    header = Path(csv).read_text().split("\n", 1)[0].split(",")
    rows = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    if header[0] == "wall_s":  # older logs: no clock column; the file was last written at the last row
        rows = np.column_stack([rows[:, 0] + Path(csv).stat().st_mtime - rows[-1, 0], rows])
    return rows


def cpu_seconds_at(csvs: Path | list[Path], times: list[float]) -> list[float]:
    """CPU seconds at the given Unix times (the ends of iterations), over one log or the logs
    of a run resumed in segments (linear between rows). A segment that a later one follows
    was stopped inside an iteration, and the next segment did that iteration again from the
    last one finished: what the stopped segment spent after its last finished iteration is
    left out, so that each iteration counts the CPU of the work that finished it."""
    import numpy as np

    segments = sorted((read_log(c) for c in ([csvs] if isinstance(csvs, Path) else csvs)), key=lambda r: r[0, 0])
    times_sorted = np.sort(np.asarray(times, dtype=float))
    clock, cpu, done = [], [], 0.0
    for i, rows in enumerate(segments):
        if i + 1 < len(segments):
            finished = times_sorted[(times_sorted >= rows[0, 0]) & (times_sorted <= rows[-1, 0])]
            end = finished[-1] if finished.size else rows[0, 0]
            rows = np.vstack([rows[rows[:, 0] < end], [end, 0.0, np.interp(end, rows[:, 0], rows[:, 2]), 0.0, 0.0]])
        clock.append(rows[:, 0])
        cpu.append(rows[:, 2] + done)
        done += rows[-1, 2]
    return np.interp(times, np.concatenate(clock), np.concatenate(cpu)).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    machine_file(args.out).write_text(json.dumps(machine()) + "\n")
    start = time.time()
    proc = subprocess.Popen(command)
    with open(args.out, "w") as log:
        log.write("time_unix,wall_s,cpu_s,rss_mib,load1\n")
        while True:
            cpu, rss = tree_usage(proc.pid)
            now = time.time()
            log.write(f"{now:.1f},{now - start:.1f},{cpu:.1f},{rss:.0f},{os.getloadavg()[0]:.2f}\n")
            log.flush()
            try:
                return proc.wait(timeout=args.every)
            except subprocess.TimeoutExpired:
                pass


if __name__ == "__main__":
    sys.exit(main())
