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
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from multirefine.fourier.aberrations import shift_phases
from multirefine.fourier.fft import irfft2_centered, rfft2_centered
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import viewing_direction
from multirefine.geometry.grids import projection_directions
from multirefine.io.columns import SEARCH_SCORE
from multirefine.refine.batch import aberrations_for_rows, ctf_for_rows, origins_px_for_rows
from multirefine.runfolder.names import CLASS_PARTICLES

__all__ = ["assign_classes", "class_averages", "iteration_averages", "rotate_images"]


def rotate_images(images: torch.Tensor, psi_deg: torch.Tensor) -> torch.Tensor:
    """``out(u) = in(R(-psi) u)`` about the centre ``D//2``: ``(n, D, D)``, ``(n,)`` -> ``(n, D, D)``."""
    _, box, _ = images.shape
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


def _centred_images(stack, part: pd.DataFrame) -> torch.Tensor:
    """The particles of ``part`` (index = rows of ``stack``) read and centred by their origins,
    their odd aberrations' phases taken off (:func:`~multirefine.refine.batch.aberrations_for_rows`;
    the even ones are in their CTFs, :func:`_turned_images`)."""
    images = torch.as_tensor(np.asarray(stack[part.index.to_numpy()]), dtype=torch.float32)
    ft = shift_images_ft(rfft2_centered(images), origins_px_for_rows(part, stack.pixel_size_angstrom))
    odd = aberrations_for_rows(part, stack.box_size)[0] if stack.has_ctf and stack.aberrations else None
    if odd is not None:
        ft = shift_phases(ft, -odd)
    return irfft2_centered(ft, stack.box_size)


