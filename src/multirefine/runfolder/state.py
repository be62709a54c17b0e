"""A run's state after an iteration: what ``multirefine refine --continue`` needs.

``state.npz`` in the run folder (rewritten after every iteration, under a temporary name
and renamed) holds the last finished iteration, its maps in the particles' units, every
particle's assignment (what ``particles_II.star`` holds) and the layers each map was made
from. From these the driver rebuilds the maps' Fourier accumulators, which the next
model choice needs, exactly as the uninterrupted run had them.

A layer is any object with the arrays ``model``, ``rotations``, ``shifts_px``, ``scores``
and ``weights`` (one entry per particle: :class:`multirefine.refine.layers.Layer`); they
are read back as tuples of those arrays in that order.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path

__all__ = ["RunState", "load_state", "save_state"]

VERSION = 1


@dataclass
class RunState:
    """What ``--continue`` needs of a run after an iteration (``state.npz``)."""

    iteration: int
    radius_px: float
    maps: np.ndarray  # (K, D, D, D): the maps made, in particle units (masked; not normalised by --mass)
    table_poses: tuple[np.ndarray, ...]  # model, rotation, shift px, score, posterior: particles_II.star
    layers: list  # what the maps were made from (layers, or tuples of their arrays when read)
    intensity: np.ndarray | None = None  # --scale: each particle's intensity scale for the next iteration
    intensity_used: np.ndarray | None = None  # --scale: the scales the maps were made with


_POSE_FIELDS = ("model", "rotation", "shift_px", "score", "weight")  # the names in the file
_LAYER_FIELDS = ("model", "rotations", "shifts_px", "scores", "weights")  # a layer's attributes


def save_state(path: Path, state: RunState) -> None:
    """Write ``state`` to ``path`` (atomically: a run killed meanwhile keeps the last one)."""
    arrays = {f"table_{name}": a for name, a in zip(_POSE_FIELDS, state.table_poses)}
    arrays |= {f"layers_{name}": np.stack([getattr(layer, field) for layer in state.layers])
               for name, field in zip(_POSE_FIELDS, _LAYER_FIELDS)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if state.intensity is not None:
            arrays["intensity"] = np.asarray(state.intensity)
            arrays["intensity_used"] = np.asarray(state.intensity_used)
        np.savez(f, version=VERSION, iteration=state.iteration, radius_px=state.radius_px, maps=np.stack(state.maps),
                 **arrays)


def load_state(path: Path, n: int, box: int) -> RunState:
    """The run's state after its last finished iteration; checked against the particles."""
    if not path.exists():
        raise InputError(f"{path}: not found; the run stopped before its first iteration ended, or a multirefine "
                         "older than --continue made it (start it again)")
    try:
        with np.load(path) as f:
            data = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # cut short: not a zip archive any more
        raise InputError(f"{path}: not readable ({exc})") from None
    if int(data.get("version", 0)) != VERSION:
        raise InputError(
            f"{path}: version {data.get('version')} of the state file; this multirefine reads version {VERSION}"
        )
    try:
        maps, table_model = data["maps"], data["table_model"]
        layers = list(zip(*(data[f"layers_{name}"] for name in _POSE_FIELDS)))
        table_poses = tuple(data[f"table_{name}"] for name in _POSE_FIELDS)
        iteration, radius = int(data["iteration"]), float(data["radius_px"])
    except KeyError as exc:
        raise InputError(f"{path}: damaged, {exc.args[0]} is missing (start the run again)") from None
    if len(table_model) != n:
        raise InputError(f"{path}: the run holds {len(table_model)} particles, its --input has {n} now")
    if maps.ndim != 4 or maps.shape[1:] != (box, box, box):
        raise InputError(f"{path}: the run's maps are {maps.shape[1:]} px, its particles {box} px")
    if not np.isfinite(maps).all():
        raise InputError(f"{path}: damaged, its maps hold NaN or Inf (start the run again)")
    if len(table_model) and not (0 <= table_model.min() and table_model.max() < len(maps)):
        raise InputError(f"{path}: damaged, it puts particles in model {int(table_model.max()) + 1} of {len(maps)}")
    return RunState(iteration, radius, maps, table_poses, layers, data.get("intensity"), data.get("intensity_used"))
