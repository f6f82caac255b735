"""Top-k and precision@1 counts, with padding masked out."""
import jax.numpy as jnp

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
