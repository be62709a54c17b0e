"""Each particle's intensity scale (``--scale``; RELION's scale correction, per particle here).

Particles differ in contrast (ice thickness, the particle's depth, dose): with one intensity
for all, a brighter particle fits the model with more density better. So each particle's CTF
is multiplied by its own scale ``a`` (the search compares ``X`` with ``a c P``; the
reconstruction adds ``a c X`` over ``a^2 c^2``, so the map stays in the particles' mean units).

After each search the scale of the reference in the particle at its best pose is measured
(``cross / refpower``, :attr:`multirefine.refine.assignment.Searched.fit_scale`; with noise of
variance ``sigma^2`` per Fourier pixel it has variance ``sigma^2 / refpower``), and the next
scale is the posterior mean under a normal prior about 1 of SD :data:`PRIOR_SD` (a particle
with little signal in the band keeps nearly 1):

    a_next = a * (cross / sigma^2 + 1 / s0^2) / (refpower / sigma^2 + 1 / s0^2)

The scales live in the particle table's column :data:`INTENSITY_COLUMN` (written to
``particles_II.star``), read by :func:`multirefine.refine.batch.load_batch` where the stack
says so (:func:`with_scales`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["INTENSITY_COLUMN", "PRIOR_SD", "next_scales", "scales_of", "with_scales"]

INTENSITY_COLUMN = "mrIntensityScale"
PRIOR_SD = 0.25  # the prior's SD about 1 (contrast varies by about 20 % between real particles)
BOUNDS = (0.2, 5.0)  # no particle's scale leaves these


def scales_of(stack) -> np.ndarray:
    """The stack's scales (1 where its table has none)."""
    if INTENSITY_COLUMN in stack.metadata.columns:
        return stack.metadata[INTENSITY_COLUMN].to_numpy(dtype=np.float64)
    return np.ones(len(stack))


def next_scales(scales: np.ndarray, cross: np.ndarray, refpower: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """The posterior mean scale of each particle ``(n,)`` (see the module docstring), from the
    scales the search used, its ``cross`` and ``refpower`` at its best pose and its noise
    power per pixel ``sigma2``."""
    precision = 1.0 / PRIOR_SD**2
    sigma2 = np.maximum(sigma2, 1e-30)
    factor = (cross / sigma2 + precision) / (np.maximum(refpower, 0.0) / sigma2 + precision)
    return np.clip(scales * factor, *BOUNDS)


def with_scales(stack, scales: np.ndarray):
    """``stack`` whose batches are loaded with each particle's CTF times its scale."""
    metadata = stack.metadata.copy()
    metadata[INTENSITY_COLUMN] = scales
    out = stack.with_metadata(metadata)
    out.intensity_column = INTENSITY_COLUMN
    return out
