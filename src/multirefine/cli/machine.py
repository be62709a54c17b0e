"""The machine a command runs on, as its options name it: the device, torch's threads and the
batch size (``--device``, ``--parallel`` / ``--j``, ``--lowmem``). A new run and ``--continue``
alike take them from the command, not from the run. And the memory a run will need, checked
against what the machine (or the batch job's cgroup) has left (:func:`check_memory`)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from multirefine.errors import InputError

__all__ = ["available_memory_bytes", "batch_size", "check_memory", "device_and_threads", "peak_memory_bytes"]

# A run's peak resident memory on the CPU, measured (bench/memory_peaks.py: one multi-model
# iteration of 200 particles, K = 2 and 4 at box 64 and 128, K = 2 at box 160) and fitted by
# least squares (within 3 % of each; BENCHMARKS.md, "Memory a run needs"): a base, a part per
# voxel of the box (the reconstruction's working arrays on the padded grid) and one per voxel
# and model (the models' padded Fourier sums, two half-sets each, and their maps).
BASE_BYTES = 390 * 2**20
BYTES_PER_VOXEL = 261
BYTES_PER_VOXEL_AND_MODEL = 160
BYTES_PER_PARTICLE_AND_MODEL = 200  # poses, scores and layers per model (not measured: from the arrays)
BYTES_PER_PARTICLE = 600  # the metadata table, as pandas holds a RELION STAR row (not measured)


def batch_size(args: argparse.Namespace) -> int:
    return 200 if args.lowmem else 500


def device_and_threads(args: argparse.Namespace) -> str:
    """The device ``--device`` names, after ``--parallel`` is checked (``thread:N`` sets
    torch's threads here). Dask workers compute on the CPU: ``auto`` is then the CPU."""
    import torch

    from multirefine.parallel import InProcess, parallel_spec, parse_parallel

    kind, value = parse_parallel(args.parallel or parallel_spec(args.j, args.parallel))
    if kind == "thread":
        InProcess(int(value))
    device = args.device
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
        raise InputError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and kind == "thread" else "cpu"
    if device.startswith("cuda") and kind == "dask":
        raise InputError(f"--device {device} with --parallel {args.parallel}: Dask workers compute on the CPU "
                         "(give --device cpu, or run on one GPU with --parallel thread:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here")
    return device


def peak_memory_bytes(box: int, models: int, particles: int) -> int:
    """The peak resident memory of a run of ``models`` models at ``box`` (the CPU's, measured)."""
    voxels = box**3
    return int(BASE_BYTES + voxels * (BYTES_PER_VOXEL + BYTES_PER_VOXEL_AND_MODEL * models)
               + particles * (BYTES_PER_PARTICLE + BYTES_PER_PARTICLE_AND_MODEL * models))


def available_memory_bytes(root: Path = Path("/")) -> tuple[int, str] | None:
    """What this process may still take: the smaller of the machine's available memory
    (``MemAvailable``) and what is left under the tightest memory limit of this process's
    cgroup and its parents (a Slurm job's ``--mem``, a container's), its page cache not
    counted as used; with where it was read. None where neither can be read (not Linux)."""
    found = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "the machine's available memory"))
    except (OSError, ValueError, IndexError):
        pass
    for folder, limit_name, used_key in _cgroup_memory_folders(root):
        while True:
            try:
                limit = Path(folder, limit_name).read_text().strip()
                stat = dict(line.split() for line in Path(folder, "memory.stat").read_text().splitlines())
                if limit.isdigit() and int(limit) < 2**60:
                    left = max(int(limit) - int(stat[used_key]), 0)
                    found.append((left, f"what is left under the memory limit of {folder}"))
            except (OSError, ValueError, KeyError):
                pass
            if folder.parent == folder or folder.name in ("cgroup", "memory"):
                break
            folder = folder.parent
    return min(found) if found else None


def _cgroup_memory_folders(root: Path) -> list[tuple[Path, str, str]]:
    """This process's memory cgroup folders (v2 and v1) with the name of their limit and the
    ``memory.stat`` key of the memory in use that is not cache."""
    out = []
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            out.append((root / "sys/fs/cgroup" / path.lstrip("/"), "memory.max", "anon"))
        elif "memory" in controllers.split(","):
            out.append((root / "sys/fs/cgroup/memory" / path.lstrip("/"), "memory.limit_in_bytes", "total_rss"))
    return out


def check_memory(box: int, models: int, particles: int, device: str) -> str:
    """A line for the plan: the memory the run will need on the CPU and what is available;
    InputError where it needs more than is available. A CUDA run's host memory is not
    measured, so it is not refused (the device's own memory is not estimated yet)."""
    need = peak_memory_bytes(box, models, particles)
    have = available_memory_bytes()
    text = f"memory: about {need / 2**30:.1f} GiB at the peak for {models} model{'s' * (models > 1)} at box {box}"
    if have is None:
        return text + " (what is available could not be read)"
    free, where = have
    text += f", {free / 2**30:.1f} GiB available ({where})"
    if need > free and not device.startswith("cuda") and os.environ.get("MULTIREFINE_IGNORE_MEMORY") != "1":
        raise InputError(f"{text}: too little; use fewer models or particles binned to a smaller box "
                         "(or set MULTIREFINE_IGNORE_MEMORY=1 to run regardless)")
    return text