def _turned_images(
    stack, part: pd.DataFrame, centred: torch.Tensor, extra_psi: np.ndarray, extra_shift: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred particles turned into their class's frame, and their CTFs (turned too).

    ``extra_psi`` (degrees) and ``extra_shift`` (pixels, in the turned frame) are the
    corrections found by re-alignment to the class average (zero before it).
    """
    box = stack.box_size
    psi = part["rlnAnglePsi"].to_numpy(dtype=np.float64) + extra_psi
    turned = rfft2_centered(rotate_images(centred, torch.as_tensor(psi)))
    turned = shift_images_ft(turned, torch.as_tensor(extra_shift, dtype=torch.float32))
    if stack.has_ctf:
        turned_rows = part.copy()
        turned_rows["rlnDefocusAngle"] = part["rlnDefocusAngle"].to_numpy() + psi
        even = aberrations_for_rows(part, box, turned_deg=psi)[1] if stack.aberrations else None
        ctf = ctf_for_rows(turned_rows, box, even_phase=even)
    else:
        ctf = torch.ones(turned.shape)
    return turned, ctf


def _keep_best(classes: np.ndarray, score: np.ndarray, classkeep: float) -> np.ndarray:
    """The best ``classkeep`` fraction of each class by ``score`` (EMAN2's --classkeep)."""
    keep = np.zeros(len(classes), dtype=bool)
    for c in np.unique(classes):
        rows = np.nonzero(classes == c)[0]
        n_keep = max(1, math.ceil(classkeep * len(rows)))
        keep[rows[np.argsort(-score[rows])[:n_keep]]] = True
    return keep


def _average(
    stack,
    table: pd.DataFrame,
    slot: np.ndarray,
    n_classes: int,
    weights: np.ndarray,
    keep: np.ndarray,
    extra_psi: np.ndarray,
    extra_shift: np.ndarray,
    batch_size: int,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """The Wiener-filtered averages ``(C, D, D//2+1)`` of the kept entries (``slot``: each
    entry's class among the ``n_classes`` non-empty ones), turned into their classes' frames;
    ``advance`` is told each batch's size (and those left out once done)."""
    box = stack.box_size
    numerator = torch.zeros((n_classes, box, box // 2 + 1), dtype=torch.complex64)
    denominator = torch.zeros((n_classes, box, box // 2 + 1))
    rows_kept = np.nonzero(keep)[0]
    for start in range(0, len(rows_kept), batch_size):
        rows = rows_kept[start : start + batch_size]
        part = table.iloc[rows]
        turned, ctf = _turned_images(stack, part, _centred_images(stack, part), extra_psi[rows], extra_shift[rows])
        index = torch.as_tensor(slot[rows])
        weight = torch.as_tensor(weights[rows], dtype=torch.float32)[:, None, None]
        numerator.index_add_(0, index, weight * turned * ctf)
        denominator.index_add_(0, index, weight * ctf**2)
        advance(len(rows))
    advance(len(keep) - len(rows_kept))
    epsilon = 0.1 * denominator.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return numerator / (denominator + epsilon)


def _realign(
    stack,
    table: pd.DataFrame,
    slot: np.ndarray,
    averages_ft: torch.Tensor,
    extra_psi: np.ndarray,
    extra_shift: np.ndarray,
    psi_range_deg: float,
    max_shift_px: float,
    batch_size: int,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One round of re-aligning every entry to its class average: five in-plane angles
    within ``psi_range_deg`` of its current correction, each at its best shift within
    ``max_shift_px``. Returns the new corrections (angles, shifts) and each entry's
    correlation at them."""
    n = len(table)
    offsets_deg = np.linspace(-psi_range_deg, psi_range_deg, 5)
    score = np.full(n, -np.inf)
    best_psi, best_shift = extra_psi.copy(), extra_shift.copy()
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        part = table.iloc[rows]
        centred = _centred_images(stack, part)  # read once, turned once per trial angle
        for offset in offsets_deg:
            turned, ctf = _turned_images(stack, part, centred, extra_psi[rows] + offset, extra_shift[rows])
            s, shift = _align_by_correlation(turned, ctf * averages_ft[slot[rows]], max_shift_px)
            better = s > score[rows]
            score[rows[better]] = s[better]
            best_psi[rows[better]] = extra_psi[rows[better]] + offset
            best_shift[rows[better]] = extra_shift[rows[better]] + shift[better]
        advance(len(rows))
    return best_psi, best_shift, score


def _class_table(
    grid_rot: list[np.ndarray],
    grid_tilt: list[np.ndarray],
    used: np.ndarray,
    classes: np.ndarray,
    keep: np.ndarray,
    weights: np.ndarray,
) -> pd.DataFrame:
    """The non-empty classes ``used``: model, direction, the fraction of the particles in each
    (RELION's ``rlnClassDistribution``, summing to 1) and their weight (:data:`CLASS_PARTICLES`)."""
    offsets = np.cumsum([0] + [len(r) for r in grid_rot])
    model_of = np.searchsorted(offsets, used, side="right") - 1
    direction_of = used - offsets[model_of]
    counts = np.array([float(weights[keep & (classes == c)].sum()) for c in used])
    return pd.DataFrame(
        {
            "rlnClassNumber": model_of + 1,
            "rlnAngleRot": [grid_rot[m][d] for m, d in zip(model_of, direction_of)],
            "rlnAngleTilt": [grid_tilt[m][d] for m, d in zip(model_of, direction_of)],
            "rlnClassDistribution": counts / max(counts.sum(), 1e-30),
            CLASS_PARTICLES: counts,
        }
    )


def class_averages(
    stack,
    table: pd.DataFrame,
    grid_rot: list[np.ndarray],
    grid_tilt: list[np.ndarray],
    classkeep: float = 0.85,
    batch_size: int = 512,
    classiter: int = 0,
    psi_range_deg: float = 4.0,
    max_shift_px: float = 2.0,
    weights: np.ndarray | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Averages ``(C, D, D)`` of the non-empty classes and a table of them (RELION columns).

    ``table``: one row per (particle, pose) entry: ``rlnClassNumber``, angles, origins,
    ``mrSearchScore`` (:data:`~multirefine.io.columns.SEARCH_SCORE`) as the score; its index holds the particle's row in
    ``stack`` (a particle may appear more than once, ``--sep``), ``weights`` (default 1)
    the entry's weight in the average.

    ``classiter`` (EMAN2's ``--classiter``): after the first average (particles aligned by
    their poses, i.e. to the reference projection), that many rounds of re-aligning every
    entry to its class average (in-plane angle within ``psi_range_deg``, shift within
    ``max_shift_px``, by normalised cross-correlation) and averaging again; ``classkeep``
    then selects by that correlation. ``advance`` (a progress bar's, of ``len(table) * (1 + 2 *
    classiter)`` entries) is told each batch's size.
    """
    n = len(table)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    classes = assign_classes(table, grid_rot, grid_tilt)
    keep = _keep_best(classes, table[SEARCH_SCORE].to_numpy(), classkeep)
    box = stack.box_size
    used = np.unique(classes)
    slot = np.searchsorted(used, classes)
    extra_psi, extra_shift = np.zeros(n), np.zeros((n, 2))
    advance = advance or (lambda _: None)
    averages_ft = _average(stack, table, slot, len(used), w, keep, extra_psi, extra_shift, batch_size, advance)
    for _ in range(classiter):
        extra_psi, extra_shift, score = _realign(
            stack, table, slot, averages_ft, extra_psi, extra_shift, psi_range_deg, max_shift_px, batch_size, advance
        )
        keep = _keep_best(classes, score, classkeep)
        averages_ft = _average(stack, table, slot, len(used), w, keep, extra_psi, extra_shift, batch_size, advance)
    averages = irfft2_centered(averages_ft, box).numpy()
    return averages.astype(np.float32), _class_table(grid_rot, grid_tilt, used, classes, keep, w)


def _align_by_correlation(
    images_ft: torch.Tensor, references_ft: torch.Tensor, max_shift_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Best shift (within ``max_shift_px``) of each image onto its reference, and the
    normalised correlation there: ``(n,)`` scores and ``(n, 2)`` shifts ``(dx, dy)`` that,
    applied to the image (:func:`~multirefine.fourier.shift.shift_images_ft`), align it."""
    box = images_ft.shape[-2]
    cc = irfft2_centered(references_ft * images_ft.conj(), box)  # peak at the shift to apply
    c = box // 2
    idx = torch.arange(box, dtype=torch.float32) - c
    inside = (idx[:, None] ** 2 + idx[None, :] ** 2) <= max_shift_px**2
    cc = torch.where(inside, cc, torch.full_like(cc, -torch.inf))
    best = cc.reshape(len(cc), -1).argmax(1)
    dy, dx = best // box - c, best % box - c
    # Parseval over the full plane: the half plane's columns 0 < kx < D/2 count twice.
    w = torch.full((images_ft.shape[-1],), 2.0)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    power = lambda ft: (w * (ft.real**2 + ft.imag**2)).sum((-2, -1))
    norm = (power(images_ft) * power(references_ft)).sqrt().clamp_min(1e-30)
    score = cc.reshape(len(cc), -1).amax(1) * box * box / norm
    return score.numpy(), torch.stack([dx, dy], 1).float().numpy()


def iteration_averages(stack, tables: list[pd.DataFrame], symmetries: list[str], step_deg: float, classkeep: float,
                       classiter: int, psi_range_deg: float, max_shift_px: float,
                       progress: Callable[[str, int], Callable[[int], None]] | None = None,
                       label: str = "class averages") -> tuple[np.ndarray, pd.DataFrame]:
    """An iteration's class averages (:func:`class_averages`) over each model's projection
    directions at ``step_deg``: from the particle table, or from ``tables`` of ``--sep``'s
    layers (each entry weighted 1 / their number). Entries are indexed by their row in the stack."""
    directions = [projection_directions(step_deg, sym) for sym in symmetries]
    entries, weights = tables[0].reset_index(drop=True), None
    if len(tables) > 1:
        entries = pd.concat([t.reset_index(drop=True) for t in tables])
        weights = np.full(len(entries), 1 / len(tables))
    advance = progress(label, len(entries) * (1 + 2 * classiter)) if progress else None
    return class_averages(stack, entries, [d[0] for d in directions], [d[1] for d in directions], classkeep,
                          classiter=classiter, psi_range_deg=psi_range_deg, max_shift_px=max_shift_px,
                          weights=weights, advance=advance)
