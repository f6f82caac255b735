"""Top-k and precision@1 counts (padding masked out), and the host-side NumPy metrics."""
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import metrics

LOGITS = jnp.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])


def test_topk_counts_one_hot_labels():
  labels = jnp.eye(3)[jnp.array([1, 2, 0])]
  mask = jnp.ones(3)
  assert int(metrics.topk_correct(LOGITS, labels, mask, 1)) == 1  # Only the first.
  assert int(metrics.topk_correct(LOGITS, labels, mask, 2)) == 2  # Class 2 is 2nd for row 1.
  assert int(metrics.topk_correct(LOGITS, labels, mask, 3)) == 3


def test_masked_examples_do_not_count():
  labels = jnp.eye(3)[jnp.array([1, 0, 2])]  # All three correct at top-1.
  assert int(metrics.topk_correct(LOGITS, labels, jnp.array([1.0, 0.0, 1.0]), 1)) == 2


def test_multi_hot_labels_give_precision_at_one():
  labels = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
  # Row 0's top (1) is a label; row 1's top (0) is not; row 2's top (2) is.
  assert int(metrics.topk_correct(LOGITS, labels, jnp.ones(3), 1)) == 2


def test_eval_counts_caps_top5_at_the_number_of_classes():
  labels = jnp.eye(3)[jnp.array([1, 2, 0])]
  counts = metrics.eval_counts(LOGITS, labels, jnp.ones(3), jnp.array([1.0, 2.0, 3.0]))
  assert {k: float(v) for k, v in counts.items()} == {
      "top1": 1.0, "top5": 3.0, "loss": 6.0, "count": 3.0}


# --- Host-side metrics ------------------------------------------------------------------------

def test_mean_per_class_accuracy_hand_case():
  # Class 0: 3 of 4 right; class 1: 1 of 1; class 2: 0 of 1. Plain top-1 would be 4/6.
  labels = np.array([0, 0, 0, 0, 1, 2])
  preds = np.array([0, 0, 0, 1, 1, 0])
  assert metrics.mean_per_class_accuracy(preds, labels) == pytest.approx((0.75 + 1 + 0) / 3)


def test_voc07_ap_hand_case():
  # Ranked: +, -, +, -  -> (recall, precision): (.5, 1), (.5, .5), (1, 2/3), (1, .5).
  # t in {0..0.5}: max precision 1 (6 points); t in {0.6..1}: 2/3 (5 points).
  scores = np.array([0.9, 0.8, 0.7, 0.1])
  positives = np.array([1, 0, 1, 0])
  assert metrics.voc07_average_precision(scores, positives) == pytest.approx(
      (6 * 1 + 5 * 2 / 3) / 11)


def test_voc07_ap_ties_form_one_point_and_recall_zero_point_counts():
  # Both examples tie: one point (recall 1, precision 1/2), plus sklearn's (0, 1) end point,
  # which only t = 0 reaches: AP = (1 + 10 * 0.5) / 11.
  assert metrics.voc07_average_precision(np.array([0.3, 0.3]), np.array([0, 1])) == (
      pytest.approx(6 / 11))


def test_voc07_ap_matches_sklearn_curve_and_mean_over_classes():
  from sklearn.metrics import precision_recall_curve
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=(40, 3)), 1)  # Rounded: some ties.
  labels = (rng.uniform(size=(40, 3)) < 0.4).astype(int)
  aps = []
  for c in range(3):
    prec, rec, _ = precision_recall_curve(labels[:, c], scores[:, c])
    aps.append(np.mean([prec[rec >= t].max() if np.any(rec >= t) else 0
                        for t in np.linspace(0, 1, 11)]))
    assert metrics.voc07_average_precision(scores[:, c], labels[:, c]) == pytest.approx(aps[-1])
  assert metrics.voc07_mean_average_precision(scores, labels) == pytest.approx(np.mean(aps))


def test_mean_and_ci95():
  mean, ci = metrics.mean_and_ci95([0.6, 0.8, 1.0, 0.6])
  assert mean == pytest.approx(0.75)
  assert ci == pytest.approx(1.96 * np.sqrt(np.mean(np.square([-0.15, 0.05, 0.25, -0.15]))) / 2)


@pytest.mark.parametrize("call", [
    lambda: metrics.mean_per_class_accuracy([0, 1], [0]),
    lambda: metrics.voc07_average_precision(np.array([0.1, 0.2]), np.array([0, 0])),
    lambda: metrics.mean_and_ci95([]),
])
def test_host_metrics_reject_bad_input_in_one_line(call):
  with pytest.raises(ValueError) as info:
    call()
  assert "\n" not in str(info.value)
