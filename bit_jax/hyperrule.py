"""BiT-HyperRule: transfer hyperparameters from the dataset's size and image resolution.

Named as in the original release (`big_transfer/bit_hyperrule.py`) and kept apart from the
transfer loop that uses it:

    resize, crop = get_resolution((h, w))
    *_, total = get_schedule(num_train)
    lr = get_lr(step, num_train)               # None once the run is over
    mixup_alpha = get_mixup(num_train)
    schedule = lr_schedule(num_train)           # the same rule, traceable inside jax.jit
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp

from bit_jax.errors import UserError

SMALL_IMAGE_PIXELS = 96 * 96  # Images with fewer pixels than this are "small".
SMALL_RESOLUTION = (160, 128)  # (resize, crop) for small images, in the paper and the release.
LARGE_RESOLUTIONS = {
    "paper": (448, 384),  # BiT paper, Section 3.3.
    "release": (512, 480),  # What the released big_transfer code uses.
}
SMALL_DATASET = 20_000  # Fewer examples than this: short schedule and no MixUp.
MEDIUM_DATASET = 500_000  # Fewer examples than this (and not small): medium schedule.
MIXUP_ALPHA = 0.1


def get_resolution(original_resolution: tuple[int, int],
                   variant: str = "paper") -> tuple[int, int]:
  """Returns (resize, crop) for images of `original_resolution` = (height, width).

  `variant` picks the large-image rule: "paper" (448, 384) or "release" (512, 480).
  """
  if variant not in LARGE_RESOLUTIONS:
    raise UserError(f"Unknown HyperRule variant {variant!r}; "
                     f"valid ones: {sorted(LARGE_RESOLUTIONS)}.")
  height, width = original_resolution
  if height * width < SMALL_IMAGE_PIXELS:
    return SMALL_RESOLUTION
  return LARGE_RESOLUTIONS[variant]


def get_schedule(dataset_size: int) -> list[int]:
  """Returns the step boundaries [warmup, decay1, decay2, decay3, total]."""
  if dataset_size < SMALL_DATASET:
    return [100, 200, 300, 400, 500]
  if dataset_size < MEDIUM_DATASET:
    return [500, 3000, 6000, 9000, 10_000]
  return [500, 6000, 12_000, 18_000, 20_000]


def get_lr(step: int, dataset_size: int, base_lr: float = 0.003) -> float | None:
  """Returns the learning rate at `step`, or None once `step >= total` (training is over).

  Linear warmup from 0 to `base_lr`, then divided by 10 once `step` is strictly past each decay
  point: at step == decay1 the rate is still undecayed, as in the release.
  """
  warmup, *decays, total = get_schedule(dataset_size)
  if step < warmup:
    return base_lr * step / warmup
  if step >= total:
    return None
  for boundary in decays:
    if boundary < step:
      base_lr /= 10
  return base_lr


def get_mixup(dataset_size: int) -> float:
  """Returns the MixUp alpha: none for small datasets, 0.1 otherwise."""
  return 0.0 if dataset_size < SMALL_DATASET else MIXUP_ALPHA


def lr_schedule(dataset_size: int,
                base_lr: float = 0.003) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Returns an optax-style `step -> lr` with `get_lr`'s values, traceable inside jax.jit.

  Agrees with `get_lr` for every step < total. There is no None under jit, so from `total` on it
  returns 0.0: a step past the end leaves the parameters where they are.
  """
  return staircase_schedule(get_schedule(dataset_size), base_lr)


def staircase_schedule(boundaries: Sequence[int],
                       base_lr: float = 0.003) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """`lr_schedule` for explicit [warmup, decay1, decay2, decay3, total] boundaries.

  For shortened runs (CPU demos, tests) that keep the rule's shape with fewer steps, and for
  other step schedules of this shape: warmup 0 is none (VTAB's lightweight sweep,
  `bit_jax.vtab.protocols.lightweight_schedule`), the rate `base_lr / 10**k` after k decays.
  """
  warmup, *decays, total = boundaries
  decays = jnp.asarray(decays)

  def schedule(step: jnp.ndarray) -> jnp.ndarray:
    step = jnp.asarray(step)
    num_decays = jnp.sum(step[..., None] > decays, axis=-1)
    warming = base_lr * step / max(warmup, 1)  # max: no 0/0 in the branch warmup 0 never takes.
    lr = jnp.where(step < warmup, warming, base_lr / 10.0**num_decays)
    return jnp.where(step >= total, 0.0, lr)

  return schedule
