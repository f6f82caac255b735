"""Tests for bit_jax.hyperrule: every branch and every boundary of the BiT-HyperRule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import hyperrule

# Rates jitted in float32 against the float64 rule: a few roundings, <= 1e-7 relative
# (measured 7.1e-8), so rtol 1e-6.

SMALL, MEDIUM, LARGE = 19_999, 20_000, 500_000  # One dataset size in each schedule regime.


# --- get_resolution -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant, large", [("paper", (448, 384)), ("release", (512, 480))])
@pytest.mark.parametrize("shape, is_small", [
    ((95, 97), True),  # 9215 = 96*96 - 1 pixels.
    ((96, 96), False),  # Exactly 96*96: not small.
    ((32, 32), True),  # CIFAR.
    ((1, 9215), True),  # Area, not side length, decides.
    ((1, 9216), False),
    ((500, 375), False),  # A typical ImageNet image.
])
def test_resolution(shape, is_small, variant, large):
  expected = (160, 128) if is_small else large
  assert hyperrule.get_resolution(shape, variant=variant) == expected


def test_resolution_default_is_paper():
  assert hyperrule.get_resolution((224, 224)) == (448, 384)


def test_resolution_unknown_variant_names_valid_ones():
  with pytest.raises(ValueError, match=r"'tpu'.*\['paper', 'release'\]"):
    hyperrule.get_resolution((32, 32), variant="tpu")  # Checked even for small images.


# --- get_schedule / get_mixup -------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [
    (0, [100, 200, 300, 400, 500]),
    (19_999, [100, 200, 300, 400, 500]),
    (20_000, [500, 3000, 6000, 9000, 10_000]),
    (499_999, [500, 3000, 6000, 9000, 10_000]),
    (500_000, [500, 6000, 12_000, 18_000, 20_000]),
    (1_281_167, [500, 6000, 12_000, 18_000, 20_000]),  # ImageNet-1k train.
])
def test_schedule(size, expected):
  assert hyperrule.get_schedule(size) == expected


@pytest.mark.parametrize("size, expected", [
    (0, 0.0), (19_999, 0.0), (20_000, 0.1), (499_999, 0.1), (500_000, 0.1)])
def test_mixup(size, expected):
  assert hyperrule.get_mixup(size) == expected


# --- get_lr -------------------------------------------------------------------------------------

# (dataset_size, step, lr / base_lr) at every boundary of each regime. A decay applies strictly
# after its point: at step == decay the rate is still the previous one.
LR_CASES = [
    (SMALL, 0, 0.0),
    (SMALL, 1, 0.01),
    (SMALL, 50, 0.5),
    (SMALL, 99, 0.99),
    (SMALL, 100, 1.0),  # Warmup end.
    (SMALL, 101, 1.0),
    (SMALL, 199, 1.0),
    (SMALL, 200, 1.0),  # Decay 1.
    (SMALL, 201, 0.1),
    (SMALL, 299, 0.1),
    (SMALL, 300, 0.1),  # Decay 2.
    (SMALL, 301, 0.01),
    (SMALL, 399, 0.01),
    (SMALL, 400, 0.01),  # Decay 3.
    (SMALL, 401, 0.001),
    (SMALL, 499, 0.001),  # total - 1.
    (MEDIUM, 0, 0.0),
    (MEDIUM, 250, 0.5),
    (MEDIUM, 499, 0.998),
    (MEDIUM, 500, 1.0),
    (MEDIUM, 2999, 1.0),
    (MEDIUM, 3000, 1.0),
    (MEDIUM, 3001, 0.1),
    (MEDIUM, 5999, 0.1),
    (MEDIUM, 6000, 0.1),
    (MEDIUM, 6001, 0.01),
    (MEDIUM, 8999, 0.01),
    (MEDIUM, 9000, 0.01),
    (MEDIUM, 9001, 0.001),
    (MEDIUM, 9999, 0.001),
    (LARGE, 0, 0.0),
    (LARGE, 250, 0.5),
    (LARGE, 500, 1.0),
    (LARGE, 5999, 1.0),
    (LARGE, 6000, 1.0),
    (LARGE, 6001, 0.1),
    (LARGE, 11_999, 0.1),
    (LARGE, 12_000, 0.1),
    (LARGE, 12_001, 0.01),
    (LARGE, 17_999, 0.01),
    (LARGE, 18_000, 0.01),
    (LARGE, 18_001, 0.001),
    (LARGE, 19_999, 0.001),
]
END_CASES = [(SMALL, 500), (SMALL, 501), (MEDIUM, 10_000), (LARGE, 20_000), (LARGE, 10**6)]


@pytest.mark.parametrize("size, step, factor", LR_CASES)
def test_lr(size, step, factor):
  assert hyperrule.get_lr(step, size, base_lr=0.003) == pytest.approx(0.003 * factor, rel=1e-12)


@pytest.mark.parametrize("size, step", END_CASES)
def test_lr_is_none_at_and_after_total(size, step):
  assert hyperrule.get_lr(step, size) is None


def test_lr_default_base_and_custom_base():
  assert hyperrule.get_lr(100, SMALL) == pytest.approx(0.003)
  assert hyperrule.get_lr(250, SMALL, base_lr=0.1) == pytest.approx(0.01)


# --- lr_schedule --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [SMALL, MEDIUM, LARGE])
def test_jax_schedule_matches_get_lr_under_jit(size):
  steps = [step for s, step, _ in LR_CASES if s == size]  # Includes total - 1.
  expected = [hyperrule.get_lr(step, size, base_lr=0.01) for step in steps]
  schedule = jax.jit(hyperrule.lr_schedule(size, base_lr=0.01))
  got = [float(schedule(jnp.int32(step))) for step in steps]  # Scalar steps, as optax passes.
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("size, step", END_CASES)
def test_jax_schedule_is_zero_from_total_on(size, step):
  assert float(hyperrule.lr_schedule(size)(step)) == 0.0


def test_jax_schedule_accepts_a_batch_of_steps():
  steps = np.array([0, 50, 100, 201, 301, 401, 500])
  np.testing.assert_allclose(
      hyperrule.lr_schedule(SMALL, base_lr=1.0)(steps),
      [0.0, 0.5, 1.0, 0.1, 0.01, 0.001, 0.0], rtol=1e-6)


def test_staircase_without_warmup_starts_at_the_full_rate():
  # Warmup 0 (VTAB's lightweight sweep): no 0/0 in the unused warmup branch, no NaN anywhere.
  schedule = hyperrule.staircase_schedule([0, 3, 6, 9, 10], base_lr=0.1)
  rates = np.asarray(schedule(jnp.arange(11)))
  np.testing.assert_allclose(rates, [0.1] * 4 + [0.01] * 3 + [0.001] * 3 + [0.0], rtol=1e-6)
  assert float(jax.jit(schedule)(0)) == pytest.approx(0.1)
