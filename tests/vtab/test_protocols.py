"""The VTAB protocols' names and the lightweight sweep's rules, against task_adaptation's own
arithmetic (`trainer.py` `get_train_op`: `tf.train.piecewise_constant`)."""

import numpy as np
import pytest

from bit_jax import hyperrule
from bit_jax.errors import UserError
from bit_jax.vtab import protocols

# Rates in float32 against float64: a few roundings of lr * 0.1**i, <= 1e-7 relative
# (measured 6.9e-8), so rtol 1e-6 (pytest.approx's default).


def test_the_published_lightweight_sweep():
  assert protocols.LIGHTWEIGHT_LRS == (0.1, 0.01)
  assert protocols.LIGHTWEIGHT_STEPS == (2500, 10_000)
  assert (protocols.LIGHTWEIGHT_RESOLUTION, protocols.LIGHTWEIGHT_BATCH_SIZE) == (224, 512)


@pytest.mark.parametrize("steps,boundaries", [
    (2500, (0, 750, 1500, 2250, 2500)),  # task_adaptation README: --decay_steps 750,1500,2250.
    (10_000, (0, 3000, 6000, 9000, 10_000)),
    (10, (0, 3, 6, 9, 10)),
])
def test_lightweight_schedule_decays_at_30_60_90_percent_without_warmup(steps, boundaries):
  assert protocols.lightweight_schedule(steps) == boundaries


def piecewise_constant(step, boundaries, values):
  """tf.compat.v1.train.piecewise_constant, written out: values[i] while step <= boundaries[i]."""
  for boundary, value in zip(boundaries, values):
    if step <= boundary:
      return value
  return values[-1]


@pytest.mark.parametrize("lr", protocols.LIGHTWEIGHT_LRS)
def test_the_rates_are_task_adaptations_at_every_step(lr):
  steps = 2500
  schedule = hyperrule.staircase_schedule(protocols.lightweight_schedule(steps), lr)
  every_step = np.arange(steps)
  expected = [piecewise_constant(s, (750, 1500, 2250), [lr * 0.1**i for i in range(4)])
              for s in every_step]
  np.testing.assert_allclose(np.asarray(schedule(every_step)), expected, rtol=1e-6)
  assert float(schedule(0)) == pytest.approx(lr)  # No warmup: the first update at full rate.
  assert float(schedule(750)) == pytest.approx(lr)
  assert float(schedule(751)) == pytest.approx(lr / 10)


def test_check_names_the_valid_protocols_and_the_renamed_sweep():
  for name in ("hyperrule", "vtab_lightweight", "hyperrule_sweep"):
    assert protocols.check(name) == name
  with pytest.raises(UserError) as error:
    protocols.check("sweep")
  assert str(error.value) == (
      "protocol 'sweep' is now 'hyperrule_sweep' (the HyperRule with lr and steps swept; "
      "VTAB's own sweep is 'vtab_lightweight'); valid: hyperrule, vtab_lightweight, "
      "hyperrule_sweep")
  with pytest.raises(UserError, match="^unknown protocol 'vtab'; valid: hyperrule, "):
    protocols.check("vtab")


def test_label_names_every_departure_from_the_published_settings():
  published = {"protocol": "vtab_lightweight", "lightweight_lrs": [0.1, 0.01],
               "lightweight_steps": [2500, 10000], "lightweight_resolution": 224,
               "batch_size": 512, "total_steps": 7}  # total_steps: not this protocol's.
  assert protocols.label(published) == "vtab_lightweight"
  short = {**published, "lightweight_steps": [2, 4], "batch_size": 8}
  assert protocols.label(short) == ("vtab_lightweight, modified: lightweight_steps 2,4 "
                                    "(published 2500,10000); batch_size 8 (published 512)")
  assert protocols.label({"protocol": "hyperrule", "total_steps": 1, "resolution": [36, 32],
                          "base_lr": 0.003, "batch_size": 512, "mixup_alpha": -1.0}) == (
      "hyperrule, modified: total_steps 1 (published 0); resolution 36,32 (published ())")
  assert protocols.label({"protocol": "hyperrule_sweep", "sweep_steps": [2]}) == "hyperrule_sweep"


def test_published_protocol_reads_the_metadata():
  assert protocols.published_protocol({"hyper_sweep_size": "4",
                                       "preprocessing": "resize(224)"}) == "vtab_lightweight"
  assert protocols.published_protocol({"hyper_sweep_size": "100",
                                       "preprocessing": "resize(224)"}).startswith("unknown (")
