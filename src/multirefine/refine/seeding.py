"""Starting models: K given maps, or K variants of one map.

* Given maps whose box or pixel size differ from the particles' are resampled to the
  particles' pixel size (Fourier cropping or padding) and clipped or padded to their box,
  as EMAN2 does.
* ``randphase``: the phases of one map are randomised beyond a low resolution, a
  different draw for each model (EMAN2's ``--randphase``). The resolution is where the
  map still has power (its shell power falls to 0.1 % of the peak), times 1.4, so that a
  map that was low-passed (a consensus map at 30 Å) still gets distinct seeds.
* ``mapfragment``: a different random part of one map is removed for each model (a soft
  sphere of a third of the particle radius centred on the density).
* ``randclassify``: particles are aligned to the one map, then split at random into K sets
  that are reconstructed (:func:`seed_models` draws the split; the driver's first iteration
  uses it).

Before the first search the starting maps are levelled (:func:`level_start_maps`: a map on a
level would project as a slab) and maps from different files are aligned to map 1 with a
hand check where that fits clearly better (:func:`align_to_first`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.fourier.crop import resample_volume
from multirefine.fourier.fft import frequency_grid_3d, irfftn3_centered, rfftn3_centered
from multirefine.fourier.fsc import shell_index_3d
from multirefine.fourier.masks import soft_sphere_mask, solvent_level
from multirefine.geometry.euler import rotation_change_deg
from multirefine.refine.postprocess import ALIGNMENT_MARGIN, align_volume

__all__ = [
    "align_to_first",
    "fit_to_box",
    "level_start_maps",
    "particle_radius_px",
    "place_in_box",
    "power_limit_angstrom",
    "randomize_phases",
    "remove_fragment",
    "seed_models",
]

log = logging.getLogger(__name__)

MAX_SPAN = 4  # fit_to_box: a starting map may span at most this many particle boxes


def fit_to_box(volume: np.ndarray, voxel_size: float | None, pixel_size: float, box_size: int, name: str) -> np.ndarray:
    """A starting map on the particles' grid (:func:`place_in_box`). Raises InputError where
    it is constant within the box (all zero, say)."""
    fitted = place_in_box(volume, voxel_size, pixel_size, box_size, name)
    if not float(fitted.max() - fitted.min()) > 0:  # all zero, constant, or its content clipped away
        raise InputError(f"{name}: every voxel is {float(fitted.flat[0]):g} within the particles' box; a starting "
                         "map needs a particle for the search to align to")
    return fitted


def place_in_box(volume: np.ndarray, voxel_size: float | None, pixel_size: float, box_size: int, name: str) -> np.ndarray:
    """Resample ``volume`` to ``pixel_size`` and clip or pad it to ``box_size`` (centred), with
    a logged line for each. Raises InputError where the map resampled would span over
    :data:`MAX_SPAN` times the box, or under an eighth of it (a voxel size in its header that is
    wrong, most likely: 100 Å/px made 2400³ of 24³, 0.01 Å/px 2³)."""
    out = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    size = out.shape[-1]
    if voxel_size and abs(voxel_size - pixel_size) > 1e-3 * pixel_size:
        new = max(2, round(size * voxel_size / pixel_size))
        too_big = new > MAX_SPAN * box_size
        if too_big or size * voxel_size < box_size * pixel_size / (2 * MAX_SPAN):
            bound = f"over {MAX_SPAN} times" if too_big else f"under 1/{2 * MAX_SPAN} of"
            raise InputError(f"{name}: {size} px at {voxel_size:g} Å/px span {size * voxel_size:.4g} Å, {bound} the "
                             f"particles' box ({box_size * pixel_size:.0f} Å); is the voxel size in its header right?")
        log.info("%s: resampled from %.4g to %.4g Å/px (%d -> %d px)", name, voxel_size, pixel_size, size, new)
        out = resample_volume(out, new)
        size = new
    if size != box_size:
        log.info("%s: %s from %d to %d px", name, "clipped" if size > box_size else "padded", size, box_size)
        result = torch.zeros((box_size,) * 3)
        src0 = max(0, size // 2 - box_size // 2)
        dst0 = max(0, box_size // 2 - size // 2)
        n = min(size, box_size)
        result[dst0 : dst0 + n, dst0 : dst0 + n, dst0 : dst0 + n] = out[src0 : src0 + n, src0 : src0 + n, src0 : src0 + n]
        out = result
    return out.numpy()


def power_limit_angstrom(volume: np.ndarray, pixel_size: float, fraction: float = 1e-3) -> float:
    """Resolution (Å) beyond which the map's shell power stays below ``fraction`` of its peak."""
    box = volume.shape[-1]
    ft = rfftn3_centered(torch.from_numpy(volume).double())
    shells, mult = shell_index_3d(box)
    inside = shells <= box // 2
    power = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(
        0, shells[inside], (ft.abs() ** 2 * mult)[inside]
    )
    counts = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, shells[inside], mult.double()[inside])
    mean = (power / counts.clamp(min=1)).numpy()
    peak = mean[1:].max()
    above = np.nonzero(mean[1:] >= fraction * peak)[0]
    last = int(above[-1]) + 1 if len(above) else 1
    return box * pixel_size / max(last, 1)


