"""Fourier-core benchmark: central-slice projection and insertion throughput.

Times :mod:`multirefine.fourier` (``prepare_volume_ft``, ``extract_central_slices``,
``FourierAccumulator.insert`` / ``.reconstruct``) on a ``box**3`` map padded by 2, against a
plain numpy/scipy implementation of the same operations written below (trilinear
``scipy.ndimage.map_coordinates`` on the full centred padded 3-D FFT; ``np.add.at``
trilinear splatting into full complex / weight grids), after checking that both agree.
If teamtomo's ``torch-fourier-slice`` happens to be importable it is timed as well (it is
*not* a dependency of multirefine). Prints markdown tables.

    .venv/bin/python bench/bench_fourier.py [--box 128] [--n 500] [--device cpu|cuda]
                                            [--threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch

from multirefine.fourier.ctf import calculate_ctf_2d
from multirefine.fourier.fft import frequency_grid_2d
from multirefine.fourier.interpolate import hermitian_symmetrise_x0
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.reconstruction import FourierAccumulator
from multirefine.geometry.euler import euler_to_matrix

# ----------------------------------------------------------------------------- helpers


def random_rotations(n: int, rng: np.random.Generator) -> torch.Tensor:
    """Uniformly distributed poses ``(n, 3, 3)`` float32 (RELION ZYZ)."""
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    return torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32)


def test_volume(box: int, rng: np.random.Generator) -> torch.Tensor:
    """White noise inside a soft sphere: every frequency populated, a hard test for agreement."""
    z, y, x = np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    envelope = 0.5 * (1 + np.cos(np.pi * np.clip((r - 0.35 * box) / (0.1 * box), 0, 1)))
    return torch.as_tensor(rng.standard_normal((box,) * 3) * envelope, dtype=torch.float32)


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a stage: CPU RSS (VmHWM after a reset) or CUDA max allocated, MiB."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = float("nan")
        self.delta_mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.exact = _reset_peak_rss()
            self.start = (_read_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.exact and _read_status_kib("VmHWM") is not None:
            peak = _read_status_kib("VmHWM") * 1024
        else:  # process-wide peak since start: an upper bound
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_mib = peak / 2**20
        self.delta_mib = (peak - self.start) / 2**20
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device, warmup: int = 1):
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; returns (times, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def complex_correlation(a, b) -> float:
    """``|<a, b>| / (|a| |b|)`` over all elements (numpy or torch, real or complex)."""
    a = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a).astype(np.complex128).ravel()
    b = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b).astype(np.complex128).ravel()
    return float(abs(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real))


# ------------------------------------------------------------- numpy/scipy reference


def ref_gridding_correction(box: int, padded: int) -> np.ndarray:
    r = (np.arange(box, dtype=np.float64) - box // 2) / padded
    s = np.sinc(r) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


def ref_prepare(volume: np.ndarray, pad: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Full (not half) centred padded 3-D FFT, split into contiguous real / imag float32."""
    import scipy.fft

    box = volume.shape[-1]
    size = pad * box
    before = size // 2 - box // 2
    padded = np.zeros((size,) * 3, dtype=np.float32)
    padded[(slice(before, before + box),) * 3] = volume / ref_gridding_correction(box, size)
    ft = scipy.fft.fftshift(
        scipy.fft.fftn(scipy.fft.ifftshift(padded), workers=workers).astype(np.complex64)
    )
    return np.ascontiguousarray(ft.real), np.ascontiguousarray(ft.imag)


def ref_slice_coords(rotations: np.ndarray, box: int, pad: int):
    """Padded-grid array indices ``(3, n*D*(D//2+1))`` in (z, y, x) order, and the mask."""
    ky = np.fft.fftfreq(box, 1.0 / box)
    kx = np.fft.rfftfreq(box, 1.0 / box)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    mask = kxx**2 + kyy**2 < (box / 2) ** 2
    rot = rotations.astype(np.float64)
    xyz = pad * (
        kxx[None, ..., None] * rot[:, None, None, 0, :]
        + kyy[None, ..., None] * rot[:, None, None, 1, :]
    )  # (n, D, Dh, 3), (x, y, z)
    return xyz, kxx, mask


