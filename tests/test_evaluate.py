"""Scoring against the truth: Hungarian matching of classes (junk left out), junk caught; FSC after translation."""

import numpy as np
import pytest

from multirefine.evaluate import classification_accuracy, junk_detection, map_resolution_against


def test_accuracy_matches_permuted_labels():
    truth = np.array([1, 1, 1, 2, 2, 3, 3, 3])
    assigned = np.array([3, 3, 2, 1, 1, 2, 2, 2])  # labels permuted, one mistake
    score = classification_accuracy(truth, assigned)
    assert score.accuracy == pytest.approx(7 / 8)
    assert score.matching == (2, 0, 1)


def test_accuracy_leaves_junk_out():
    # Junk (truth 0) used to land in the last class through truth - 1; it is in no count now.
    truth = np.array([1, 1, 1, 2, 2, 2, 0, 0, 0, 0])
    assigned = np.array([2, 2, 2, 1, 1, 2, 1, 1, 1, 1])
    score = classification_accuracy(truth, assigned)
    assert score.accuracy == pytest.approx(5 / 6)
    assert score.matching == (1, 0)
    assert score.n_real == 6 and score.n_junk == 4 and score.excluded_real == 0
    assert score.confusion.tolist() == [[0, 3], [2, 1]]


def test_excluded_real_particles_count_as_wrong():
    truth = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    assigned = np.array([1, 1, 1, 0, 2, 2, 2, 0, 0, 1])  # two real ones excluded, one junk kept
    score = classification_accuracy(truth, assigned)
    assert score.accuracy == pytest.approx(6 / 8)
    assert score.accuracy_of_kept == pytest.approx(1.0)
    assert score.excluded_real == 2
    assert score.confusion.sum() == 6


def test_accuracy_needs_real_particles():
    with pytest.raises(ValueError):
        classification_accuracy(np.zeros(4, dtype=int), np.array([1, 2, 1, 2]))


def test_junk_detection_from_classes():
    truth = np.array([1, 1, 2, 2, 2, 0, 0, 0, 0])
    assigned = np.array([1, 0, 2, 2, 2, 0, 0, 2, 1])
    junk = junk_detection(truth, assigned)
    assert (junk.n_junk, junk.n_real, junk.junk_caught, junk.real_lost) == (4, 5, 2, 1)
    assert junk.fraction_caught == pytest.approx(0.5)
    assert junk.fraction_lost == pytest.approx(0.2)
    assert junk.junk_by_class == [2, 1, 1]  # excluded, in class 1, in class 2


def test_junk_detection_from_a_flag():
    truth = np.array([1, 2, 0, 0])
    junk = junk_detection(truth, np.array([False, True, True, True]))
    assert junk.fraction_caught == 1.0 and junk.fraction_lost == 0.5
    assert junk.junk_by_class == []
    assert junk.to_json()["junk_caught"] == 2


def test_junk_detection_without_junk():
    junk = junk_detection(np.array([1, 2]), np.array([1, 2]))
    assert np.isnan(junk.fraction_caught) and junk.fraction_lost == 0.0


def test_map_resolution_ignores_a_shift(atoms_map):
    shifted = np.roll(atoms_map, 2, axis=0)
    at_05, at_0143 = map_resolution_against(shifted, atoms_map, 1.0)
    assert at_05 == pytest.approx(2.0) and at_0143 == pytest.approx(2.0)  # Nyquist: identical after the shift


def test_map_resolution_by_translation_only(atoms_map):
    shifted = np.roll(atoms_map, 2, axis=1)
    assert map_resolution_against(shifted, atoms_map, 1.0, rotate=False) == pytest.approx((2.0, 2.0))
