"""`classification`: top-1, top-5, loss and ECE of the model's head on one split.

What the upstream loop always evaluated (its tags `eval/top1`, `eval/top5`, `eval/loss`), plus
the expected calibration error of the top-1 confidence (`ece`, 15 equal-width bins, as
`bit_jax.calibration.expected_calibration_error`). Counts add up on device over batches and
devices, so the split never travels to the host. Labels may be one-hot, multi-hot (then top-1
is precision@1) or integers.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bit_jax import losses, metrics
from bit_jax.evaluators import inference, spec

FIELDS = dict(spec.DATA)
NUM_BINS = 15  # Of the ECE; calibration.reliability_bins' default.


def confidence_bins(probs_top1: jax.Array, correct: jax.Array, mask: jax.Array,
                    num_bins: int = NUM_BINS) -> dict[str, jax.Array]:
  """Per-bin sums (count, correct, confidence) of equal-width bins (lo, hi] over (0, 1].

  The binning of `calibration.reliability_bins`, as sums that add up over batches.
  """
  edges = jnp.linspace(0.0, 1.0, num_bins + 1)
  bins = jnp.clip(jnp.searchsorted(edges, probs_top1, side="left") - 1, 0, num_bins - 1)
  onehot = jax.nn.one_hot(bins, num_bins) * mask[:, None]
  return {"bin_count": onehot.sum(0), "bin_correct": (onehot * correct[:, None]).sum(0),
          "bin_confidence": (onehot * probs_top1[:, None]).sum(0)}


def ece(sums: Mapping[str, np.ndarray]) -> float:
  """Σ_b (n_b / N) |acc_b − conf_b| from the summed bins."""
  count = np.asarray(sums["bin_count"], np.float64)
  gap = np.abs(np.asarray(sums["bin_correct"]) - np.asarray(sums["bin_confidence"]))
  return float(gap.sum() / max(count.sum(), 1.0))


def make_step(model, loss: str, num_classes: int):
  """batch -> sums of top-1/top-5 hits, loss, count and the ECE bins (masked)."""
  loss_fn = losses.get_loss(loss)

  def step(params, images, labels, mask):
    logits, _ = model.apply({"params": params}, images)
    logits = logits.astype(jnp.float32)
    labels = inference.one_hot(labels, num_classes)
    mask = mask.astype(jnp.float32)
    counts = metrics.eval_counts(logits, labels, mask, loss_fn(logits, labels))
    top = jnp.argmax(logits, axis=-1)
    correct = (jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0] > 0).astype(jnp.float32)
    probs = jax.nn.sigmoid(logits) if loss == "sigmoid_xent" else jax.nn.softmax(logits)
    confidence = jnp.take_along_axis(probs, top[:, None], axis=-1)[:, 0]
    return {**counts, **confidence_bins(confidence, correct, mask)}

  return step


class Evaluator(inference.OneSplit):
  """Top-1/top-5/loss/ECE on `split` of `dataset`."""

  def __init__(self, name: str, entry: Mapping[str, Any], run: inference.Run):
    super().__init__(name, entry, run)
    self._step = inference.jitted(make_step, run.mesh, run.model, run.loss, run.num_classes)

  def run_on(self, params: Any) -> dict[str, float]:
    sums = inference.sum_over(
        self.data, lambda b: self._step(params, b["image"], b["label"], b["_mask"]))
    count = float(sums["count"])
    return {"top1": float(sums["top1"]) / count, "top5": float(sums["top5"]) / count,
            "loss": float(sums["loss"]) / count, "ece": ece(sums)}
