"""`real`: ImageNet-ReaL accuracy (Beyer et al., 2020, "Are we done with ImageNet?").

A prediction is correct if it is one of the image's ReaL labels; images whose ReaL label set is
empty are not counted, as the paper does (google-research/reassessed-imagenet, README.md,
"Example code for computing ReaL accuracy": `is_correct = [pred in real_labels[i] for ... if
real_labels[i]]`; big_vision `configs/bit_i1k.py` runs it as `evals.real`). The labels
reach the evaluator as multi-hot rows: TFDS `imagenet2012_real` keeps the sets in `real_label`,
and `onehot(1000, key="real_label", key_result="label")` turns each into one row (an empty set
into a row with no positive entry).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from bit_jax.evaluators import inference, spec

FIELDS = dict(spec.DATA)


def make_step(model, num_classes: int):
  """batch -> (hits, counted): top-1 in the label set, over images with a non-empty set."""

  def step(params, images, labels, mask):
    logits, _ = model.apply({"params": params}, images)
    labels = inference.one_hot(labels, num_classes)
    top = jnp.argmax(logits, axis=-1)
    counted = mask.astype(bool) & jnp.any(labels > 0, axis=-1)
    hit = jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0] > 0
    return {"hits": jnp.sum(hit & counted), "counted": jnp.sum(counted),
            "count": jnp.sum(mask.astype(jnp.int32))}

  return step


class Evaluator(inference.OneSplit):
  """ReaL top-1 on `split` of `dataset` (default: imagenet2012_real validation)."""

  def __init__(self, name: str, entry: Mapping[str, Any], run: inference.Run):
    super().__init__(name, entry, run)
    self._step = inference.jitted(make_step, run.mesh, run.model, run.num_classes)

  def run_on(self, params: Any) -> dict[str, float]:
    sums = inference.sum_over(
        self.data, lambda b: self._step(params, b["image"], b["label"], b["_mask"]))
    if not sums["counted"]:
      raise ValueError(f"no image of {self.dataset} {self.split} has a ReaL label")
    return {"top1": float(sums["hits"]) / float(sums["counted"]),
            "num_counted": float(sums["counted"]), "num_examples": float(sums["count"])}
