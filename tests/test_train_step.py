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
  their own, float rounding can flip a ReLU between them, which moves a gradient by far
  more than rounding.
  """
  return [None, jax.device_get(_run(1, batch)[0])]


def _assert_trees_close(a, b, rtol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6), a, b)


def _assert_trees_close_to_scale(a, b, rtol):
  """Each leaf within rtol of its largest magnitude: for gradients, whose small elements
  are sums that cancel."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=0, atol=rtol * float(np.max(np.abs(y)))), a, b)


def _assert_trees_close_but_for_relu_flips(a, b, rtol, max_fraction=0.05):
  """Each leaf within rtol of its largest element, but for at most `max_fraction` of its
  elements. One batch against two micro-batches sums in another order (and on 8 devices
  XLA:CPU convolves 1 example per device instead of 2, by other kernels); where an
  activation sits at zero that rounding flips its ReLU, which moves a few gradient
  elements by far more than rounding (seen: 1 of 512 by 1.3%, 3 of 128). A wrong
  accumulation (a missing 1/k, a wrong split) moves nearly every element."""
  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    off = np.abs(x - y) > rtol * float(np.max(np.abs(y)))
    assert off.mean() <= max_fraction, (off.sum(), off.size)
  jax.tree.map(check, a, b)


def test_eight_devices_give_the_same_update_as_one():
  assert jax.device_count() == 8
  batch = _batch(16)
  for start, steps in zip(_starts(batch), (1, 2)):
    one, metrics_one = _run(1, batch, state=start)
    eight, metrics_eight = _run(8, batch, state=start)
    assert int(eight.step) == steps
    np.testing.assert_allclose(metrics_one["loss"], metrics_eight["loss"], rtol=1e-4)
    _assert_trees_close(one.params, eight.params, rtol=1e-4)
    _assert_trees_close_to_scale(one.opt_state, eight.opt_state, rtol=1e-4)
    # And the update did something.
    assert float(metrics_one["grad_norm"]) > 0


@pytest.mark.parametrize("devices", [1, 8])
def test_accumulating_k_micro_batches_equals_one_big_batch(devices):
  batch = _batch(16, seed=3)
  for start in _starts(batch):
    full, metrics_full = _run(devices, batch, state=start)
    accumulated, metrics_acc = _run(devices, batch, accum_steps=2,
                                    state=start)
    np.testing.assert_allclose(metrics_full["loss"], metrics_acc["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_full["grad_norm"], metrics_acc["grad_norm"],
                               rtol=1e-4)
    _assert_trees_close_but_for_relu_flips(full.params, accumulated.params, rtol=1e-4)


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
  np.testing.assert_allclose(step_metrics["loss"], plain_loss, rtol=1e-6)
  # To each leaf's scale: small gradient elements are sums that cancel, so another program's
  # rounding moves them relatively far (seen: 5e-6 of the scale). Without the standardization's
  # backward pass every kernel's gradient is off by more than 0.7 of its scale.
  _assert_trees_close_to_scale(hoisted_grads, plain_grads, rtol=1e-4)
  assert float(optax.global_norm(plain_grads["block2"])) > 0  # The backbone is in it.
