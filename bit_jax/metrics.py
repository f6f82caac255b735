"""Evaluation metrics.

On devices: counts that add up across batches and devices (padding masked out). On the host
(NumPy): mean per-class accuracy, VOC07 11-point mAP, and mean ± 95% CI over episodes, for the
frozen-feature evaluations of `bit_jax.linear_eval`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """How many unmasked examples have a positive label among their k highest logits.

  With one-hot labels this is top-k accuracy's numerator; with multi-hot labels and k=1 it
  is precision@1's (the top prediction is one of the image's labels).
  """
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.take_along_axis(labels, top, axis=-1).max(axis=-1) > 0
  return jnp.sum(hit * mask)


def eval_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                loss_per_example: jax.Array) -> dict[str, jax.Array]:
  """Sums for top-1, top-5, loss and the example count; divide once at the end."""
  k5 = min(5, logits.shape[-1])
  return {"top1": topk_correct(logits, labels, mask, 1),
          "top5": topk_correct(logits, labels, mask, k5),
          "loss": jnp.sum(loss_per_example * mask),
          "count": jnp.sum(mask)}


# --- Host-side metrics of frozen-feature evaluations (NumPy, whole test set at once) -----------

def mean_per_class_accuracy(predictions, labels) -> float:
  """Mean over the classes present in `labels` of that class's recall (top-1 within the class).

  Ericsson et al.'s 'mean per-class accuracy' (ssl-transfer `linear.py`,
  `LogisticRegression.fit_logistic_regression`): the diagonal of sklearn's confusion matrix
  over its row sums, averaged. The confusion matrix has a row for every class that occurs in
  labels or predictions; a class only ever predicted has an empty row (0/0, NaN there), so we
  average over the classes present in `labels`, which is the same whenever every predicted
  class is also a true class of some test example.
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or labels.ndim != 1 or not labels.size:
    raise ValueError(f"Expected predictions and labels of one shape (N,), N > 0, got "
                     f"{predictions.shape} and {labels.shape}.")
  classes = np.unique(labels)
  return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def voc07_average_precision(scores, positives) -> float:
  """PASCAL VOC 2007's 11-point interpolated average precision of one class.

  AP = (1/11) Σ_{t ∈ {0, 0.1, ..., 1}} max{precision(r) : recall(r) ≥ t} (0 when no point
  reaches recall t), over the precision-recall curve of `scores` thresholded at each distinct
  value. As in Ericsson et al. (ssl-transfer `linear.py`, `voc_ap` and `voc_eval_cls`), the
  curve is sklearn's `precision_recall_curve`'s, which ends with the point (recall 0,
  precision 1): so t = 0 always contributes 1/11. Tied scores form one point.
  """
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives).astype(bool)
  if scores.shape != positives.shape or scores.ndim != 1 or not positives.any():
    raise ValueError(f"Expected scores and positives of one shape (N,) with at least one "
                     f"positive, got {scores.shape} and {positives.shape}.")
  order = np.argsort(-scores, kind="stable")
  scores, positives = scores[order], positives[order]
  last_of_tie = np.r_[np.diff(scores) != 0, True]  # Each distinct threshold's last example.
  true_pos = np.cumsum(positives)[last_of_tie]
  predicted = np.arange(1, len(scores) + 1)[last_of_tie]
  precision = np.r_[true_pos / predicted, 1.0]
  recall = np.r_[true_pos / positives.sum(), 0.0]
  return float(sum(precision[recall >= t].max() if np.any(recall >= t) else 0.0
                   for t in np.linspace(0, 1, 11)) / 11)


def voc07_mean_average_precision(scores, labels) -> float:
  """Mean over classes (columns) of `voc07_average_precision`; labels are (N, C) multi-hot."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 2 or scores.shape != labels.shape:
    raise ValueError(f"Expected scores and labels of one shape (N, C), got {scores.shape} "
                     f"and {labels.shape}.")
  return float(np.mean([voc07_average_precision(scores[:, c], labels[:, c])
                        for c in range(labels.shape[1])]))


def mean_and_ci95(values) -> tuple[float, float]:
  """(mean, 1.96 · std / sqrt(n)) of per-episode values, std with ddof=0 (np.std's default).

  The interval few-shot papers report over episodes, as ssl-transfer `few_shot.py`,
  `FewShotTester.test` computes it.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or not values.size:
    raise ValueError(f"Expected a non-empty 1-D array, got shape {values.shape}.")
  return float(values.mean()), float(1.96 * values.std() / np.sqrt(values.size))