def ref_project(re: np.ndarray, im: np.ndarray, rotations: np.ndarray, box: int, pad: int):
    """Central slices ``(n, D, D//2+1)`` by trilinear ``map_coordinates`` on the full FT."""
    from scipy.ndimage import map_coordinates

    size = re.shape[0]
    xyz, _, mask = ref_slice_coords(rotations, box, pad)
    idx = (xyz[..., ::-1] + size // 2).reshape(-1, 3).T  # (z, y, x) indices
    kw = {"order": 1, "mode": "grid-constant", "cval": 0.0, "prefilter": False, "output": np.float32}
    out = map_coordinates(re, idx, **kw) + 1j * map_coordinates(im, idx, **kw)
    return out.reshape(xyz.shape[:-1]).astype(np.complex64) * mask


def ref_insert(data: np.ndarray, weight: np.ndarray, images: np.ndarray, ctf: np.ndarray,
               rotations: np.ndarray, box: int, pad: int) -> None:
    """``np.add.at`` trilinear splat of ``ctf * X`` and ``ctf**2`` into full grids, in place.

    The stored half plane of each image stands for the full plane: each pixel goes in at
    ``k`` and, conjugated, at ``-k`` (the ``kx = 0`` column, which holds both members of
    each Friedel pair, with half weight).
    """
    size = data.shape[0]
    xyz, kxx, mask = ref_slice_coords(rotations, box, pad)
    column = np.where(kxx == 0, 0.5, 1.0) * mask
    keep = np.broadcast_to(mask, xyz.shape[:-1])
    pts = xyz[keep]
    vals = (images * (ctf * column))[keep]
    wts = (ctf**2 * column)[keep]
    pts = np.concatenate([pts, -pts])
    vals = np.concatenate([vals, vals.conj()]).astype(np.complex64)
    wts = np.concatenate([wts, wts]).astype(np.float32)
    pos = pts[:, ::-1] + size // 2  # (z, y, x)
    base = np.floor(pos)
    frac = pos - base
    base = base.astype(np.int64)
    for corner in range(8):
        off = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        idx = base + off
        w = np.prod(np.where(off.astype(bool), frac, 1 - frac), axis=1).astype(np.float32)
        ok = np.all((idx >= 0) & (idx < size), axis=1)
        where = tuple(idx[ok].T)
        np.add.at(data, where, vals[ok] * w[ok])
        np.add.at(weight, where, wts[ok] * w[ok])


# ----------------------------------------------------------------- torch-fourier-slice


def tfs_available():
    try:
        import torch_fourier_slice  # noqa: F401
    except Exception as exc:  # ImportError or a broken install
        return None, f"{type(exc).__name__}: {exc}"
    import importlib.metadata

    return importlib.metadata.version("torch-fourier-slice"), None


# ------------------------------------------------------------------------------- main


def batched(fn, n: int, batch: int):
    return [fn(slice(i, min(i + batch, n))) for i in range(0, n, batch)]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--box", type=int, default=128, help="map box size D (default 128)")
    p.add_argument("--pad", type=int, default=2, help="Fourier padding (default 2)")
    p.add_argument("--n", type=int, default=500, help="poses / particles per timed run")
    p.add_argument("--batch", type=int, default=250, help="poses per call (default 250)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (reference stays on CPU)")
    p.add_argument("--threads", type=int, default=2, help="torch threads / scipy.fft workers")
    p.add_argument("--n-ref", type=int, default=100, help="poses for the numpy reference")
    p.add_argument("--no-reference", action="store_true", help="skip the numpy/scipy reference")
    p.add_argument("--no-tfs", action="store_true", help="skip torch-fourier-slice even if present")
    p.add_argument("--profile", action="store_true", help="torch.profiler one batch of each")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    box, pad, n, batch = args.box, args.pad, args.n, min(args.batch, args.n)
    rng = np.random.default_rng(args.seed)
    volume = test_volume(box, rng)
    rotations = random_rotations(n, rng)
    defocus = torch.as_tensor(rng.uniform(8000, 25000, n))
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=defocus, defocus_v_angstrom=defocus + 300, defocus_angle_deg=30.0,
        voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, pixel_size_angstrom=1.0,
        box_size=box,
    )

    print(f"# multirefine Fourier core: box {box}, pad {pad} (padded half volume "
          f"{pad * box}x{pad * box}x{pad * box // 2 + 1}), n {n}, batch {batch}, device {device}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__},"
          f" torch threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    load = os.getloadavg()[0]
    print(f"load average (1 min) at start: {load:.2f}"
          + ("  WARNING: the machine is busy, timings will be pessimistic" if load > 0.5 else ""))
    print()

    rows = []  # (operation, implementation, work, median s, rate, unit, peak MiB, ratio)
    reps = args.repeats

    # ---- multirefine -------------------------------------------------------------
    vol_dev = volume.to(device)
    rot_dev = rotations.to(device)
    ctf_dev = ctf.to(device)

    with PeakMemory(device) as mem:
        t_prep, vft = timed(lambda: prepare_volume_ft(vol_dev, pad), reps, device)
    rows.append(["prepare_volume_ft", "multirefine", "1 map", statistics.median(t_prep), None,
                 "", mem.peak_mib, None])

    def project_all():
        return torch.cat(batched(lambda s: extract_central_slices(vft, rot_dev[s], box, pad), n,
                                 batch))

    with PeakMemory(device) as mem:
        t_proj, slices = timed(project_all, reps, device)
    proj_rate = n / statistics.median(t_proj)
    rows.append(["projection", "multirefine", f"{n} poses", statistics.median(t_proj), proj_rate,
                 "poses/s", mem.peak_mib, None])

    images = slices  # clean projections stand in for particle transforms
    acc = FourierAccumulator.zeros(box, pad, device=device)

    def insert_all():
        batched(lambda s: acc.insert(images[s], ctf_dev[s], rot_dev[s]), n, batch)

    with PeakMemory(device) as mem:
        t_ins, _ = timed(insert_all, reps, device)
    ins_rate = n / statistics.median(t_ins)
    rows.append(["insertion (with CTF)", "multirefine", f"{n} images", statistics.median(t_ins),
                 ins_rate, "images/s", mem.peak_mib, None])

    with PeakMemory(device) as mem:
        t_rec, _ = timed(acc.reconstruct, max(1, reps - 1), device)
    rows.append(["reconstruct", "multirefine", "1 map", statistics.median(t_rec), None, "",
                 mem.peak_mib, None])

    checks = []

    # ---- numpy / scipy reference --------------------------------------------------
    if not args.no_reference:
        nr = min(args.n_ref, n)
        vol_np = volume.numpy()
        rot_np = rotations[:nr].numpy().astype(np.float64)
        with PeakMemory(torch.device("cpu")) as mem:
            t, (re, im) = timed(lambda: ref_prepare(vol_np, pad, args.threads), 1, device, 1)
        rows.append(["prepare (full FFT)", "numpy/scipy", "1 map", t[0], None, "", mem.peak_mib,
                     t[0] / statistics.median(t_prep)])
        with PeakMemory(torch.device("cpu")) as mem:
            t, ref_slices = timed(lambda: ref_project(re, im, rot_np, box, pad), 1, device, 0)
        rate = nr / t[0]
        rows.append(["projection", "numpy/scipy map_coordinates", f"{nr} poses", t[0], rate,
                     "poses/s", mem.peak_mib, proj_rate / rate])
        corr = complex_correlation(slices[:nr], ref_slices)
        checks.append(("projection: multirefine vs map_coordinates, slice correlation", corr))

        size = pad * box
        imgs_np = images[:nr].cpu().numpy()
        ctf_np = ctf[:nr].numpy()
        data = np.zeros((size,) * 3, np.complex64)
        weight = np.zeros((size,) * 3, np.float32)
        with PeakMemory(torch.device("cpu")) as mem:
            t, _ = timed(lambda: ref_insert(data, weight, imgs_np, ctf_np, rot_np, box, pad), 1,
                         device, 0)
        rate = nr / t[0]
        rows.append(["insertion (with CTF)", "numpy np.add.at", f"{nr} images", t[0], rate,
                     "images/s", mem.peak_mib, ins_rate / rate])
        # agreement: the same nr images through multirefine, completed x = 0 plane
        check = FourierAccumulator.zeros(box, pad, device=device)
        check.insert(images[:nr], ctf_dev[:nr], rot_dev[:nr])
        d_half = hermitian_symmetrise_x0(check.data).cpu()[..., : size // 2]
        w_half = hermitian_symmetrise_x0(check.weight).cpu()[..., : size // 2]
        checks.append(("insertion: data accumulator vs np.add.at, correlation",
                       complex_correlation(d_half, data[..., size // 2:])))
        checks.append(("insertion: weight accumulator vs np.add.at, correlation",
                       complex_correlation(w_half, weight[..., size // 2:])))
        del data, weight, re, im, check

    # ---- torch-fourier-slice (optional) -------------------------------------------
    tfs_note = None
    if not args.no_tfs:
        version, why = tfs_available()
        if version is None:
            tfs_note = f"torch-fourier-slice not timed ({why})"
        else:
            tfs_rows, tfs_checks = bench_tfs(volume, rotations, images, ctf, vft, box, pad, n,
                                             batch, reps, device, proj_rate, ins_rate)
            for r in tfs_rows:
                r[1] = f"torch-fourier-slice {version}, {r[1]}"
            rows += tfs_rows
            checks += tfs_checks

    # ---- report --------------------------------------------------------------------
    print("| operation | implementation | work | median time (s) | throughput | peak RSS "
          f"({'CUDA alloc' if device.type == 'cuda' else 'MiB'}) | multirefine speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    for op, impl, work, t, rate, unit, peak, ratio in rows:
        rate_s = f"{fmt_rate(rate)} {unit}" if rate is not None else "-"
        ratio_s = f"{ratio:.1f}x" if ratio is not None else "-"
        peak_s = f"{peak:,.0f}" if peak == peak else "-"
        print(f"| {op} | {impl} | {work} | {t:.3f} | {rate_s} | {peak_s} | {ratio_s} |")
    print()
    if checks:
        print("| agreement check | value | pass (> 0.99) |")
        print("|---|---:|:-:|")
        for name, value in checks:
            print(f"| {name} | {value:.6f} | {'yes' if value > 0.99 else 'NO'} |")
        print()
    if tfs_note:
        print(tfs_note)
        print()
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    print(f"times: median of {reps} (multirefine, after 1 warm-up run) or a single run "
          "(reference); numpy reference on CPU, map_coordinates and np.add.at single-threaded; "
          "peak = process peak RSS during the stage (VmHWM reset per stage), not an increment.")

    if args.profile:
        profile_batches(vft, rot_dev, images, ctf_dev, acc, box, pad, batch, device)

    bad = [name for name, value in checks if value <= 0.99]
    if bad:
        print("AGREEMENT FAILED: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def bench_tfs(volume, rotations, images, ctf, vft, box, pad, n, batch, reps, device, proj_rate,
              ins_rate):
    """torch-fourier-slice on the same map: (a) the same padded half volume, whose slices
    are ``P x (P//2+1)`` (4x the samples of a multirefine slice, to be cropped after the
    inverse FFT), and (b) the unpadded half volume, ``D x (D//2+1)`` slices (the same number
    of samples as multirefine). Its matrices rotate column vectors, so it gets ``A^T``."""
    from torch_fourier_slice import extract_central_slices_rfft_3d, insert_central_slices_rfft_3d

    rows, checks = [], []
    rot_t = rotations.transpose(-1, -2).contiguous().to(device)
    size = pad * box
    vft1 = prepare_volume_ft(volume.to(device), 1)  # (D, D, D//2+1), same layout as tfs's
    for label, vol_ft, shape in (
        (f"padded {size}^3 volume, {size}x{size // 2 + 1} slices", vft, (size,) * 3),
        (f"unpadded {box}^3 volume, {box}x{box // 2 + 1} slices", vft1, (box,) * 3),
    ):
        def project_all(vol_ft=vol_ft):
            return torch.cat(batched(lambda s: extract_central_slices_rfft_3d(vol_ft, rot_t[s]),
                                     n, batch))

        with PeakMemory(device) as mem:
            t, out = timed(project_all, reps, device)
        rate = n / statistics.median(t)
        rows.append(["projection", label, f"{n} poses", statistics.median(t), rate, "poses/s",
                     mem.peak_mib, proj_rate / rate])
        # tfs slices are fftshifted along ky; multirefine's frequency k sits at index
        # (s / D) * k (+ s/2 on ky) of a slice of an s^3 volume.
        s = shape[0]
        ky = torch.fft.fftfreq(box, 1.0 / box).long()
        kx = torch.arange(box // 2 + 1)
        step = s // box
        sub = out[:, (ky * step + s // 2)[:, None], (kx * step)[None, :]]
        ref = images if s == size else extract_central_slices(vft1, rotations.to(device), box, 1)
        kxx, kyy = frequency_grid_2d(box)
        mask = (kxx**2 + kyy**2 < (box / 2) ** 2).to(device)
        checks.append((f"projection: multirefine vs torch-fourier-slice ({label.split(',')[0]})",
                       complex_correlation(ref * mask, sub * mask)))

    # insertion: tfs returns fresh (data, interpolation-weight) volumes per call and has no
    # CTF argument; insert ctf * X (one call per batch) and add into a running sum, which
    # is less work than multirefine's data + ctf^2 accumulation.
    for label, imgs, shape in (
        (f"unpadded {box}^3 volume, {box}x{box // 2 + 1} images", images, (box,) * 3),
    ):
        shifted = torch.fft.fftshift(imgs * ctf.to(device), dim=-2)
        total = torch.zeros(shape[0], shape[1], shape[2] // 2 + 1, dtype=torch.complex64,
                            device=device)

        def insert_all(shifted=shifted, shape=shape, total=total):
            for sl in (slice(i, min(i + batch, n)) for i in range(0, n, batch)):
                d, _w = insert_central_slices_rfft_3d(shifted[sl], shape, rot_t[sl])
                total += d

        with PeakMemory(device) as mem:
            t, _ = timed(insert_all, reps, device)
        rate = n / statistics.median(t)
        rows.append(["insertion (CTF pre-applied, no ctf^2)", label, f"{n} images",
                     statistics.median(t), rate, "images/s", mem.peak_mib, ins_rate / rate])
    return rows, checks


def profile_batches(vft, rot, images, ctf, acc, box, pad, batch, device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cpu_time_total"
    if device.type == "cuda":  # renamed self_device_time_total in recent torch
        key = "self_device_time_total"
    for name, fn in (
        (f"projection, {batch} poses", lambda: extract_central_slices(vft, rot[:batch], box, pad)),
        (f"insertion, {batch} images",
         lambda: acc.insert(images[:batch], ctf[:batch], rot[:batch])),
        ("reconstruct", acc.reconstruct),
    ):
        fn()
        sync(device)
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in events) or 1
        where = "CUDA" if device.type == "cuda" else "CPU"
        print(f"\n#### profile: {name} (torch.profiler, self {where} time)\n")
        print("| op | calls | self time (ms) | share |")
        print("|---|---:|---:|---:|")
        for e in events[:8]:
            v = getattr(e, key, 0)
            print(f"| {e.key} | {e.count} | {v / 1e3:.1f} | {100 * v / total:.0f}% |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
