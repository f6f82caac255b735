"""Tests for bit_jax.fewshot_classifiers: shot selection, ridge, nearest class mean."""

import numpy as np
import pytest

from bit_jax import fewshot_classifiers
from bit_jax.errors import UserError


# --- select_few_shot ----------------------------------------------------------------------------

def _labels():
  # Classes 0, 2, 5 (1, 3, 4 absent) with 7, 4 and 9 examples, shuffled.
  return np.random.default_rng(123).permutation(np.repeat([0, 2, 5], [7, 4, 9]))


@pytest.mark.parametrize("shots", [1, 3, 4])
def test_select_is_class_balanced_sorted_and_unique(shots):
  labels = _labels()
  idx = fewshot_classifiers.select_few_shot(labels, shots, seed=0)
  assert np.all(np.diff(idx) > 0)  # Sorted, no repeats.
  classes, counts = np.unique(labels[idx], return_counts=True)
  np.testing.assert_array_equal(classes, [0, 2, 5])
  np.testing.assert_array_equal(counts, [shots] * 3)


def test_select_is_deterministic_and_seed_dependent():
  labels = _labels()
  a = fewshot_classifiers.select_few_shot(labels, 3, seed=7)
  np.testing.assert_array_equal(a, fewshot_classifiers.select_few_shot(labels.copy(), 3, seed=7))
  others = [fewshot_classifiers.select_few_shot(labels, 3, seed=s) for s in range(8, 16)]
  assert any(not np.array_equal(a, b) for b in others)


def test_select_matches_big_vision_draw():
  # big_vision: rng.permutation(np.where(labels == c)[0])[:shots] for each class in order.
  labels = _labels()
  rng = np.random.default_rng(3)
  expected = np.concatenate([rng.permutation(np.where(labels == c)[0])[:2] for c in (0, 2, 5)])
  np.testing.assert_array_equal(fewshot_classifiers.select_few_shot(labels, 2, seed=3),
                                np.sort(expected))


def test_select_pinned_indices():
  # Golden values from PCG64 (NumPy 2.x): fails if the stream or the draw order ever changes.
  labels = np.repeat([0, 1], 5)
  np.testing.assert_array_equal(fewshot_classifiers.select_few_shot(labels, 2, seed=0),
                                [2, 4, 6, 9])


def test_select_k_shot_is_subset_of_more_shots():
  labels = _labels()
  small = fewshot_classifiers.select_few_shot(labels, 2, seed=5)
  large = fewshot_classifiers.select_few_shot(labels, 4, seed=5)
  assert set(small) < set(large)


def test_select_all_of_the_smallest_class():
  labels = _labels()
  idx = fewshot_classifiers.select_few_shot(labels, 4, seed=0)
  np.testing.assert_array_equal(np.sort(np.flatnonzero(labels == 2)),
                                idx[labels[idx] == 2])


def test_select_too_many_shots_names_class_count_and_k():
  with pytest.raises(ValueError) as info:
    fewshot_classifiers.select_few_shot(_labels(), 5, seed=0)
  message = str(info.value)
  assert message == "Class 2 has only 4 examples, fewer than shots=5; shots can be at most 4."
  assert "\n" not in message


def test_select_too_many_shots_names_the_class_by_its_name():
  with pytest.raises(UserError, match=r"^Class 'cow' \(label 2\) has only 4 examples, fewer "
                                      r"than shots=5; shots can be at most 4\.$"):
    fewshot_classifiers.select_few_shot(_labels(), 5, seed=0, class_names=["cat", "dog", "cow"])


@pytest.mark.parametrize("labels, shots", [
    (np.zeros((2, 3), np.int32), 1),  # Not 1-D.
    (np.array([0.0, 1.0]), 1),  # Not integer.
    (np.array([0, 1]), 0),  # No shots.
])
def test_select_rejects_bad_input(labels, shots):
  with pytest.raises(ValueError):
    fewshot_classifiers.select_few_shot(labels, shots, seed=0)


# --- ridge --------------------------------------------------------------------------------------

def _blobs(rng, num_classes, per_class, dim, spread=0.3):
  centers = rng.normal(size=(num_classes, dim)) * 3.0
  labels = np.repeat(np.arange(num_classes), per_class)
  feats = centers[labels] + spread * rng.normal(size=(labels.size, dim))
  return feats.astype(np.float32), labels


