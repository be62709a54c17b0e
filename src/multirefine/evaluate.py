"""Scoring results against a known truth (simulated data): classification and maps.

* Classification accuracy: output classes matched to true classes by the Hungarian
  method on the confusion matrix (the best one-to-one matching), then the fraction of
  particles whose class matches.
* Map quality: the output map is aligned onto the true map — rotation, hand and
  translation: a refined map's frame is free (a rotated map with rotated particle poses
  explains the data as well), and maps do turn and drift during refinement from a
  low-resolution start — then the FSC and the resolution where it falls to 0.5 and 0.143.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import torch

from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
from multirefine.geometry.grids import local_rotations
from multirefine.refine.postprocess import align_translation, align_volume, rotate_volume

__all__ = ["ClassificationScore", "classification_accuracy", "map_resolution_against"]


@dataclass
class ClassificationScore:
    accuracy: float
    matching: tuple[int, ...]  # matching[true class - 1] = output class - 1
    confusion: np.ndarray  # (K, K): rows true classes, columns output classes


def classification_accuracy(truth: np.ndarray, assigned: np.ndarray) -> ClassificationScore:
    """Accuracy of 1-based class labels ``assigned`` against 1-based ``truth`` (both ``(N,)``)."""
    truth = np.asarray(truth, dtype=np.int64)
    assigned = np.asarray(assigned, dtype=np.int64)
    k = int(max(truth.max(), assigned.max()))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth - 1, assigned - 1), 1)
    best = max(permutations(range(k)), key=lambda p: sum(confusion[i, p[i]] for i in range(k)))
    correct = sum(confusion[i, best[i]] for i in range(k))
    return ClassificationScore(correct / len(truth), tuple(best), confusion)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _align_to_truth(volume: np.ndarray, truth: np.ndarray, pixel_size: float) -> np.ndarray:
    """Global rotation/hand search at low resolution, then 1-degree local refinement, then
    translation; the map as given wins unless an alignment correlates better."""
    best, _ = align_translation(volume, truth)
    best_score = _correlation(best, truth)
    _, alignment = align_volume(volume, truth, pixel_size, resolution_angstrom=max(4 * pixel_size, 12.0))
    start = volume[::-1].copy() if alignment.flipped else volume
    matrices = torch.as_tensor(local_rotations(4.0, 1.0), dtype=torch.float32) @ torch.from_numpy(alignment.matrix).float()
    shift = torch.from_numpy(alignment.shift_px).float()[None]
    for chunk in torch.split(matrices, 32):
        turned = rotate_volume(torch.from_numpy(start), chunk, shift.expand(len(chunk), 3)).numpy()
        for candidate in turned:
            moved, _ = align_translation(candidate, truth)
            score = _correlation(moved, truth)
            if score > best_score:
                best, best_score = moved, score
    return best


def map_resolution_against(volume: np.ndarray, truth: np.ndarray, pixel_size_angstrom: float) -> tuple[float, float]:
    """Resolution (Å) at FSC 0.5 and 0.143 of ``volume`` against ``truth`` after alignment."""
    moved = _align_to_truth(np.asarray(volume, dtype=np.float32), np.asarray(truth, dtype=np.float32), pixel_size_angstrom)
    fsc = fourier_shell_correlation(torch.from_numpy(moved), torch.from_numpy(np.asarray(truth))).numpy()
    return (
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.5),
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.143),
    )
