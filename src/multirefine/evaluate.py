"""Scoring results against a known truth (simulated data): classification and maps.

* Classification accuracy: output classes matched to true classes by the Hungarian
  method on the confusion matrix (the best one-to-one matching), then the fraction of
  particles whose class matches. Measured on the real particles only: truth class 0 is
  junk (``multirefine simulate --junk``) and is left out; a real particle the output
  excludes (class 0) counts as wrong.
* Junk: given which particles the output excluded (a flag, or class 0), the fraction of
  the true junk caught and the fraction of the real particles lost, and where the junk
  went (:func:`junk_detection`).
* Map quality: the output map is aligned onto the true map — rotation, hand and
  translation (or translation only, where asked): a refined map's frame is free (a rotated map with rotated particle poses
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

__all__ = [
    "ClassificationScore",
    "JunkScore",
    "classification_accuracy",
    "junk_detection",
    "map_resolution_against",
]


@dataclass
class ClassificationScore:
    """``accuracy`` is over the real particles (truth > 0), those the output excluded
    (class 0) counted wrong; junk rows (truth 0) are in none of the counts."""

    accuracy: float
    matching: tuple[int, ...]  # matching[true class - 1] = output class - 1
    confusion: np.ndarray  # (K, K): rows true classes, columns output classes (real, kept particles)
    n_real: int = 0  # particles with truth > 0
    n_junk: int = 0  # rows with truth 0, left out of the accuracy
    excluded_real: int = 0  # real particles the output excluded (class 0)

    @property
    def accuracy_of_kept(self) -> float:
        """Accuracy over the real particles the output kept (class > 0)."""
        kept = self.n_real - self.excluded_real
        return float(np.trace(self.confusion[:, list(self.matching)])) / kept if kept else float("nan")


def classification_accuracy(truth: np.ndarray, assigned: np.ndarray) -> ClassificationScore:
    """Accuracy of 1-based class labels ``assigned`` against 1-based ``truth`` (both ``(N,)``).

    Rows with ``truth`` 0 (junk) are left out; a real particle with ``assigned`` 0 (excluded
    as junk) counts as misclassified. Output classes are matched to true ones by the best
    one-to-one matching (Hungarian) on the real particles' confusion matrix.
    """
    truth = np.asarray(truth, dtype=np.int64)
    assigned = np.asarray(assigned, dtype=np.int64)
    if truth.shape != assigned.shape:
        raise ValueError(f"{truth.shape[0]} true classes for {assigned.shape[0]} assigned ones")
    if (truth < 0).any() or (assigned < 0).any():
        raise ValueError("class numbers must be >= 0 (0: junk / excluded)")
    real = truth > 0
    if not real.any():
        raise ValueError("no real particles (every truth class is 0, junk)")
    kept = real & (assigned > 0)
    k = int(max(truth.max(), assigned.max()))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth[kept] - 1, assigned[kept] - 1), 1)
    best = max(permutations(range(k)), key=lambda p: sum(confusion[i, p[i]] for i in range(k)))
    correct = sum(confusion[i, best[i]] for i in range(k))
    n_real = int(real.sum())
    return ClassificationScore(
        correct / n_real, tuple(best), confusion, n_real, int((~real).sum()), int((real & (assigned == 0)).sum())
    )


@dataclass
class JunkScore:
    """How well junk (truth class 0) was excluded."""

    n_junk: int
    n_real: int
    junk_caught: int  # true junk excluded
    real_lost: int  # real particles excluded
    # junk_by_class[c]: true junk rows the output put in class c (0: excluded); empty where
    # the output gave only flags
    junk_by_class: list[int]

    @property
    def fraction_caught(self) -> float:
        """Fraction of the true junk excluded (nan without junk)."""
        return self.junk_caught / self.n_junk if self.n_junk else float("nan")

    @property
    def fraction_lost(self) -> float:
        """Fraction of the real particles excluded (nan without real ones)."""
        return self.real_lost / self.n_real if self.n_real else float("nan")

    def to_json(self) -> dict:
        return {
            "n_junk": self.n_junk,
            "n_real": self.n_real,
            "junk_caught": self.junk_caught,
            "real_lost": self.real_lost,
            "fraction_caught": self.fraction_caught,
            "fraction_lost": self.fraction_lost,
            "junk_by_class": self.junk_by_class,
        }


def junk_detection(truth: np.ndarray, excluded: np.ndarray) -> JunkScore:
    """Junk caught and real particles lost.

    ``truth``: true classes ``(N,)``, 0 for junk. ``excluded``: a boolean flag per particle
    (True: excluded as junk), or the output's class numbers, 0 meaning excluded.
    """
    truth = np.asarray(truth, dtype=np.int64)
    excluded = np.asarray(excluded)
    if truth.shape != excluded.shape:
        raise ValueError(f"{truth.shape[0]} true classes for {excluded.shape[0]} output rows")
    junk = truth == 0
    by_class: list[int] = []
    if excluded.dtype == bool:
        flag = excluded
    else:
        classes = excluded.astype(np.int64)
        if (classes < 0).any():
            raise ValueError("class numbers must be >= 0 (0: excluded)")
        flag = classes == 0
        by_class = np.bincount(classes[junk], minlength=int(classes.max()) + 1).tolist()
    return JunkScore(int(junk.sum()), int((~junk).sum()), int((flag & junk).sum()), int((flag & ~junk).sum()), by_class)


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


def map_resolution_against(
    volume: np.ndarray, truth: np.ndarray, pixel_size_angstrom: float, rotate: bool = True
) -> tuple[float, float]:
    """Resolution (Å) at FSC 0.5 and 0.143 of ``volume`` against ``truth`` after alignment
    (``rotate=False``: by translation only, for a map whose frame the run kept, e.g. one
    refined from the true maps)."""
    volume = np.asarray(volume, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.float32)
    moved = _align_to_truth(volume, truth, pixel_size_angstrom) if rotate else align_translation(volume, truth)[0]
    fsc = fourier_shell_correlation(torch.from_numpy(np.ascontiguousarray(moved, dtype=np.float32)),
                                    torch.from_numpy(truth)).numpy()
    return (
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.5),
        resolution_at_threshold(fsc, pixel_size_angstrom, 0.143),
    )
