"""What fine-tuning updates: `trainable` = all | head | block1 ... block4.

    all      every parameter (the BiT-HyperRule)
    head     the classification head only: a linear probe trained by SGD
    blockN   blockN and everything after it (later blocks, the final norm, the head);
             the root and the earlier blocks stay as loaded

Frozen parameters get no update, no optimizer state (`optax.multi_transform` with
`optax.set_to_zero`) and no gradient: the train step replaces their gradients by zeros, so
XLA drops the backward pass below the first trainable block.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from bit_jax.errors import UserError

# The model's top-level modules, input to output (bit_jax.models.ResNetV2).
_ORDER = ("root_conv", "block1", "block2", "block3", "block4", "norm", "head")
TRAINABLE = ("all", "head", "block1", "block2", "block3", "block4")


def check(trainable: str) -> str:
  if trainable not in TRAINABLE:
    raise UserError(f"trainable={trainable!r} is not valid; valid: {', '.join(TRAINABLE)} "
                    "(all: every parameter; head: the head only; blockN: blockN onwards)")
  return trainable


def mask(params: dict[str, Any], trainable: str) -> dict[str, Any]:
  """A tree like `params` of Python bools: True where fine-tuning updates the leaf."""
  first = 0 if check(trainable) == "all" else _ORDER.index(trainable)
  def is_trainable(module: str) -> bool:
    if module not in _ORDER:
      raise UserError(f"cannot freeze by block: the model has a module {module!r} outside "
                      f"{', '.join(_ORDER)}; use trainable=all")
    return _ORDER.index(module) >= first
  return {module: jax.tree.map(lambda _, t=is_trainable(module): t, subtree)
          for module, subtree in params.items()}


def optimizer(inner: optax.GradientTransformation, trainable_mask: Any
              ) -> optax.GradientTransformation:
  """`inner` on the trainable leaves; the frozen ones get zero updates and hold no state."""
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask)
  return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)
