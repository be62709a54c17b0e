"""Class averages: the particles of each (model, projection direction), aligned and averaged.

A class is a model and a direction of the global orientation grid; each particle joins
the class of its model's grid direction nearest to its own. Its image is centred (shifted
by its origin) and turned in-plane into the frame of the class's reference projection
(pose ``(rot, tilt, 0)``): with ``A = R_z(psi) B``, the image of pose ``A`` at ``x`` is the
image of pose ``B`` at ``R(psi) x``. The CTF turns with it (its astigmatism angle grows by
``psi``), and the average is CTF-corrected (Wiener): ``sum c X / (sum c^2 + eps)``. Only
the best ``classkeep`` fraction of each class (by score) is averaged, as EMAN2's
``--classkeep``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from multirefine.fourier.fft import irfft2_centered, rfft2_centered
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import viewing_direction
from multirefine.refine.batch import ctf_for_rows, origins_px_for_rows

__all__ = ["rotate_images", "assign_classes", "class_averages"]


def rotate_images(images: torch.Tensor, psi_deg: torch.Tensor) -> torch.Tensor:
    """``out(u) = in(R(-psi) u)`` about the centre ``D//2``: ``(n, D, D)``, ``(n,)`` -> ``(n, D, D)``."""
    n, box, _ = images.shape
    c = box // 2
    idx = torch.arange(box, dtype=torch.float32, device=images.device) - c
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    a = torch.deg2rad(psi_deg.to(torch.float32))[:, None, None]
    cos, sin = torch.cos(a), torch.sin(a)
    src_x = cos * x + sin * y  # R(-psi) (x, y)
    src_y = -sin * x + cos * y
    grid = torch.stack([(src_x + c) / (box - 1) * 2 - 1, (src_y + c) / (box - 1) * 2 - 1], -1)
    return F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def assign_classes(table: pd.DataFrame, grid_rot: list[np.ndarray], grid_tilt: list[np.ndarray]) -> np.ndarray:
    """Class index per particle: offset of its model + the nearest direction of that model's grid."""
    offsets = np.cumsum([0] + [len(r) for r in grid_rot])
    model = table["rlnClassNumber"].to_numpy() - 1
    own = viewing_direction(table["rlnAngleRot"].to_numpy(), table["rlnAngleTilt"].to_numpy())
    out = np.zeros(len(table), dtype=np.int64)
    for m, (rot, tilt) in enumerate(zip(grid_rot, grid_tilt)):
        rows = np.nonzero(model == m)[0]
        if len(rows) == 0:
            continue
        directions = viewing_direction(np.asarray(rot), np.asarray(tilt))
        out[rows] = offsets[m] + np.argmax(own[rows] @ directions.T, axis=1)
    return out


def class_averages(
    stack,
    table: pd.DataFrame,
    grid_rot: list[np.ndarray],
    grid_tilt: list[np.ndarray],
    classkeep: float = 0.85,
    batch_size: int = 512,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Averages ``(C, D, D)`` of the non-empty classes and a table of them (RELION columns).

    ``table``: the particles' assignment (``rlnClassNumber``, angles, origins,
    ``rlnLogLikeliContribution`` as the score); the images come from ``stack``.
    """
    classes = assign_classes(table, grid_rot, grid_tilt)
    score = table["rlnLogLikeliContribution"].to_numpy()
    keep = np.zeros(len(table), dtype=bool)
    for c in np.unique(classes):
        rows = np.nonzero(classes == c)[0]
        n_keep = max(1, int(math.ceil(classkeep * len(rows))))
        keep[rows[np.argsort(-score[rows])[:n_keep]]] = True
    box = stack.box_size
    used = np.unique(classes[keep])
    slot = {c: i for i, c in enumerate(used)}
    numerator = torch.zeros((len(used), box, box // 2 + 1), dtype=torch.complex64)
    denominator = torch.zeros((len(used), box, box // 2 + 1))
    rows_kept = np.nonzero(keep)[0]
    for start in range(0, len(rows_kept), batch_size):
        rows = rows_kept[start : start + batch_size]
        part = table.iloc[rows]
        images = torch.as_tensor(np.asarray(stack[rows]), dtype=torch.float32)
        centred = irfft2_centered(
            shift_images_ft(rfft2_centered(images), origins_px_for_rows(part, stack.pixel_size_angstrom)), box
        )
        psi = torch.tensor(part["rlnAnglePsi"].to_numpy(dtype=np.float64))
        turned = rfft2_centered(rotate_images(centred, psi))
        if stack.has_ctf:
            turned_rows = part.copy()
            turned_rows["rlnDefocusAngle"] = part["rlnDefocusAngle"].to_numpy() + part["rlnAnglePsi"].to_numpy()
            ctf = ctf_for_rows(turned_rows, box)
        else:
            ctf = torch.ones(turned.shape)
        index = torch.as_tensor([slot[c] for c in classes[rows]])
        numerator.index_add_(0, index, turned * ctf)
        denominator.index_add_(0, index, ctf**2)
    epsilon = 0.1 * denominator.mean(dim=(-2, -1), keepdim=True)
    averages = irfft2_centered(numerator / (denominator + epsilon), box).numpy()
    offsets = np.cumsum([0] + [len(r) for r in grid_rot])
    model_of = np.searchsorted(offsets, used, side="right") - 1
    direction_of = used - offsets[model_of]
    info = pd.DataFrame(
        {
            "rlnClassNumber": model_of + 1,
            "rlnAngleRot": [grid_rot[m][d] for m, d in zip(model_of, direction_of)],
            "rlnAngleTilt": [grid_tilt[m][d] for m, d in zip(model_of, direction_of)],
            "rlnClassDistribution": [int((classes[keep] == c).sum()) for c in used],
        }
    )
    return averages.astype(np.float32), info
