"""Evaluations on frozen features (`out["pre_logits"]`): no fine-tuning at all.

- `ridge`: closed-form few-shot regression (big_vision's fewshot evaluator), k per class;
- `ncm`: nearest-class-mean prototypes on the same k-shot draws;
- `logistic`: many-shot multinomial logistic regression, l2 chosen on a validation split,
  then refit on train+val (Ericsson et al.'s many-shot linear protocol).

Each reports top-1 on the full test set and ECE (15 bins). Ridge and NCM give scores, not
probabilities: their ECE is that of softmax(scores), comparable across runs of one method only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bit_jax import calibration, fewshot

METHODS = ("ridge", "ncm", "logistic")


def _softmax(scores: np.ndarray) -> np.ndarray:
  z = np.exp(scores - scores.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def _result(method, scores, labels, **fields):
  return {"method": method, "top1": float(np.mean(scores.argmax(1) == labels)),
          "ece": calibration.expected_calibration_error(_softmax(scores), labels),
          "num_test_examples": int(len(labels)), **fields}


def few_shot(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
             test_labels: np.ndarray, num_classes: int, *, shots: Sequence[int],
             seeds: Sequence[int], methods: Sequence[str] = ("ridge", "ncm")) -> list[dict]:
  """Ridge and/or NCM for every (k, seed): the same seed draws the same k-shot examples."""
  results = []
  for k in shots:
    for seed in seeds:
      chosen = fewshot.select_few_shot(train_labels, k, seed)
      x, y = train_feats[chosen], train_labels[chosen]
      if "ridge" in methods:
        model = fewshot.ridge_fit(x, y, num_classes)
        results.append(_result("ridge", fewshot.ridge_scores(model, test_feats), test_labels,
                               shots=k, seed=seed))
      if "ncm" in methods:
        classes, scores = fewshot.ncm_scores(x, y, test_feats)
        full = np.full((len(test_feats), num_classes), -np.inf)
        full[:, classes] = scores  # Classes without examples can never be predicted.
        results.append(_result("ncm", full, test_labels, shots=k, seed=seed))
  return results


def logistic(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray,
             val_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
             num_classes: int) -> dict:
  """The many-shot logistic probe on all training examples."""
  probe = fewshot.logistic_probe(train_feats, train_labels, val_feats, val_labels,
                                 test_feats, test_labels, num_classes)
  return {"method": "logistic", "top1": probe.test_accuracy,
          "ece": calibration.expected_calibration_error(probe.test_probs, test_labels),
          "num_test_examples": int(len(test_labels)), "l2": probe.l2,
          "num_train_examples": probe.num_refit_examples}


def split_validation(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) indices: a seeded random `fraction` of the examples held out."""
  order = np.random.default_rng(seed).permutation(len(labels))
  num_val = max(1, int(round(fraction * len(labels))))
  return np.sort(order[num_val:]), np.sort(order[:num_val])
