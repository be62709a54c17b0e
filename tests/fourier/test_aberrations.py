"""Beam tilt and Zernike terms: RELION 3.1's ordering and formulas, and the physics they encode.
That relion_reconstruct reads them as multirefine writes and applies them is in
tests/oracle/test_relion.py."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from multirefine.fourier.aberrations import (
    aberration_phase_2d,
    even_index_to_mn,
    odd_index_to_mn,
    odd_with_beam_tilt,
    zernike_cartesian,
)
from multirefine.fourier.ctf import electron_wavelength_angstrom
from multirefine.fourier.fft import frequency_grid_2d
from multirefine.refine.batch import aberrations_for_rows


def test_coefficient_order_is_relions():
    assert [odd_index_to_mn(i) for i in range(6)] == [(-1, 1), (1, 1), (-3, 3), (-1, 3), (1, 3), (3, 3)]
    assert [even_index_to_mn(i) for i in range(9)] == [(0, 0), (-2, 2), (0, 2), (2, 2), (-4, 4), (-2, 4), (0, 4),
                                                        (2, 4), (4, 4)]


def test_zernike_polynomials():
    """Textbook values: every radial polynomial is 1 at rho = 1, Z(0, 2) = 2 rho^2 - 1, Z(1, 3) =
    (3 rho^3 - 2 rho) cos(phi), Z(-2, 2) = rho^2 sin(2 phi); and they are orthogonal on the disc."""
    angle = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for i in range(15):
        m, n = even_index_to_mn(i) if i % 2 else odd_index_to_mn(i)
        at_one = zernike_cartesian(m, n, torch.cos(angle), torch.sin(angle))
        expected = torch.cos(m * angle) if m >= 0 else torch.sin(-m * angle)
        assert torch.allclose(at_one, expected, atol=1e-12), (m, n)
    x, y = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.4, 0.5], dtype=torch.float64)
    rho2, phi = x**2 + y**2, torch.atan2(y, x)
    assert torch.allclose(zernike_cartesian(0, 2, x, y), 2 * rho2 - 1)
    assert torch.allclose(zernike_cartesian(1, 3, x, y), (3 * rho2**1.5 - 2 * rho2**0.5) * torch.cos(phi))
    assert torch.allclose(zernike_cartesian(-2, 2, x, y), rho2 * torch.sin(2 * phi))
    g = torch.linspace(-1, 1, 401, dtype=torch.float64)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    disc = (gx**2 + gy**2) <= 1
    a, b = zernike_cartesian(-1, 3, gx, gy)[disc], zernike_cartesian(-1, 1, gx, gy)[disc]
    assert abs(float((a * b).mean())) < 2e-3 * float((b * b).mean())


def test_beam_tilt_is_the_coma_of_a_tilted_beam():
    """Folded into the odd terms as RELION does, a beam tilt t gives the phase
    -2 pi Cs lambda^2 |k|^2 (k . t) (Cs in Å, t in rad): the textbook axial coma."""
    box, apix, cs_mm, tilt = 64, 1.1, 2.7, (0.8, -0.5)
    lam = electron_wavelength_angstrom(300.0)
    phase = aberration_phase_2d(odd_with_beam_tilt([], *tilt, cs_mm, lam), True, box, apix)
    kx, ky = (k / (box * apix) for k in frequency_grid_2d(box, dtype=torch.float64))
    expected = -2 * math.pi * cs_mm * 1e7 * lam**2 * (kx**2 + ky**2) * (kx * tilt[0] + ky * tilt[1]) * 1e-3
    assert torch.allclose(phase, expected, atol=1e-9)
    # RELION sets (not adds) terms 3 and 4: a coma already there is replaced, the linear ones added to
    assert odd_with_beam_tilt([1, 2, 3, 4, 5, 6], 0, 0, cs_mm, lam) == [1, 2, 3, 0, 0, 6]


def test_odd_phases_are_odd_and_even_ones_even():
    """An image stays real under exp(i odd(k)) only if odd(-k) = -odd(k); an even phase adds to the
    CTF's, which is symmetric. Checked on the rfft grid's column 0, where -k is in the grid."""
    box = 32
    odd = aberration_phase_2d([0.2, -0.1, 0.5, 0.3, 0.1, -0.4], True, box, 1.0)
    even = aberration_phase_2d([0.3, 1.0, -2.0, 0.5, 0.2], False, box, 1.0)
    rows = np.r_[1 : box // 2]  # ky = 1 .. D/2 - 1 and their negatives at D - ky
    assert torch.allclose(odd[rows, 0], -odd[box - rows, 0], atol=1e-12)
    assert torch.allclose(even[rows, 0], even[box - rows, 0], atol=1e-12)


def test_rows_get_their_optics_groups_phases():
    base = {"rlnSphericalAberration": 2.7, "rlnVoltage": 300.0, "rlnImagePixelSize": 1.0}
    rows = pd.DataFrame([{**base, "rlnBeamTiltX": 0.5, "rlnBeamTiltY": 0.0, "rlnEvenZernike": "[0,0.5]"},
                         {**base, "rlnBeamTiltX": 0.0, "rlnBeamTiltY": 0.0, "rlnEvenZernike": "[]"},
                         {**base, "rlnBeamTiltX": 0.5, "rlnBeamTiltY": 0.0, "rlnEvenZernike": "[0,0.5]"}])
    odd, even = aberrations_for_rows(rows, 16)
    assert odd.shape == even.shape == (3, 16, 9)
    assert torch.equal(odd[0], odd[2]) and odd[0].abs().max() > 0 and odd[1].abs().max() == 0
    assert torch.allclose(even[0], aberration_phase_2d([0, 0.5], False, 16, 1.0).float())
    assert aberrations_for_rows(pd.DataFrame([base]), 16) == (None, None)
    # As RELION: where a tilt column is, every group gets the tilt folded in, so a group without
    # tilt has its terms 3 and 4 set to 0; a missing value is no tilt
    coma = pd.DataFrame([{**base, "rlnBeamTiltX": np.nan, "rlnOddZernike": "[0,0,0,0.5,0.5]"}])
    odd, even = aberrations_for_rows(coma, 16)
    assert odd is None and even is None


def test_a_turned_images_phase_is_the_phase_turned():
    """Turned by 90° in its plane (class averages turn images by their psi, the CTF's defocus angle
    with them), an image's even phase at k is the unturned one's at k rotated by -90°: (ky, -kx)."""
    coefficients = [0.3, 1.0, -2.0, 0.5, 0.2, 0.7, -0.4]
    box = 16
    plain = aberration_phase_2d(coefficients, False, box, 1.0)
    turned = aberration_phase_2d(coefficients, False, box, 1.0, turned_deg=torch.tensor([90.0]))[0]
    for kx, ky in ((3, 2), (5, 4), (1, 7), (6, 0), (0, 3)):
        assert -box // 2 < -kx < box // 2 and ky >= 0  # (ky, -kx) must be in the half grid: ky >= 0
        assert turned[ky % box, kx].item() == pytest.approx(plain[(-kx) % box, ky].item(), abs=1e-9)
    rows = pd.DataFrame({"rlnSphericalAberration": [2.7] * 2, "rlnVoltage": [300.0] * 2, "rlnImagePixelSize": [1.0] * 2,
                         "rlnEvenZernike": ["[" + ",".join(map(str, coefficients)) + "]"] * 2})
    _, even = aberrations_for_rows(rows, box, turned_deg=np.array([0.0, 90.0]))
    assert torch.allclose(even[0], plain.float()) and torch.allclose(even[1], turned.float())


@pytest.mark.parametrize("value", ["[0.1,x]", "[nan]"])
def test_a_zernike_list_that_is_not_numbers_is_refused(value, tmp_path):
    from multirefine.errors import InputError
    from multirefine.io.columns import check_optics

    with pytest.raises(InputError, match=r"opt\.star: rlnOddZernike is .*expected a list of numbers"):
        check_optics(pd.DataFrame({"rlnOddZernike": [value]}), tmp_path / "opt.star")
