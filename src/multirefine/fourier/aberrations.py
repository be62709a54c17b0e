"""Higher-order aberrations: beam tilt and odd and even Zernike terms, RELION 3.1's convention
(its CtfRefine writes them in ``data_optics``; checked against ``relion_reconstruct``).

An optics group's aberrations are two phase maps over the image's spatial frequency
``k = (kx, ky)`` in 1/Å (the image's own axes, x along columns)::

    odd(k)  = sum_i odd_i  * Z(m_i, n_i, kx, ky)    n odd:  the image is multiplied by exp(i odd(k))
    even(k) = sum_i even_i * Z(m_i, n_i, kx, ky)    n even: added to the CTF's phase chi(k)

``Z(m, n, x, y) = R_n^|m|(rho) * cos(m phi)`` for ``m >= 0`` and ``R_n^|m|(rho) * sin(|m| phi)``
for ``m < 0`` (``rho``, ``phi``: polar coordinates of ``(x, y)``, ``rho`` in 1/Å, not
normalised to an aperture), with the radial polynomial ``R_n^m``. The coefficients' order
(``rlnOddZernike``, ``rlnEvenZernike``) is RELION's: odd term ``i`` is ``n = 2j + 1`` with
``j = floor((sqrt(1 + 4 i) - 1) / 2)``, ``m = 2 (i - j (j + 1)) - n`` (so ``(m, n)`` runs
(-1, 1), (1, 1), (-3, 3), (-1, 3), (1, 3), (3, 3), ...); even term ``i`` is ``n = 2j`` with
``j = floor(sqrt(i))``, ``m = 2 (i - j^2 - j)`` ((0, 0), (-2, 2), (0, 2), (2, 2), ...).

Beam tilt ``(tx, ty)`` in mrad (``rlnBeamTiltX/Y``) is an odd aberration: RELION folds it into
the odd terms as ``c = -pi * Cs * lambda^2 * 2e4 / 3`` (Cs in mm, lambda in Å) times the tilt:
terms 0 and 1 gain ``2 c ty`` and ``2 c tx``, and terms 3 and 4 are *set* to ``c ty`` and
``c tx`` (RELION sets them; it does not add: kept so). Its phase is then ``-pi Cs lambda^2
2e4 |k|^2 (k . t)`` (Cs in mm): the textbook coma of a tilted beam.

Anisotropic magnification (``rlnMagMat``) is not modelled here (see
:func:`multirefine.io.columns.check_optics`).
"""

from __future__ import annotations

import math

import torch

from multirefine.fourier.fft import frequency_grid_2d

__all__ = [
    "aberration_phase_2d",
    "even_index_to_mn",
    "odd_index_to_mn",
    "odd_with_beam_tilt",
    "shift_phases",
    "zernike_cartesian",
]


def odd_index_to_mn(i: int) -> tuple[int, int]:
    """``(m, n)`` of RELION's odd Zernike term ``i`` (``rlnOddZernike``'s order)."""
    j = int((math.sqrt(1 + 4 * i) - 1.0) / 2.0)
    n = 2 * j + 1
    return 2 * (i - j * j - j) - n, n


def even_index_to_mn(i: int) -> tuple[int, int]:
    """``(m, n)`` of RELION's even Zernike term ``i`` (``rlnEvenZernike``'s order)."""
    j = int(math.sqrt(i))
    return 2 * (i - j * j - j), 2 * j


def _radial(m: int, n: int, rho: torch.Tensor) -> torch.Tensor:
    """The Zernike radial polynomial ``R_n^m(rho)``, ``0 <= m <= n`` (0 where ``n - m`` is odd)."""
    out = torch.zeros_like(rho)
    if (n - m) % 2:
        return out
    for k in range((n - m) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike_cartesian(m: int, n: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Zernike polynomial ``Z(m, n)`` at ``(x, y)`` (any shape; not normalised to a disc)."""
    rho, phi = torch.hypot(x, y), torch.atan2(y, x)
    angular = torch.cos(m * phi) if m >= 0 else torch.sin(-m * phi)
    return _radial(abs(m), n, rho) * angular


def odd_with_beam_tilt(odd: list[float], tilt_x_mrad: float, tilt_y_mrad: float, cs_mm: float,
                       wavelength_angstrom: float) -> list[float]:
    """The odd coefficients with a beam tilt folded in, as RELION's ObservationModel does
    (see the module docstring; a list of fewer than 5 terms is padded with zeros)."""
    out = list(odd) + [0.0] * max(0, 5 - len(odd))
    c = -cs_mm * 20000.0 * wavelength_angstrom**2 * math.pi / 3.0
    out[1] += 2.0 * c * tilt_x_mrad
    out[0] += 2.0 * c * tilt_y_mrad
    out[4] = c * tilt_x_mrad
    out[3] = c * tilt_y_mrad
    return out


def aberration_phase_2d(coefficients: list[float], odd: bool, box_size: int, pixel_size_angstrom: float,
                        device: torch.device | str | None = None, turned_deg: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """The phase (radians) ``(D, D//2+1)`` float64 of odd or even Zernike ``coefficients`` on
    the rfft grid of a ``D x D`` image (:func:`multirefine.fourier.fft.frequency_grid_2d`).
    With ``turned_deg`` ``(n,)``: ``(n, D, D//2+1)``, the phase of each image turned in its
    plane by that angle (the same turn as adding it to the CTF's defocus angle): the phase at
    ``k`` is the unturned one's at ``k`` rotated by minus the angle."""
    kx, ky = frequency_grid_2d(box_size, device=device, dtype=torch.float64)
    size = box_size * pixel_size_angstrom
    kx, ky = kx / size, ky / size
    if turned_deg is not None:
        a = torch.deg2rad(torch.as_tensor(turned_deg, dtype=torch.float64, device=kx.device))[:, None, None]
        kx, ky = kx * torch.cos(a) + ky * torch.sin(a), -kx * torch.sin(a) + ky * torch.cos(a)
    phase = torch.zeros_like(kx)
    for i, c in enumerate(coefficients):
        if c:
            m, n = odd_index_to_mn(i) if odd else even_index_to_mn(i)
            phase = phase + c * zernike_cartesian(m, n, kx, ky)
    return phase


def shift_phases(ft: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``ft * exp(i phase)``: an image transform with odd aberrations' phases put on (``phase``)
    or taken off (``-phase``)."""
    return ft * torch.polar(torch.ones_like(phase), phase)
