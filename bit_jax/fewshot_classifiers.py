"""Few-shot classifiers on precomputed features (e.g. a model's `pre_logits`).

Pure functions on arrays; computing the features is the caller's job.

    idx = select_few_shot(train_labels, shots=10, seed=0)
    acc = ridge_fewshot_accuracy(train_x[idx], train_y[idx], test_x, test_y, num_classes)
    acc = ncm_accuracy(train_x[idx], train_y[idx], test_x, test_y)

`bit_jax.linear_eval` runs them under their protocols' names (`bigvision_fewshot`, `ncm`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from bit_jax.errors import UserError

BIAS_FEATURE = 100.0  # big_vision's BIAS_CONSTANT: large, so the bias is almost unregularised.
STD_EPSILON = 1e-5  # Added to the train std when whitening, as in big_vision.


def _check_labels(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"Labels must be a 1-D integer array, got shape {labels.shape} "
                     f"and dtype {labels.dtype}.")
  upper = np.inf if num_classes is None else num_classes
  if labels.size and not 0 <= labels.min() <= labels.max() < upper:
    raise ValueError(f"Labels must lie in [0, {upper}), got [{labels.min()}, {labels.max()}].")
  return labels


# --- Selecting the few shots --------------------------------------------------------------------

def select_few_shot(labels: np.ndarray, shots: int, seed: int,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
  """Returns sorted indices of exactly `shots` examples of every class present in `labels`.

  `UserError` if a class has fewer than `shots` examples, naming it by `class_names[label]`
  when given (else by its label).

  Same draw as big_vision's evaluator: one `np.random.default_rng(seed)` (PCG64, the same stream
  on every platform for a given NumPy version) permutes each class's indices in ascending class
  order, and the first `shots` are kept. So the k-shot set is a subset of the (k+1)-shot set for
  the same seed.
  """
  labels = _check_labels(labels)
  if shots < 1:
    raise UserError(f"shots must be at least 1, got {shots}.")
  classes, counts = np.unique(labels, return_counts=True)
  if counts.size and counts.min() < shots:
    smallest = int(np.argmin(counts))
    label = int(classes[smallest])
    name = (f"{class_names[label]!r} (label {label})"
            if class_names is not None and label < len(class_names) else str(label))
    raise UserError(f"Class {name} has only {counts[smallest]} examples, fewer than "
                    f"shots={shots}; shots can be at most {counts[smallest]}.")
  rng = np.random.default_rng(seed)
  # A stable sort groups each class's indices in ascending order, like np.where(labels == c),
  # without a pass over all labels per class.
  by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
  chosen = [rng.permutation(indices)[:shots] for indices in by_class]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# --- Closed-form ridge regression (big_vision's few-shot evaluator) -----------------------------

class RidgeModel(NamedTuple):
  """A fitted ridge classifier; scores are `ridge_design(x, ...) @ weights`."""
  mean: np.ndarray  # (D,) train feature mean.
  std: np.ndarray  # (D,) train feature std plus STD_EPSILON.
  weights: np.ndarray  # (D + 1, C); the last row multiplies the bias feature.
  bias_feature: float


def ridge_design(feats: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 bias_feature: float) -> np.ndarray:
  """Whitens `feats` with the given (train) statistics and appends a constant bias column."""
  x = (np.asarray(feats, np.float64) - mean) / std
  return np.pad(x, ((0, 0), (0, 1)), constant_values=bias_feature)


def ridge_fit(train_feats: np.ndarray, train_labels: np.ndarray, num_classes: int,
              l2_reg: float = 2.0**10, bias_feature: float = BIAS_FEATURE) -> RidgeModel:
  """Solves (XᵀX + l2·I) W = XᵀY: X whitened and bias-augmented, targets Y = 2·onehot − 1.

  The bias weight is regularised like the others; a large `bias_feature` makes that negligible.
  """
  train_labels = _check_labels(train_labels, num_classes)
  if l2_reg < 0:
    raise ValueError(f"l2_reg must be non-negative, got {l2_reg}.")
  feats = np.asarray(train_feats, np.float64)
  mean, std = feats.mean(axis=0), feats.std(axis=0) + STD_EPSILON
  x = ridge_design(feats, mean, std, bias_feature)
  y = 2.0 * np.eye(num_classes)[train_labels] - 1.0
  num_points, dim = x.shape
  # Few-shot sets usually have fewer points than dimensions; then the N×N dual system
  # W = Xᵀ (XXᵀ + l2·I)⁻¹ Y is the same solution and far cheaper.
  if num_points >= dim:
    weights = np.linalg.solve(x.T @ x + l2_reg * np.eye(dim), x.T @ y)
  else:
    weights = x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(num_points), y)
  return RidgeModel(mean, std, weights, bias_feature)


def ridge_scores(model: RidgeModel, feats: np.ndarray) -> np.ndarray:
  """Returns (N, C) regression outputs; their argmax is the predicted class."""
  return ridge_design(feats, model.mean, model.std, model.bias_feature) @ model.weights


def ridge_fewshot_accuracy(train_feats: np.ndarray, train_labels: np.ndarray,
                           test_feats: np.ndarray, test_labels: np.ndarray, num_classes: int,
                           l2_reg: float = 2.0**10,
                           bias_feature: float = BIAS_FEATURE) -> float:
  """Returns test top-1 accuracy of the closed-form ridge classifier fitted on the train set."""
  model = ridge_fit(train_feats, train_labels, num_classes, l2_reg, bias_feature)
  preds = np.argmax(ridge_scores(model, test_feats), axis=1)
  return float(np.mean(preds == _check_labels(test_labels)))


# --- Nearest class mean -------------------------------------------------------------------------

def _l2_normalize(feats: np.ndarray) -> np.ndarray:
  feats = np.asarray(feats, np.float64)
  return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def ncm_scores(train_feats: np.ndarray, train_labels: np.ndarray,
               test_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(classes, scores): negative squared distances of each test point to each prototype.

  Every feature vector is L2-normalised first; prototypes are the means of the normalised train
  features of each class (not renormalised), SimpleShot's "L2N". Only classes present in
  `train_labels` have a prototype; `scores[:, j]` belongs to `classes[j]`.
  """
  train_labels = _check_labels(train_labels)
  classes, inverse = np.unique(train_labels, return_inverse=True)
  train_x = _l2_normalize(train_feats)
  prototypes = np.zeros((classes.size, train_x.shape[1]))
  np.add.at(prototypes, inverse, train_x)
  prototypes /= np.bincount(inverse)[:, None]
  test_x = _l2_normalize(test_feats)
  # |x - p|^2 expanded, so memory is N x C rather than N x C x D.
  sq_dists = ((test_x**2).sum(1)[:, None] - 2 * test_x @ prototypes.T
              + (prototypes**2).sum(1)[None, :])
  return classes, -sq_dists


def ncm_accuracy(train_feats: np.ndarray, train_labels: np.ndarray,
                 test_feats: np.ndarray, test_labels: np.ndarray) -> float:
  """Returns test top-1 accuracy of nearest-class-mean classification (see `ncm_scores`).

  A test point takes the class of the nearest prototype; ties go to the smaller class id.
  """
  classes, scores = ncm_scores(train_feats, train_labels, test_feats)
  preds = classes[np.argmax(scores, axis=1)]
  return float(np.mean(preds == _check_labels(test_labels)))
