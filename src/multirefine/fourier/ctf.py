"""Contrast transfer function, RELION's convention (verified against RELION 3.1.3).

``CTF(k) = -sin(chi(k)) * exp(-B k^2 / 4)`` with::

    chi = -pi * lambda * defocus(theta) * k^2 + (pi / 2) * Cs * lambda^3 * k^4
          - atan(Q / sqrt(1 - Q^2)) - phase_shift
    defocus(theta) = (U + V) / 2 + (U - V) / 2 * cos(2 * (theta - defocus_angle))
    theta = atan2(ky, kx)

``k`` in 1/Å, defocus ``U``, ``V`` in Å (positive = underfocus), ``Cs`` in Å, the
electron wavelength ``lambda = 12.2643247 / sqrt(V * (1 + 0.978466e-6 * V))`` Å for an
accelerating voltage ``V`` in volts. With this sign protein is white (positive) in the
images and the CTF is positive at low frequency.
"""

from __future__ import annotations

import math

import torch

from multirefine.fourier.fft import frequency_grid_2d

__all__ = ["calculate_ctf_2d", "electron_wavelength_angstrom"]


def electron_wavelength_angstrom(voltage_kv: float | torch.Tensor) -> float | torch.Tensor:
    """Relativistic electron wavelength (Å) for an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    if isinstance(volts, torch.Tensor):
        return 12.2643247 / torch.sqrt(volts * (1 + 0.978466e-6 * volts))
    return 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def calculate_ctf_2d(
    *,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    defocus_angle_deg: torch.Tensor,
    voltage_kv: torch.Tensor,
    cs_mm: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    pixel_size_angstrom: torch.Tensor,
    box_size: int,
    phase_shift_deg: torch.Tensor | float = 0.0,
    bfactor_angstrom2: torch.Tensor | float = 0.0,
    gamma_offset: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """CTF on the rfft grid of a ``D x D`` image.

    Every parameter is a tensor of shape ``(...)`` (broadcast together, or a float);
    the result is ``(..., D, D//2+1)`` float32 in the layout of
    :func:`multirefine.fourier.fft.rfft2_centered`. ``gamma_offset`` ``(..., D, D//2+1)``
    (radians; even aberrations, :mod:`multirefine.fourier.aberrations`) is added to ``chi``.
    """
    params = torch.broadcast_tensors(
        *(
            torch.as_tensor(p, dtype=torch.float64, device=device)
            for p in (
                defocus_u_angstrom,
                defocus_v_angstrom,
                defocus_angle_deg,
                voltage_kv,
                cs_mm,
                amplitude_contrast,
                pixel_size_angstrom,
                phase_shift_deg,
                bfactor_angstrom2,
            )
        )
    )
    u, v, angle, kv, cs, q, apix, phase, bfac = (p[..., None, None] for p in params)
    kx, ky = frequency_grid_2d(box_size, device=u.device, dtype=torch.float64)
    kx = kx / (box_size * apix)
    ky = ky / (box_size * apix)
    k2 = kx**2 + ky**2
    theta = torch.atan2(ky, kx)
    defocus = 0.5 * (u + v) + 0.5 * (u - v) * torch.cos(2 * (theta - torch.deg2rad(angle)))
    lam = electron_wavelength_angstrom(kv)
    cs_angstrom = cs * 1e7
    chi = (
        -math.pi * lam * defocus * k2
        + 0.5 * math.pi * cs_angstrom * lam**3 * k2**2
        - torch.atan(q / torch.sqrt(1 - q**2))
        - torch.deg2rad(phase)
    )
    if gamma_offset is not None:
        chi = chi + gamma_offset.to(chi)
    ctf = -torch.sin(chi) * torch.exp(-0.25 * bfac * k2)
    return ctf.to(torch.float32)
