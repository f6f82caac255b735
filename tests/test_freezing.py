"""Freezing: which leaves fine-tuning updates, and that frozen ones stay exactly as loaded."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bit_jax import finetune, freezing, losses, models, npz
from bit_jax import train_step as train_step_lib
from bit_jax.errors import UserError
from configs import transfer as transfer_config

MODEL = models.get_model("tiny-R14", num_classes=3)


@pytest.fixture(scope="module")
def params():
  params = finetune.init_params(MODEL, jax.random.key(0), 32)
  # A nonzero head, so that gradients reach the backbone from the first step.
  return {**params, "head": jax.tree.map(lambda x: x + 0.1, params["head"])}


def _top_level_trainable(params, trainable):
  mask = freezing.mask(params, trainable)
  return {module: set(jax.tree.leaves(subtree)) for module, subtree in mask.items()}


def test_the_mask_follows_the_blocks_in_order(params):
  assert all(v == {True} for v in _top_level_trainable(params, "all").values())
  head = _top_level_trainable(params, "head")
  assert head.pop("head") == {True} and all(v == {False} for v in head.values())
  block3 = _top_level_trainable(params, "block3")
  assert {m for m, v in block3.items() if v == {True}} == {"block3", "block4", "norm", "head"}
  assert {m for m, v in block3.items() if v == {False}} == {"root_conv", "block1", "block2"}


def test_an_unknown_choice_is_refused_with_the_valid_ones(params):
  with pytest.raises(UserError, match="trainable='block5' is not valid; valid: all, head"):
    freezing.mask(params, "block5")
  config = transfer_config.get_config()
  config.trainable = "backbone"
  with pytest.raises(UserError, match="trainable='backbone'"):
    finetune.make_plan(config, dataset_size=50, image_hw=(32, 32))


@pytest.mark.parametrize("trainable", ["head", "block3"])
def test_frozen_leaves_are_bitwise_unchanged_and_hold_no_optimizer_state(params, trainable):
  mask = freezing.mask(params, trainable)
  optimizer = freezing.optimizer(optax.chain(optax.trace(decay=0.9), optax.sgd(0.1)), mask)
  step = jax.jit(train_step_lib.make_train_step(
      MODEL, optimizer, losses.softmax_xent, lambda s: 0.1, trainable=mask))
  state = train_step_lib.create_train_state(params, optimizer)
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  batch = {"image": images, "label": jax.nn.one_hot(jnp.arange(4) % 3, 3)}
  for _ in range(2):
    state, _ = step(state, batch)

  before, after = npz.flatten(params), npz.flatten(jax.device_get(state.params))
  flat_mask = npz.flatten(jax.tree.map(np.asarray, mask))
  for key in before:
    if flat_mask[key]:
      assert not np.array_equal(before[key], after[key]), key
    else:
      assert before[key].tobytes() == after[key].tobytes(), key
  # Momentum is kept for the trainable leaves only.
  momentum_leaves = [x for x in jax.tree.leaves(state.opt_state) if hasattr(x, "shape")
                     and x.ndim > 0]
  assert len(momentum_leaves) == sum(bool(v) for v in flat_mask.values())


def test_all_trains_every_leaf_as_without_a_mask(params):
  """`all` is the plain HyperRule step: the mask changes nothing."""
  optimizer = optax.sgd(0.1)
  batch = {"image": jnp.ones((2, 32, 32, 3)), "label": jax.nn.one_hot(jnp.arange(2), 3)}
  def one_step(trainable):
    step = jax.jit(train_step_lib.make_train_step(MODEL, optimizer, losses.softmax_xent,
                                                  lambda s: 0.1, trainable=trainable))
    return step(train_step_lib.create_train_state(params, optimizer), batch)[0].params
  masked = one_step(freezing.mask(params, "all"))
  plain = one_step(None)
  jax.tree.map(np.testing.assert_array_equal, masked, plain)
