"""The global polar pass's hot line at a late three-state iteration's chunk sizes (BENCHMARKS.md,
"Where a late iteration's time goes"): the batched product of the shifted particles' angular
spectra with the references' and the transform back to in-plane angles, as
``multirefine.refine.polar.search_global_polar`` does it (A), and rearrangements of it: the
transform along the first axis (B), a contiguous copy first (C), the product as a real matrix
product of stacked real and imaginary parts (D). Prints ms per call (2 threads) and checks
that each gives A's result.

    .venv/bin/python bench/bench_polar_line.py
"""

import time

import torch

torch.manual_seed(0)
torch.set_num_threads(2)
h, S, n, R, J, T = 25, 81, 48, 18, 45, 48
a = torch.randn(h, S*n, R, dtype=torch.complex64)
refs = torch.randn(h, R, J, dtype=torch.complex64)
def A():
    cross = torch.fft.irfft(torch.bmm(a, refs).permute(1, 2, 0), n=T, dim=-1)
    return cross.reshape(S, n, -1).amax(0)
def B():
    y = torch.bmm(a, refs)
    cross = torch.fft.irfft(y, n=T, dim=0)           # (T, S n, J)
    m = cross.reshape(T, S, n, J).amax(1)            # (T, n, J)
    return m.permute(1, 2, 0).reshape(n, -1)
def C():
    y = torch.bmm(a, refs).permute(1, 2, 0).contiguous()
    cross = torch.fft.irfft(y, n=T, dim=-1)
    return cross.reshape(S, n, -1).amax(0)
def bmmonly():
    return torch.bmm(a, refs)
for f in (A, B, C, bmmonly):
    f()
    t = time.perf_counter()
    for _ in range(20): r = f()
    print(f.__name__, (time.perf_counter() - t) / 20 * 1000, 'ms')
print((A() - B()).abs().max().item(), A().abs().max().item())
# real formulation: a as (h, Sn, 2R) real [ar | ai]; B (h, 2R, J*2) interleaved so output views as complex
ar = torch.cat([a.real, a.imag], -1).contiguous()              # (h, Sn, 2R)
rr, ri = refs.real, refs.imag                                   # (h, R, J)
top = torch.stack([rr, ri], -1).reshape(h, R, 2 * J)             # rows of ar: yr += ar rr, yi += ar ri
bot = torch.stack([-ri, rr], -1).reshape(h, R, 2 * J)            # rows of ai: yr -= ai ri, yi += ai rr
Bm = torch.cat([top, bot], 1).contiguous()                       # (h, 2R, 2J)
def D():
    y = torch.view_as_complex(torch.bmm(ar, Bm).reshape(h, S * n, J, 2))
    cross = torch.fft.irfft(y.permute(1, 2, 0), n=T, dim=-1)
    return cross.reshape(S, n, -1).amax(0)
def realbmm():
    return torch.bmm(ar, Bm)
for f in (D, realbmm):
    f()
    t = time.perf_counter()
    for _ in range(20): r = f()
    print(f.__name__, (time.perf_counter() - t) / 20 * 1000, 'ms')
print((A() - D()).abs().max().item())
