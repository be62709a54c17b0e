"""Scoring against the truth: Hungarian matching of classes; FSC after translation."""

import numpy as np
import pytest

from multirefine.evaluate import classification_accuracy, map_resolution_against


def test_accuracy_matches_permuted_labels():
    truth = np.array([1, 1, 1, 2, 2, 3, 3, 3])
    assigned = np.array([3, 3, 2, 1, 1, 2, 2, 2])  # labels permuted, one mistake
    score = classification_accuracy(truth, assigned)
    assert score.accuracy == pytest.approx(7 / 8)
    assert score.matching == (2, 0, 1)


def test_map_resolution_ignores_a_shift(atoms_map):
    shifted = np.roll(atoms_map, 2, axis=0)
    at_05, at_0143 = map_resolution_against(shifted, atoms_map, 1.0)
    assert at_05 == pytest.approx(2.0) and at_0143 == pytest.approx(2.0)  # Nyquist: identical after the shift
