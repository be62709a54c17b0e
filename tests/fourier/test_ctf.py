"""CTF: RELION's convention, value by value."""

import math

import numpy as np
import pytest
import torch

from multirefine.fourier.ctf import calculate_ctf_2d, electron_wavelength_angstrom
from multirefine.fourier.fft import frequency_grid_2d


def reference_ctf(kx, ky, u, v, angle, kv, cs, q, phase=0.0, bfac=0.0):
    """The CTF formula of docs/architecture.md ("Conventions"), written out in plain numpy, k in 1/Å."""
    volts = kv * 1e3
    lam = 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))
    k2 = kx**2 + ky**2
    theta = np.arctan2(ky, kx)
    defocus = (u + v) / 2 + (u - v) / 2 * np.cos(2 * (theta - np.radians(angle)))
    chi = (
        -math.pi * lam * defocus * k2
        + math.pi / 2 * cs * 1e7 * lam**3 * k2**2
        - math.atan(q / math.sqrt(1 - q * q))
        - math.radians(phase)
    )
    return -np.sin(chi) * np.exp(-bfac / 4 * k2)


def test_wavelength_300kv():
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.019687, abs=1e-6)


@pytest.mark.parametrize(
    "u,v,angle,kv,cs,q,phase,bfac",
    [(15000, 14000, 30, 300, 2.7, 0.1, 0, 0), (22000, 21500, 120, 200, 0.01, 0.07, 90, 50)],
)
def test_ctf_matches_formula(u, v, angle, kv, cs, q, phase, bfac):
    box, apix = 64, 1.3
    t = lambda value: torch.tensor(value, dtype=torch.float64)
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=t(u), defocus_v_angstrom=t(v), defocus_angle_deg=t(angle),
        voltage_kv=t(kv), cs_mm=t(cs), amplitude_contrast=t(q), pixel_size_angstrom=t(apix),
        phase_shift_deg=phase, bfactor_angstrom2=bfac, box_size=box,
    )
    kx, ky = frequency_grid_2d(box, dtype=torch.float64)
    expected = reference_ctf(kx.numpy() / (box * apix), ky.numpy() / (box * apix), u, v, angle, kv, cs, q, phase, bfac)
    assert ctf.shape == (box, box // 2 + 1)
    np.testing.assert_allclose(ctf.numpy(), expected, atol=1e-5)


def test_ctf_sign_and_astigmatism_axis():
    """Positive at low frequency; the first zero comes first along the high-defocus axis U."""
    box = 256
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=torch.tensor(20000.0), defocus_v_angstrom=torch.tensor(10000.0),
        defocus_angle_deg=torch.tensor(0.0), voltage_kv=torch.tensor(300.0), cs_mm=torch.tensor(2.7),
        amplitude_contrast=torch.tensor(0.1), pixel_size_angstrom=torch.tensor(1.0), box_size=box,
    )
    assert ctf[0, 0] == pytest.approx(0.1, abs=1e-6)
    along_x = ctf[0, :].numpy()  # ky = 0: the U direction at angle 0
    along_y = ctf[: box // 2, 0].numpy()
    assert np.argmax(along_x < 0) < np.argmax(along_y < 0)


def test_ctf_batch_shapes():
    n = torch.ones(3, 2)
    ctf = calculate_ctf_2d(
        defocus_u_angstrom=15000 * n, defocus_v_angstrom=15000 * n, defocus_angle_deg=0 * n,
        voltage_kv=300 * n, cs_mm=2.7 * n, amplitude_contrast=0.1 * n, pixel_size_angstrom=n, box_size=16,
    )
    assert ctf.shape == (3, 2, 16, 9)
