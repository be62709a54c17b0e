"""Scoring results against a known truth (simulated data): classification and maps.

* Classification accuracy: output classes matched to true classes by the Hungarian
  method on the confusion matrix (the best one-to-one matching), then the fraction of
  particles whose class matches.
* Map quality: the output map is moved onto the true map by translation (a map may drift
  by a voxel or so during refinement; the particles' origins absorb it), then the FSC and
  the resolution where it falls to 0.5 and 0.143.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import torch

from multirefine.fourier.fsc import fourier_shell_correlation, resolution_at_threshold
from multirefine.refine.postprocess import align_translation

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


def map_resolution_against(volume: np.ndarray, truth: np.ndarray, pixel_size_angstrom: float) -> tuple[float, float]:
    """Resolution (Å) at FSC 0.5 and 0.143 of ``volume`` against ``truth`` after translation."""
    moved, _ = align_translation(volume, truth)
    fsc = fourier_shell_correlation(torch.from_numpy(moved), torch.from_numpy(np.asarray(truth))).numpy()
    return (
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.5),
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.143),
    )
