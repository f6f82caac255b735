"""Frozen-feature evaluations: ridge, NCM and the logistic probe, with ECE."""
import numpy as np
import pytest

from bit_jax import fewshot, linear_eval


def _blobs(n_per_class, num_classes=3, dim=8, seed=0):
  centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 4  # Shared.
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), n_per_class)
  return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_few_shot_reports_each_method_shot_and_seed():
  train_x, train_y = _blobs(20)
  test_x, test_y = _blobs(10, seed=1)
  results = linear_eval.few_shot(train_x, train_y, test_x, test_y, 3, shots=(1, 5),
                                 seeds=(0, 1))
  assert [(r["method"], r["shots"], r["seed"]) for r in results] == [
      (m, k, s) for k in (1, 5) for s in (0, 1) for m in ("ridge", "ncm")]
  for r in results:
    assert r["num_test_examples"] == 30 and 0 <= r["ece"] <= 1
  assert min(r["top1"] for r in results if r["shots"] == 5) > 0.9  # Well separated blobs.


def test_ridge_result_is_the_ridge_solution_on_the_selected_examples():
  train_x, train_y = _blobs(20)
  test_x, test_y = _blobs(10, seed=1)
  [result] = linear_eval.few_shot(train_x, train_y, test_x, test_y, 3, shots=(2,),
                                  seeds=(4,), methods=("ridge",))
  chosen = fewshot.select_few_shot(train_y, 2, 4)
  expected = fewshot.ridge_fewshot_accuracy(train_x[chosen], train_y[chosen], test_x, test_y, 3)
  assert result["top1"] == pytest.approx(expected)


def test_logistic_probe_result_has_top1_ece_and_the_chosen_l2():
  train_x, train_y = _blobs(30)
  test_x, test_y = _blobs(10, seed=1)
  fit, val = linear_eval.split_validation(train_y, 0.2, seed=0)
  assert len(val) == 18 and not set(fit) & set(val) and len(fit) + len(val) == 90
  result = linear_eval.logistic(train_x[fit], train_y[fit], train_x[val], train_y[val],
                                test_x, test_y, 3)
  assert result["top1"] > 0.9 and result["num_train_examples"] == 90
  assert result["l2"] in tuple(fewshot.L2_GRID) and 0 <= result["ece"] <= 1
