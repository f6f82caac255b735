"""Learning rates at the recipe's boundaries, and where weight decay enters the update."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bit_jax import optim
from bit_jax.errors import UserError

# The schedules and updates are float32 against float64 hand values: a few roundings each,
# <= 1e-7 relative (measured 8.4e-8), so rtol 1e-6 (pytest.approx's default) or more; the
# default 1e-7 of assert_allclose where the value is one rounding (-0.1 is 1.5e-8 off).

IMAGENET_TRAIN = 1_281_167


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      lr_per_256=0.03, batch_size=4096, schedule="paper", warmup_steps=5000,
      decay_epochs=(30, 60, 80), momentum=0.9, weight_decay=1e-4,
      weight_decay_style="coupled", grad_clip_norm=0.0))
  config.update(overrides)
  return config


def test_linear_scaling_rule():
  assert optim.base_learning_rate(0.03, 4096) == pytest.approx(0.48)
  assert optim.base_learning_rate(0.03, 256) == pytest.approx(0.03)


def test_paper_schedule_at_its_boundaries():
  steps_per_epoch = IMAGENET_TRAIN / 4096
  schedule = optim.make_schedule(_config(), steps_per_epoch, total_steps=28150)
  d30, d60, d80 = (round(e * steps_per_epoch) for e in (30, 60, 80))
  assert (d30, d60, d80) == (9384, 18767, 25023)
  expected = {0: 0.0, 2500: 0.24, 4999: 0.48 * 4999 / 5000, 5000: 0.48, d30 - 1: 0.48,
              d30: 0.048, d60 - 1: 0.048, d60: 0.0048, d80 - 1: 0.0048, d80: 0.00048,
              28149: 0.00048}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_bit_l_schedule_decays_at_its_own_epochs():
  schedule = optim.make_schedule(_config(decay_epochs=(10, 23, 30, 37), warmup_steps=500),
                                 100.0, 4000)
  lrs = [float(schedule(s)) for s in (999, 1000, 2299, 2300, 2999, 3000, 3699, 3700)]
  np.testing.assert_allclose(lrs, [0.48, 0.048, 0.048, 0.0048, 0.0048, 0.00048, 0.00048,
                                   0.000048], rtol=1e-5)


def test_cosine_schedule_warms_up_then_reaches_zero():
  schedule = optim.make_schedule(_config(schedule="cosine", warmup_steps=10), 1.0, 110)
  assert float(schedule(5)) == pytest.approx(0.24)
  assert float(schedule(10)) == pytest.approx(0.48)
  assert float(schedule(60)) == pytest.approx(0.24)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)


def _one_update(config, params, grads):
  optimizer = optim.make_optimizer(config, lambda step: 0.1)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  return updates


def test_coupled_decay_adds_l2_to_kernels_only():
  params = {"conv": {"kernel": jnp.full((2,), 2.0)}, "norm": {"gamma": jnp.full((2,), 2.0)}}
  grads = {"conv": {"kernel": jnp.ones(2)}, "norm": {"gamma": jnp.ones(2)}}
  updates = _one_update(_config(weight_decay=0.5), params, grads)
  # kernel: -lr * (g + wd * w) = -0.1 * (1 + 1); gamma is not decayed: -0.1 * 1.
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.2)
  np.testing.assert_allclose(updates["norm"]["gamma"], -0.1)


def test_decoupled_decay_bypasses_momentum():
  config = _config(weight_decay=0.5, weight_decay_style="decoupled")
  optimizer = optim.make_optimizer(config, lambda step: 0.1)
  params = {"kernel": jnp.full((1,), 2.0)}
  state = optimizer.init(params)
  _, state = optimizer.update({"kernel": jnp.ones(1)}, state, params)
  updates, _ = optimizer.update({"kernel": jnp.zeros(1)}, state, params)
  # Second step, zero gradient: momentum carries 0.9 * 1 while the decay adds 0.5 * 2 once;
  # coupled decay would have put 0.9 * (1 + 1) + 1 into the momentum instead.
  np.testing.assert_allclose(updates["kernel"], -0.1 * (0.9 + 1.0), rtol=1e-6)


def test_gradient_clipping_bounds_the_update():
  config = _config(weight_decay=0.0, grad_clip_norm=1.0)
  updates = _one_update(config, {"kernel": jnp.zeros(4)}, {"kernel": jnp.full((4,), 10.0)})
  assert float(optax.global_norm(updates)) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("field,value", [("schedule", "linear"),
                                         ("weight_decay_style", "adamw")])
def test_unknown_choices_list_the_valid_ones(field, value):
  config = _config(**{field: value})
  with pytest.raises(UserError, match=f"unknown {field} '{value}'; valid: "):
    optim.make_optimizer(config, optim.make_schedule(config, 1.0, 10))