def randomize_phases(volume: np.ndarray, pixel_size: float, beyond_angstrom: float, seed: int) -> np.ndarray:
    """Random phases at frequencies beyond ``beyond_angstrom``; amplitudes kept."""
    box = volume.shape[-1]
    ft = rfftn3_centered(torch.from_numpy(volume).double())
    kx, ky, kz = frequency_grid_3d(box, dtype=torch.float64)
    beyond = torch.sqrt(kx**2 + ky**2 + kz**2) > box * pixel_size / beyond_angstrom
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(ft.shape, generator=gen, dtype=torch.float64) * 2 * math.pi
    ft = torch.where(beyond, torch.polar(ft.abs(), phase), ft)
    # Random phases break Friedel symmetry on the kx = 0 and Nyquist planes, where the half
    # transform holds both of a pair; irfftn keeps the map real by taking one of each pair,
    # so there (2 of the box's 33 planes at 64) the amplitudes are not kept. White noise's
    # phases would keep them, but give other draws: on the 1000-particle test set the
    # --randphase split then reached 67.9 % instead of 79.9 % (one draw each), so the
    # change waits for a measurement over several seeds (BENCHMARKS.md).
    return irfftn3_centered(ft, box).numpy().astype(np.float32)


def particle_radius_px(volume: np.ndarray, fraction: float = 0.97) -> float:
    """Radius (px, about the box centre) holding ``fraction`` of the map's positive density."""
    box = volume.shape[-1]
    idx = np.arange(box) - box // 2
    z, y, x = np.meshgrid(idx, idx, idx, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2).ravel()
    density = np.clip(volume.ravel(), 0, None)
    if density.sum() <= 0:
        return box / 2 - 1
    order = np.argsort(r)
    cumulative = np.cumsum(density[order]) / density.sum()
    return float(min(r[order][np.searchsorted(cumulative, fraction)], box / 2 - 1))


def remove_fragment(volume: np.ndarray, seed: int) -> np.ndarray:
    """Zero a soft sphere (a third of the particle radius) at a random dense spot."""
    rng = np.random.default_rng(seed)
    box = volume.shape[-1]
    radius = particle_radius_px(volume)
    dense = np.argwhere(volume > np.quantile(volume, 0.99))
    center = dense[rng.integers(len(dense))]
    idx = np.arange(box)
    z, y, x = np.meshgrid(idx, idx, idx, indexing="ij")
    d = np.sqrt((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2)
    hole = radius / 3
    keep = np.clip((d - hole) / 2.0, 0, 1)  # 2 px soft edge
    return (volume * keep).astype(np.float32)


def seed_models(maps: list[np.ndarray], seeding: str, k: int, apix: float, seed: int,
                n_particles: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The K starting maps from the maps given (``seeding`` "models": as they are; else one map
    varied into K, see the module docstring), and for ``randclassify`` the random split of the
    ``n_particles`` particles that the first reconstruction uses (else None)."""
    if seeding == "models":
        return list(maps), None
    base = maps[0]
    if seeding == "randphase":
        beyond = 1.4 * power_limit_angstrom(base, apix)
        log.info("seeding %d models: phases randomised beyond %.1f Å", k, beyond)
        return [randomize_phases(base, apix, beyond, seed + i) for i in range(k)], None
    if seeding == "mapfragment":
        return [remove_fragment(base, seed + i) for i in range(k)], None
    return [base] * k, np.random.default_rng(seed).integers(0, k, n_particles)  # randclassify


def level_start_maps(maps: list[np.ndarray], box: int) -> list[np.ndarray]:
    """Each map minus its level beyond the box's inscribed sphere (a map on a level would
    project as a slab, and its radius would be the box's)."""
    corners = soft_sphere_mask(box, box / 2 - 4, 3.0)  # off beyond the box's inscribed sphere
    return [m - solvent_level(torch.from_numpy(m), corners).item() for m in maps]


def align_to_first(maps: list[np.ndarray], apix: float, band_res: float) -> list[np.ndarray]:
    """Starting maps from different files, each aligned to map 1 (with a hand check) where
    that fits clearly better (:data:`ALIGNMENT_MARGIN`)."""
    out = list(maps)
    for m_index in range(1, len(maps)):
        aligned, alignment = align_volume(maps[m_index], maps[0], apix, max(band_res, 15.0), 15.0, True)
        if alignment.score > alignment.identity_score + ALIGNMENT_MARGIN:
            angle = float(rotation_change_deg(np.eye(3)[None], alignment.matrix[None], np.eye(3)[None])[0])
            log.info(
                "starting map %d aligned to map 1: rotated %.0f°%s (correlation %.2f -> %.2f)",
                m_index + 1, angle, ", hand flipped" if alignment.flipped else "",
                alignment.identity_score, alignment.score,
            )
            out[m_index] = aligned
    return out
