"""The train step: data parallelism and gradient accumulation change nothing but speed."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bit_jax import losses, models, train_step as train_step_lib

MODEL = models.get_model("tiny-R14", num_classes=4)


def _batch(size, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (size, 32, 32, 3)).astype(np.float32),
          "label": np.eye(4, dtype=np.float32)[rng.integers(0, 4, size)]}


def _state(optimizer):
  params = jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  # A non-zero head, so the first update moves the backbone too.
  params["head"]["kernel"] = 0.1 * jax.random.normal(
      jax.random.key(1), params["head"]["kernel"].shape)
  return train_step_lib.create_train_state(params, optimizer)


SCHEDULE = lambda step: 0.1
OPTIMIZER = optax.chain(optax.trace(0.9), optax.scale_by_learning_rate(SCHEDULE))


@functools.cache
def _jitted_step(num_devices, accum_steps):
  """The jitted train step over the first `num_devices` devices; compiled once per test run."""
  step_fn = train_step_lib.make_train_step(MODEL, OPTIMIZER, losses.softmax_xent, SCHEDULE,
                                           accum_steps=accum_steps)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  jitted = jax.jit(step_fn, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  return jitted, replicated, sharded


def _run(num_devices, batch, accum_steps=1, state=None):
  """One jitted update on `num_devices` devices, from `state` (default: the initial state)."""
  jitted, replicated, sharded = _jitted_step(num_devices, accum_steps)
  state = jax.device_put(_state(OPTIMIZER) if state is None else state, replicated)
  return jitted(state, jax.device_put(batch, sharded))


def _starts(batch):
  """Where the compared updates start: the initial state, and the state after one update
  (momentum in play). Both runs start each update from the same state: after updates of
  their own, their rounding would compound step by step.
  """
  return [None, jax.device_get(_run(1, batch)[0])]


def _update(state, start):
  """The change `state`'s update made to each parameter, from `start` (None: initial)."""
  before = (_state(OPTIMIZER) if start is None else start).params
  return jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), state.params, before)


# The compared steps are one update computed by two programs (1 device or 8, one batch or
# micro-batches, the weight standardization hoisted or not), which round float32 sums
# differently: measured <= 1e-5 of a leaf's norm. Where a pre-activation lies within that
# rounding of zero, its ReLU flips, and GroupNorm's backward spreads the change over whole
# leaves: measured 8.3e-3 of a leaf's update (seed 3, second update, 8 devices with 2
# micro-batches, on an AVX2 EPYC; other CPUs flip other units). A defect moves every leaf by
# far more: a dropped micro-batch by >= 0.35 of its update, a missing 1/k by 1.0.
LEAF_TOLERANCE = 0.05
# The loss is the forward pass alone: rounding only (a flipped ReLU's value is within it of
# zero), measured <= 6e-7 relative.
LOSS_RTOL = 1e-5


def _assert_leaves_close(a, b):
  """Each leaf of `a` within LEAF_TOLERANCE of `b`'s in norm: ||a - b|| <= tol * ||b||."""
  def check(path, x, y):
    x, y = np.asarray(x), np.asarray(y)
    error = np.linalg.norm(x - y) / np.linalg.norm(y)
    assert error <= LEAF_TOLERANCE, (jax.tree_util.keystr(path), error)
  jax.tree_util.tree_map_with_path(check, a, b)


def test_eight_devices_give_the_same_update_as_one():
  assert jax.device_count() == 8
  batch = _batch(16)
  for start, steps in zip(_starts(batch), (1, 2)):
    one, metrics_one = _run(1, batch, state=start)
    eight, metrics_eight = _run(8, batch, state=start)
    assert int(eight.step) == steps
    np.testing.assert_allclose(metrics_one["loss"], metrics_eight["loss"], rtol=LOSS_RTOL)
    _assert_leaves_close(_update(eight, start), _update(one, start))
    _assert_leaves_close(eight.opt_state, one.opt_state)
    # And the update did something.
    assert float(metrics_one["grad_norm"]) > 0


@pytest.mark.parametrize("devices", [1, 8])
def test_accumulating_k_micro_batches_equals_one_big_batch(devices):
  batch = _batch(16, seed=3)
  for start in _starts(batch):
    full, metrics_full = _run(devices, batch, state=start)
    accumulated, metrics_acc = _run(devices, batch, accum_steps=2, state=start)
    np.testing.assert_allclose(metrics_full["loss"], metrics_acc["loss"], rtol=LOSS_RTOL)
    # The norm of all leaves: within the leaves' tolerance (triangle inequality).
    np.testing.assert_allclose(metrics_full["grad_norm"], metrics_acc["grad_norm"],
                               rtol=LEAF_TOLERANCE)
    _assert_leaves_close(_update(accumulated, start), _update(full, start))


def test_weight_standardization_once_per_step_equals_it_inside_the_model():
  """The step standardizes kernels once (and backpropagates once) outside the model; the
  gradient must be that of the plain model, which standardizes inside every conv."""
  params = _state(optax.identity()).params
  batch = _batch(8, seed=5)
  loss_of = lambda p: jnp.mean(losses.softmax_xent(
      MODEL.apply({"params": p}, batch["image"])[0], batch["label"]))
  plain_loss, plain_grads = jax.jit(jax.value_and_grad(loss_of))(params)
  optimizer = optax.trace(decay=0.0)  # Its state after one step is the gradient itself.
  step_fn = train_step_lib.make_train_step(MODEL, optimizer, losses.softmax_xent,
                                           lambda step: 1.0)
  state = train_step_lib.create_train_state(params, optimizer)
  new_state, step_metrics = jax.jit(step_fn)(state, batch)
  hoisted_grads = new_state.opt_state.trace
  np.testing.assert_allclose(step_metrics["loss"], plain_loss, rtol=LOSS_RTOL)
  # Without the standardization's backward pass every kernel's gradient is off by more than
  # 0.7 of its scale.
  _assert_leaves_close(hoisted_grads, plain_grads)
  assert float(optax.global_norm(plain_grads["block2"])) > 0  # The backbone is in it.
