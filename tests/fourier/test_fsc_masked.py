"""The masked, solvent-corrected FSC (relion_postprocess's phase randomisation): a tight mask
correlates two half maps where they share no signal; the correction takes that out and leaves
the shells below the randomisation as the masked FSC."""

from __future__ import annotations

import torch
from helpers import random_atoms_map

from multirefine.fourier.filters import lowpass_volume
from multirefine.fourier.fsc import fourier_shell_correlation, masked_fsc_corrected
from multirefine.fourier.masks import mask_from_map


def test_the_correction_removes_what_the_mask_correlates():
    """Half maps: one signal limited to shell 8 (8 px) plus independent noise each. Beyond
    shell 12 they share nothing: the unmasked FSC is about 0, the FSC within a sharp mask around
    the signal is not (0.1-0.9), the corrected one is about 0 again; below the randomisation
    shell the corrected FSC is the masked one."""
    signal = lowpass_volume(torch.from_numpy(random_atoms_map(64, 400, seed=1, spread_px=6.0)), 8.0, 1.0, 0.5)
    generator = torch.Generator().manual_seed(1)
    noise = 0.5 * float(signal.std())
    half_a = signal + noise * torch.randn(signal.shape, generator=generator)
    half_b = signal + noise * torch.randn(signal.shape, generator=generator)
    mask = mask_from_map(signal, 0.1 * float(signal.max()), 1.0, 0.0)
    corrected, masked = masked_fsc_corrected(half_a, half_b, mask)
    unmasked = fourier_shell_correlation(half_a, half_b)
    beyond = slice(12, 33)
    assert float(unmasked[beyond].abs().mean()) < 0.02
    assert float(masked[beyond].min()) > 0.1 and float(masked[12]) > 0.5
    assert float(corrected[beyond].mean().abs()) < 0.05 and float(corrected[beyond].abs().max()) < 0.2
    assert torch.equal(corrected[:8], masked[:8]) and float(corrected[6]) > 0.99
