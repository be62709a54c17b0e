"""The machine a command runs on, as its options name it: the device, torch's threads and the
batch size (``--device``, ``--parallel`` / ``--j``, ``--lowmem``). A new run and ``--continue``
alike take them from the command, not from the run."""

from __future__ import annotations

import argparse
import re

from multirefine.errors import InputError

__all__ = ["batch_size", "device_and_threads"]


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
