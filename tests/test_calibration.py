"""Tests for bit_jax.calibration: ECE against hand arithmetic and its bin-edge convention."""

import numpy as np
import pytest

from bit_jax import calibration

# Five 3-class predictions: (probs, label) -> (confidence, prediction, correct?).
HAND_PROBS = np.array([
    [0.9, 0.1, 0.0],  # label 0: conf 0.90, pred 0, right.
    [0.7, 0.3, 0.0],  # label 1: conf 0.70, pred 0, wrong.
    [0.3, 0.7, 0.0],  # label 1: conf 0.70, pred 1, right.
    [0.5, 0.3, 0.2],  # label 2: conf 0.50, pred 0, wrong.
    [0.35, 0.35, 0.3],  # label 1: conf 0.35, tie -> pred 0 (lowest index), wrong.
])
HAND_LABELS = np.array([0, 1, 1, 2, 1])


def test_ece_hand_computed_five_bins():
  # Bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]:
  #   (.2, .4]: n=1, acc 0,   conf .35 -> |0 - .35|  = .35
  #   (.4, .6]: n=1, acc 0,   conf .50 -> |0 - .5|   = .50
  #   (.6, .8]: n=2, acc 1/2, conf .70 -> |.5 - .7|  = .20
  #   (.8, 1]:  n=1, acc 1,   conf .90 -> |1 - .9|   = .10
  # ECE = (1·.35 + 1·.50 + 2·.20 + 1·.10) / 5 = 1.35 / 5 = 0.27
  bins = calibration.reliability_bins(HAND_PROBS, HAND_LABELS, num_bins=5)
  np.testing.assert_array_equal(bins.counts, [0, 1, 1, 2, 1])
  np.testing.assert_allclose(bins.accuracy, [0, 0, 0, 0.5, 1])
  np.testing.assert_allclose(bins.confidence, [0, 0.35, 0.5, 0.7, 0.9])
  ece = calibration.expected_calibration_error(HAND_PROBS, HAND_LABELS, num_bins=5)
  assert ece == pytest.approx(0.27, abs=1e-12)


def test_ece_hand_computed_one_bin():
  # One bin: |accuracy - mean confidence| = |2/5 - (.9 + .7 + .7 + .5 + .35) / 5| = |.4 - .63|.
  ece = calibration.expected_calibration_error(HAND_PROBS, HAND_LABELS, num_bins=1)
  assert ece == pytest.approx(0.23, abs=1e-12)


def test_ece_is_zero_when_perfectly_calibrated():
  # Four predictions at 0.75 with 3 right, two at 0.5 with 1 right, one at 1.0 right.
  probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2 + [[0.0, 1.0]])
  labels = np.array([0, 0, 0, 1, 0, 1, 1])
  assert calibration.expected_calibration_error(probs, labels, num_bins=4) == 0.0
  assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-15)


def test_ece_of_confident_coin_flips_is_half():
  probs = np.eye(2)[[0, 1, 0, 1]]
  assert calibration.expected_calibration_error(probs, np.array([0, 0, 1, 1])) == 0.5


def test_confidence_on_an_edge_goes_to_the_bin_it_closes():
  # Bins are (lo, hi]: with 4 bins 0.5 is in (.25, .5], 0.75 in (.5, .75], 1.0 in (.75, 1].
  probs = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0], [0.5000001, 0.4999999]])
  bins = calibration.reliability_bins(probs, np.zeros(4, np.int64), num_bins=4)
  np.testing.assert_array_equal(bins.counts, [0, 1, 2, 1])


@pytest.mark.parametrize("k", range(1, 16))
def test_every_default_edge_lands_in_the_bin_below(k):
  # Confidence exactly edges[k] of the default 15 bins goes to bin k - 1, even where k/15 is not
  # a binary fraction. The other 15 classes share the rest, each below the top one.
  edge = np.linspace(0.0, 1.0, 16)[k]
  probs = np.concatenate([[edge], np.full(15, (1.0 - edge) / 15)])[None]
  bins = calibration.reliability_bins(probs, np.zeros(1, np.int64))
  assert bins.edges[k] == edge
  assert np.flatnonzero(bins.counts).tolist() == [k - 1]


@pytest.mark.parametrize("probs, labels, num_bins", [
    (np.ones(3), np.zeros(3, np.int64), 15),  # probs not (N, C).
    (np.ones((3, 2)), np.zeros(2, np.int64), 15),  # N mismatch.
    (np.ones((0, 2)), np.zeros(0, np.int64), 15),  # Empty.
    (np.ones((3, 2)), np.zeros(3, np.int64), 0),  # No bins.
])
def test_rejects_bad_input(probs, labels, num_bins):
  with pytest.raises(ValueError):
    calibration.expected_calibration_error(probs, labels, num_bins)


# --- Temperature scaling ----------------------------------------------------------------------

def _overconfident(n, seed):
  # True class probabilities softmax(z); the model reports softmax(3 z): overconfident by T = 3.
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 4))
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  labels = np.array([rng.choice(4, p=row) for row in p])
  return 3.0 * z, labels


def test_fit_temperature_recovers_the_overconfidence_and_lowers_nll():
  logits, labels = _overconfident(4000, 0)
  t = calibration.fit_temperature(logits, labels)
  assert t == pytest.approx(3.0, rel=0.1)
  test_logits, test_labels = _overconfident(4000, 1)  # Judged on data it was not fitted on.
  assert calibration.nll(test_logits, test_labels, t) < calibration.nll(test_logits,
                                                                       test_labels) - 0.1
  before = calibration.expected_calibration_error(calibration.softmax(test_logits), test_labels)
  after = calibration.expected_calibration_error(calibration.softmax(test_logits, t),
                                                 test_labels)
  assert after < before / 2


def test_fit_temperature_is_the_nll_minimiser():
  logits, labels = _overconfident(500, 2)
  t = calibration.fit_temperature(logits, labels)
  grid = np.exp(np.linspace(np.log(0.5), np.log(20), 400))
  best = grid[np.argmin([calibration.nll(logits, labels, g) for g in grid])]
  assert t == pytest.approx(best, rel=0.02)


def test_fit_temperature_rejects_bad_shapes_in_one_line():
  with pytest.raises(ValueError) as info:
    calibration.fit_temperature(np.zeros((3, 2)), np.zeros(2, int))
  assert "\n" not in str(info.value)
