"""Where one run's time goes, op by op (torch.profiler), on any device.

Runs ``--iter`` iterations of the multi-model refinement (``--randclassify`` from the set's
consensus map, as ``bench_refine.py`` does, no per-model stage) on the first ``--n``
particles of a benchmark set, once unprofiled to warm up and once under the profiler, and
prints: the wall time of the profiled run, how many torch ops it ran (each one a kernel
launch or more on CUDA), how many of them made the host wait for the device (``.item()``,
copies to the host), and the ops that took most host time and, on CUDA, device time.
On a GPU, device time far below wall time means the host is the bottleneck.
``--sites`` instead counts the torch calls the run makes by the multirefine function that
makes them (the launches a GPU waits on the host for), with no profiler.

``--memory`` runs once without the profiler and prints the wall time, the process's peak
resident memory, and where the run was each time its memory reached a new high. ``--chunk N`` sets the search's chunk budget (score-matrix entries per chunk of particles,
``DEFAULT_MAX_ELEMENTS``, and sample points per slice call, ``SLICE_POINTS``, both 2**23 /
2**22 in the program) for this run only, to see what larger chunks buy on a device (the
first iteration's intensity-scale pass keeps the program's budget).

    python bench/profile_iteration.py bench/work/conformational [--n 6000] [--iter 2]
        [--device cuda] [--batch 500] [--threads 16] [--trace trace.json] [--sites] [--memory]
        [--targetres 5] [--chunk N]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import multirefine
from multirefine.io.maps import read_map
from multirefine.io.particles import open_particles
from multirefine.refine import plan, polar, scoring, search
from multirefine.refine.driver import run_refinement
from multirefine.refine.options import RefineOptions

PACKAGE = str(Path(multirefine.__file__).parent)
SYNCING = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def run(set_dir: Path, args: argparse.Namespace, out: Path) -> float:
    stack = open_particles(set_dir / "particles.star")
    args.n = min(args.n, len(stack))
    stack = stack.subset(np.arange(args.n))
    k = len(list(set_dir.glob("gt_*.mrc")))
    start = read_map(set_dir / "consensus_lp30.mrc")[0]
    opts = RefineOptions(input=str(set_dir / "particles.star"), path=str(out), symmetries=["C1"] * k,
                         iterations=args.iter, batch_size=args.batch, device=args.device, seeding="randclassify",
                         single=False, targetres=args.targetres)
    out.mkdir(parents=True)
    started = time.perf_counter()
    run_refinement(opts, stack, stack, [start])  # randclassify: the split drawn from --seed 0
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


class CallSites(TorchDispatchMode):
    """Counts each torch call by the innermost multirefine function on the stack, and by the
    driver step (the outermost one below ``run_refinement``)."""

    def __init__(self) -> None:
        super().__init__()
        self.functions: collections.Counter = collections.Counter()
        self.steps: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frames = [f for f in traceback.extract_stack(limit=80) if f.filename.startswith(PACKAGE)]
        if frames:
            self.functions[f"{Path(frames[-1].filename).name} {frames[-1].name}"] += 1
            below = [f.name for f in frames if f.name != "run_refinement"]
            self.steps[below[0] if below else "run_refinement"] += 1
        return func(*args, **(kwargs or {}))


def count_sites(args: argparse.Namespace) -> None:
    sites = CallSites()
    with tempfile.TemporaryDirectory() as tmp, sites:
        run(args.set_dir, args, Path(tmp) / "counted")
    total = sum(sites.functions.values())
    print(f"{args.set_dir.name}: {args.n} particles, {args.iter} iterations, batch {args.batch}, {args.device}: "
          f"{total} torch calls")
    for name, counter in (("driver step", sites.steps), ("function", sites.functions)):
        print(f"by {name}:")
        for key, count in counter.most_common(args.top):
            print(f"  {count:8d} {100 * count / total:5.1f} %  {key}")


class PeakSites:
    """Samples the process's resident memory every ``interval`` s from a thread, and keeps the
    main thread's multirefine stack each time the memory reaches a new high: where the peak
    is reached, and the steps up to it."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.highs = interval, []  # (MiB, stack) at each new high of 32 MiB or more
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        high = 0.0
        while not self._stop.wait(self.interval):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > high + 32:
                high = rss
                frame = sys._current_frames().get(self._main)
                stack = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)
                         if f.filename.startswith(PACKAGE)]
                self.highs.append((rss, stack))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--iter", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace", help="also write a Chrome trace here")
    parser.add_argument("--sites", action="store_true", help="count torch calls by function instead")
    parser.add_argument("--memory", action="store_true", help="only time one run and report its peak memory")
    parser.add_argument("--targetres", type=float, help="search band fixed at this resolution, Å (a late iteration's)")
    parser.add_argument("--chunk", type=int, help="the search's chunk budget (score entries; slice points / 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.chunk:  # the driver's search with another budget (an experiment: the program has no option for it)
        plan.refine_assignments = functools.partial(search.refine_assignments, max_elements=args.chunk)
        scoring.SLICE_POINTS = polar.SLICE_POINTS = args.chunk // 2  # polar.py holds its own copy
    if args.sites:
        count_sites(args)
        return
    if args.memory:  # one run, no profiler: its wall time and the process's peak resident memory
        sites = PeakSites()
        sites.start()
        with tempfile.TemporaryDirectory() as tmp:
            wall = run(args.set_dir, args, Path(tmp) / "run")
        sites.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.set_dir.name}: {args.n} particles, {args.iter} iterations, batch {args.batch}, {args.device}, "
              f"targetres {args.targetres}, chunk {args.chunk or scoring.DEFAULT_MAX_ELEMENTS}: wall {wall:.1f} s, "
              f"peak resident memory {peak:.0f} MiB")
        print("new highs of resident memory (sampled every 20 ms) and where the run was:")
        for rss, stack in sites.highs:
            print(f"  {rss:7.0f} MiB  {' > '.join(stack[-4:]) or '(outside multirefine)'}")
        return
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        warm = run(args.set_dir, args, Path(tmp) / "warm")
        with profile(activities=activities) as prof:
            wall = run(args.set_dir, args, Path(tmp) / "profiled")
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    syncs = {e.key: e.count for e in events if e.key in SYNCING}
    # The kernels themselves (their own events), not the ops that launched them as well.
    device_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
    print(f"{args.set_dir.name}: {args.n} particles, {args.iter} iterations, batch {args.batch}, {args.device}, "
          f"{args.threads} threads, chunk {args.chunk or scoring.DEFAULT_MAX_ELEMENTS}")
    print(f"wall {warm:.1f} s unprofiled, {wall:.1f} s profiled; {ops} aten ops "
          f"({ops / args.n / args.iter:.1f} per particle and iteration); host waits {syncs}")
    if cuda:
        print(f"device busy {device_s:.1f} s of {wall:.1f} s ({100 * device_s / wall:.0f} %)")
        print(events.table(sort_by="self_device_time_total", row_limit=args.top))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
