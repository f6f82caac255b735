"""Per-example losses against hand computations."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import losses
from bit_jax.errors import UserError

# The hand computations are float64; the losses are float32 (log, exp, a sum of a few terms):
# a few ulps, measured <= 8.6e-8 relative, so rtol 1e-6.


def test_softmax_xent_of_uniform_logits_is_log_classes():
  loss = losses.softmax_xent(jnp.zeros((2, 4)), jnp.eye(4)[:2])
  np.testing.assert_allclose(loss, [math.log(4)] * 2, rtol=1e-6)


def test_softmax_xent_with_mixed_labels():
  logits = jnp.array([[2.0, 0.0]])
  labels = jnp.array([[0.25, 0.75]])  # A mixup of two one-hot rows.
  log_p = np.log(np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum())
  np.testing.assert_allclose(losses.softmax_xent(logits, labels),
                             [-(0.25 * log_p[0] + 0.75 * log_p[1])], rtol=1e-6)


def test_sigmoid_xent_sums_binary_losses_over_classes():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  labels = jnp.array([[1.0, 1.0, 0.0]])  # Two labels on one image.
  sigmoid = lambda x: 1 / (1 + math.exp(-x))
  expected = -(math.log(0.5) + math.log(sigmoid(2.0)) + math.log(1 - sigmoid(-1.0)))
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), [expected], rtol=1e-6)


def test_unknown_loss_lists_the_valid_ones():
  with pytest.raises(UserError, match="unknown loss 'mse'; valid: softmax_xent, sigmoid_xent"):
    losses.get_loss("mse")
