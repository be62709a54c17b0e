"""The noise model: the power of the noise per Fourier shell, per group of particles.

Real images do not hold white noise: ice, the detector and the beam put more power at low
frequencies, and a score that treats every pixel alike then lets the noisiest frequencies
decide (the least-squares score is the white-noise log-likelihood). With the noise power
``sigma^2(k)`` of each particle's group, the log-likelihood under coloured Gaussian noise is
the least-squares score of the whitened image ``X / sigma`` against the whitened CTF
``c / sigma`` (RELION's weighting):

    log p(X | P) = -sum_k |X - c P|^2 / (2 sigma^2(k))     (up to a constant)

so whitening each batch as it is loaded (:meth:`NoiseModel.whiten`, called by
:func:`multirefine.refine.batch.load_batch` when the stack carries a model) makes every
stage use it: the search's score, the model choice, the intensity scales, and the
reconstruction's weights (``sum c X / sigma^2`` over ``sum c^2 / sigma^2``; the map stays
in the images' units). A constant factor on ``sigma^2`` changes no pose nor any map.

Groups: the optics groups (``rlnOpticsGroup``), one group when the table has none. The
estimate (:func:`estimate_noise_from_edges`) is the mean power spectrum of the images'
background (beyond the particle's radius, a soft edge, divided by the mean square of that
window), over a sample of each group's particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multirefine.fourier.fft import radial_index_2d, rfft2_centered

__all__ = ["NOISE_MODELS", "NOISE_SAMPLE", "NoiseModel", "estimate_noise_from_edges", "whitened_stacks"]

NOISE_SAMPLE = 1000  # particles per group whose background gives the estimate
GROUP_COLUMN = "rlnOpticsGroup"


@dataclass(frozen=True)
class NoiseModel:
    """Noise power per shell ``(G, D//2+1)`` (relative units; rfft2 of the images) for the
    groups ``group_values`` of ``rlnOpticsGroup`` (``[0]`` with one group for all)."""

    group_values: tuple[int, ...]
    power: np.ndarray  # (G, D//2+1), each group's mean over shells 1..D/2 is 1

    def group_index(self, metadata: pd.DataFrame) -> np.ndarray:
        """Each row's group (index into :attr:`power`); rows of a group not estimated take group 0."""
        if GROUP_COLUMN not in metadata.columns or len(self.group_values) == 1:
            return np.zeros(len(metadata), dtype=np.int64)
        lookup = {value: i for i, value in enumerate(self.group_values)}
        return np.array([lookup.get(int(v), 0) for v in metadata[GROUP_COLUMN].to_numpy()], dtype=np.int64)

    def whiten(self, images_ft: torch.Tensor, ctf: torch.Tensor | None,
               metadata: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Image transforms ``(n, D, D//2+1)`` and CTFs (None: 1) divided by each row's noise
        amplitude ``sigma(|k|)`` (shells beyond D/2 take the last one's)."""
        box = images_ft.shape[-2]
        shells = radial_index_2d(box, device=images_ft.device).clamp(max=box // 2)
        power = torch.as_tensor(self.power, dtype=torch.float32, device=images_ft.device)
        groups = torch.as_tensor(self.group_index(metadata), device=images_ft.device)
        inverse_sigma = power.clamp_min(1e-12).rsqrt()[groups][:, shells]  # (n, D, D//2+1)
        if ctf is None:
            ctf = torch.ones(images_ft.shape, dtype=torch.float32, device=images_ft.device)
        return images_ft * inverse_sigma, ctf * inverse_sigma

    def to_json(self) -> dict:
        return {"optics_groups": list(self.group_values), "power_per_shell": self.power.tolist()}


def _background_window(box: int, radius_px: float, edge_px: float = 3.0) -> torch.Tensor:
    """``(D, D)``: 0 within ``radius_px`` of the centre, a raised cosine to 1 over ``edge_px``."""
    c = torch.arange(box, dtype=torch.float32) - box // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    t = ((r - radius_px) / edge_px).clamp(0, 1)
    return 0.5 * (1 - torch.cos(math.pi * t))


def estimate_noise_from_edges(stack, radius_px: float, batch_size: int = 500) -> NoiseModel:
    """The noise power per shell of each optics group, from its particles' backgrounds
    (beyond ``radius_px``; a sample of :data:`NOISE_SAMPLE` per group, evenly spaced rows).
    Each image's background mean is removed first (an offset is no noise of the search's:
    its band leaves out the DC pixel)."""
    box = stack.box_size
    window = _background_window(box, radius_px)
    if float(window.mean()) < 0.05:  # the particle fills the box: no background to measure
        window = torch.ones(box, box)
    shells = radial_index_2d(box)
    n_shells = box // 2 + 1
    inside = shells <= box // 2
    counts = torch.zeros(n_shells).index_add_(0, shells[inside], torch.ones(int(inside.sum())))
    metadata = stack.metadata
    values = sorted({int(v) for v in metadata[GROUP_COLUMN]}) if GROUP_COLUMN in metadata.columns else [0]
    power = np.zeros((len(values), n_shells))
    for g, value in enumerate(values):
        rows = np.arange(len(stack)) if len(values) == 1 else np.flatnonzero(metadata[GROUP_COLUMN] == value)
        sample = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), NOISE_SAMPLE)).round().astype(int))]
        total = torch.zeros(n_shells, dtype=torch.float64)
        for start in range(0, len(sample), batch_size):
            images = torch.as_tensor(np.asarray(stack[sample[start:start + batch_size]]), dtype=torch.float32)
            level = (images * window).sum((-2, -1), keepdim=True) / window.sum()
            spectra = rfft2_centered((images - level) * window).abs() ** 2  # (n, D, D//2+1)
            summed = spectra[:, inside].sum(0).double()
            total += torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shells[inside], summed)
        shell_power = (total / counts.double() / len(sample) / float((window**2).mean())).numpy()
        shell_power[0] = shell_power[1]  # the DC shell holds the removed level, not noise; never searched
        power[g] = shell_power / shell_power[1:].mean()
    return NoiseModel(tuple(values), power)


NOISE_MODELS = ("white", "coloured")


def whitened_stacks(stack, search_stack, radius_px: float, kind: str, normalise: bool = False):
    """``(stack, search_stack)`` carrying their noise models (``kind`` "coloured": estimated
    from each stack's backgrounds beyond ``radius_px``; "white": as they are), each image's
    background plane and SD beyond ``radius_px`` taken out first where ``normalise``
    (``--norm``). The search stack stays the same object as the stack where it was."""
    if normalise:
        same = search_stack is stack
        stack = stack.subset(slice(None))
        stack.background_radius_px = radius_px
        if same:
            search_stack = stack
        else:
            search_stack = search_stack.subset(slice(None))
            search_stack.background_radius_px = radius_px
    if kind == "white":
        return stack, search_stack
    whitened = stack.with_noise(estimate_noise_from_edges(stack, radius_px))
    if search_stack is stack:
        return whitened, whitened
    return whitened, search_stack.with_noise(estimate_noise_from_edges(search_stack, radius_px))
