"""Each model's solvent mask: the user's (``--mask``, RELION's ``--solvent_mask``) or a soft
sphere about the box centre.

A map's solvent is levelled to 0 and the map multiplied by its mask after every
reconstruction (:func:`multirefine.fourier.masks.flatten_solvent`), so the references the
search projects hold only what lies within the mask. Without ``--mask`` the mask is a sphere
of the particle's radius plus 3 px (``--particle-diameter``: half of it) with a 3 px raised-
cosine edge, as before.

Masks given as files are checked (finite, values in [0, 1], not zero within the box),
resampled to the particles' pixel size and clipped or padded to their box like the starting
maps (:func:`multirefine.refine.seeding.place_in_box`, with a logged line), then clamped to
[0, 1] (resampling rings a little). The model choice rebuilds maps on smaller boxes
(:func:`multirefine.refine.choice.leave_out_volumes`): a mask is resampled to those the same
way, once per box size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from multirefine.errors import InputError
from multirefine.fourier.crop import resample_volume
from multirefine.fourier.masks import soft_sphere_mask

__all__ = ["MASK_EDGE_PX", "ModelMasks", "check_mask", "fit_mask", "per_model", "sphere_radius_px", "union"]

MASK_EDGE_PX = 3.0  # the sphere's raised-cosine edge
MASK_TOLERANCE = 1e-3  # values this far outside [0, 1] are rounding, not a wrong file


def sphere_radius_px(radius_px: float, box: int, diameter_given: bool = False) -> float:
    """The sphere mask's radius for a particle of ``radius_px``: 3 px more where the radius was
    estimated from a map, the radius itself where the user gave a diameter; within the box."""
    return min(radius_px + (0.0 if diameter_given else 3.0), box / 2 - 2)


def check_mask(volume: np.ndarray, name: str) -> None:
    """Raise InputError unless ``volume`` (as read) is a mask: finite, in [0, 1], not all zero."""
    values = np.asarray(volume)
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(f"{name}: {int((~finite).sum())} voxels are NaN or infinite; a mask holds values in [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < -MASK_TOLERANCE or high > 1 + MASK_TOLERANCE:
        raise InputError(f"{name}: values from {low:g} to {high:g}; a mask holds values in [0, 1] (1: kept, 0: "
                         "solvent; relion_mask_create makes one)")
    if not high > 0:
        raise InputError(f"{name}: every voxel is 0; a mask is 1 where the molecule is")
    if not high > 0.5:
        raise InputError(f"{name}: its largest value is {high:g}; a mask is 1 where the molecule is")


def fit_mask(volume: np.ndarray, voxel_size: float | None, pixel_size: float, box_size: int, name: str) -> np.ndarray:
    """A mask file's volume checked and placed on the particles' grid, values in [0, 1]."""
    from multirefine.refine.seeding import place_in_box

    check_mask(volume, name)
    placed = np.clip(place_in_box(volume, voxel_size, pixel_size, box_size, name), 0.0, 1.0).astype(np.float32)
    if not placed.max() > 0.5:
        raise InputError(f"{name}: nothing of the mask is left within the particles' box ({box_size} px at "
                         f"{pixel_size:g} Å/px)")
    return placed


def per_model(masks: list[np.ndarray] | None, n_models: int) -> list[np.ndarray] | None:
    """One mask per model from one for all or one each (None: spheres)."""
    if masks is None:
        return None
    if len(masks) not in (1, n_models):
        raise InputError(f"{len(masks)} masks for {n_models} models (give one, or one per model)")
    return list(masks) * n_models if len(masks) == 1 else list(masks)


def union(masks: list[np.ndarray] | None) -> np.ndarray | None:
    """One mask that holds every model's (for a consensus map): the voxelwise largest."""
    return None if masks is None else np.maximum.reduce([np.asarray(m) for m in masks])


@dataclass
class ModelMasks:
    """Each model's solvent mask on a box of ``box`` px: ``user`` masks (one per model), or
    a soft sphere of ``radius_px`` for every model."""

    box: int
    radius_px: float
    user: list[np.ndarray] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.user is not None and any(m.shape != (self.box,) * 3 for m in self.user):
            raise InputError(f"masks of shapes {[m.shape for m in self.user]} for a box of {self.box} px")

    def of(self, model: int, size: int | None = None, device=None) -> torch.Tensor:
        """Model ``model``'s mask ``(d, d, d)`` on a box of ``size`` px spanning the same
        extent (default: the whole box), on ``device``."""
        if self.user is None:
            if size is None:
                return soft_sphere_mask(self.box, self.radius_px, MASK_EDGE_PX, device=device)
            return soft_sphere_mask(size, self.radius_px * size / self.box, MASK_EDGE_PX * size / self.box, device=device)
        size = self.box if size is None else size
        key = (model, size)
        if key not in self._cache:
            full = torch.from_numpy(self.user[model])
            self._cache[key] = full if size == self.box else resample_volume(full, size).clamp(0, 1)
        return self._cache[key].to(device)