def _lstsq_weights(feats, labels, num_classes, l2, bias):
  # Independent reference: whiten with train stats, append the bias column, then solve the
  # augmented least-squares problem min ||[X; sqrt(l2) I] W - [Y; 0]||².
  feats = feats.astype(np.float64)
  x = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
  x = np.concatenate([x, np.full((len(x), 1), bias)], axis=1)
  y = np.where(np.arange(num_classes) == labels[:, None], 1.0, -1.0)
  dim = x.shape[1]
  a = np.concatenate([x, np.sqrt(l2) * np.eye(dim)])
  b = np.concatenate([y, np.zeros((dim, num_classes))])
  return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("per_class, dim", [(20, 5), (2, 30)])  # Primal (N > D) and dual (N < D).
@pytest.mark.parametrize("l2, bias", [(2.0**10, 100.0), (0.5, 1.0)])
def test_ridge_fit_equals_least_squares(per_class, dim, l2, bias):
  feats, labels = _blobs(np.random.default_rng(0), 4, per_class, dim)
  model = fewshot_classifiers.ridge_fit(feats, labels, num_classes=4, l2_reg=l2, bias_feature=bias)
  assert model.weights.shape == (dim + 1, 4)
  np.testing.assert_allclose(model.weights, _lstsq_weights(feats, labels, 4, l2, bias),
                             rtol=1e-7, atol=1e-10)


def test_ridge_separates_blobs():
  rng = np.random.default_rng(1)
  train_x, train_y = _blobs(rng, 5, 5, 16)
  test_x = train_x + 0.05 * rng.normal(size=train_x.shape)
  acc = fewshot_classifiers.ridge_fewshot_accuracy(train_x, train_y, test_x, train_y, num_classes=5)
  assert acc == 1.0


def test_ridge_accuracy_counts_wrong_labels():
  rng = np.random.default_rng(2)
  train_x, train_y = _blobs(rng, 2, 10, 8)
  test_y = train_y.copy()
  test_y[:5] = 1  # 5 of the 10 class-0 points relabelled: exactly 15 of 20 still right.
  assert fewshot_classifiers.ridge_fewshot_accuracy(train_x, train_y, train_x, test_y, 2) == 0.75


def test_ridge_whitens_test_with_train_statistics():
  rng = np.random.default_rng(3)
  train_x, train_y = _blobs(rng, 3, 4, 10)
  model = fewshot_classifiers.ridge_fit(train_x, train_y, 3)
  np.testing.assert_allclose(model.mean, train_x.mean(0), rtol=1e-6)
  # With train statistics a point's scores do not depend on the rest of its test batch.
  test_x = train_x[:5] + 10.0
  np.testing.assert_allclose(fewshot_classifiers.ridge_scores(model, test_x)[:1],
                             fewshot_classifiers.ridge_scores(model, test_x[:1]), rtol=1e-12)


def test_ridge_rejects_out_of_range_labels():
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    fewshot_classifiers.ridge_fit(np.zeros((2, 4)), np.array([0, 3]), num_classes=3)


# --- nearest class mean -------------------------------------------------------------------------

def test_ncm_uses_l2_normalised_features():
  train_x = np.array([[1.0, 0.0], [2.0, 0.0], [6.0, 8.0], [-0.6, 0.8]])
  train_y = np.array([4, 4, 7, 7])  # Non-contiguous class ids are kept.
  # Normalised, class 4 is (1, 0), (1, 0) and class 7 is (.6, .8), (-.6, .8): prototypes
  # p4 = (1, 0) and p7 = (0, .8). For a unit test point u,
  # d²(u, p4) - d²(u, p7) = (2 - 2u₀) - (1.64 - 1.6u₁) = .36 - 2u₀ + 1.6u₁.
  test_x = np.array([
      [6.82, 7.31],  # u = (.682, .731): +.17, class 7. Not normalising either side gives 4.
      [3.0, 2.0],  # u = (.832, .555): -.41, class 4. Normalising neither side gives 7.
      [7.19, 6.95],  # u = (.719, .695): +.03, class 7. Cosine to renormalised p7 = (0, 1) gives 4.
  ])
  assert fewshot_classifiers.ncm_accuracy(train_x, train_y, test_x, np.array([7, 4, 7])) == 1.0
  assert fewshot_classifiers.ncm_accuracy(train_x, train_y, test_x,
                                          np.array([7, 7, 7])) == pytest.approx(2 / 3)


def test_ncm_is_scale_invariant_and_separates_blobs():
  rng = np.random.default_rng(4)
  train_x, train_y = _blobs(rng, 6, 3, 12, spread=0.1)
  test_x = train_x + 0.05 * rng.normal(size=train_x.shape)
  assert fewshot_classifiers.ncm_accuracy(train_x, train_y, test_x, train_y) == 1.0
  scales = rng.uniform(0.1, 10.0, size=(len(test_x), 1))
  assert fewshot_classifiers.ncm_accuracy(train_x, train_y, test_x * scales, train_y) == 1.0
