"""FSDP (`bit_jax.sharding`): the rule, one update equal to the replicated one, fine-tuning
with a split state, checkpoints that resume on any number of devices, and bad input (8
simulated CPU devices, as on a pod slice)."""
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import input_pipeline
from bit_jax import (checkpointing, distributed, errors, finetune, losses, models, npz, optim,
                     sharding, train, train_step as train_step_lib)
from configs import common
from configs import transfer as transfer_config
from tests import tiny_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_SIZE = 4096  # Small enough that tiny-R14's larger kernels are sharded, not its norms.


def test_fsdp_rule_shards_the_largest_divisible_dimension_of_large_leaves():
  assert sharding.leaf_spec((3, 3, 64, 256), 8, MIN_SIZE) == P(None, None, None, "data")
  assert sharding.leaf_spec((1, 1, 256, 64), 8, MIN_SIZE) == P(None, None, "data")
  # Equal dimensions: the last (a conv kernel's output channels).
  assert sharding.leaf_spec((1, 1, 128, 128), 8, MIN_SIZE) == P(None, None, None, "data")
  # The largest dimension does not divide: the next largest that does.
  assert sharding.leaf_spec((1000, 2048), 16, MIN_SIZE) == P(None, "data")
  assert sharding.leaf_spec((1001, 4096), 8, MIN_SIZE) == P(None, "data")
  assert sharding.leaf_spec((4096, 1001), 8, MIN_SIZE) == P("data")
  # Replicated: below the threshold, nothing divides, a scalar, a one-device axis.
  assert sharding.leaf_spec((4095,), 8, MIN_SIZE) == P()
  assert sharding.leaf_spec((4096,), 8, MIN_SIZE) == P("data")
  assert sharding.leaf_spec((63, 65, 7), 8, MIN_SIZE) == P()
  assert sharding.leaf_spec((), 8, 1) == P()
  assert sharding.leaf_spec((4096, 4096), 1, MIN_SIZE) == P()


def test_unknown_sharding_and_bad_threshold_are_one_line_user_errors(tmp_path):
  mesh = distributed.data_mesh()
  with pytest.raises(errors.UserError, match=r"unknown sharding 'zero3'; valid: replicated, fsdp"):
    sharding.shardings({"w": jnp.zeros(4)}, mesh, "zero3")
  with pytest.raises(errors.UserError, match="fsdp_min_size=0 is not valid"):
    sharding.shardings({"w": jnp.zeros(4)}, mesh, "fsdp", 0)
  # The upstream loop refuses it before anything is written to the workdir.
  config = _tiny_config(sharding="zero3")
  with pytest.raises(errors.UserError, match="unknown sharding") as raised:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(raised.value)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_resuming_another_models_checkpoint_is_a_one_line_user_error(tmp_path):
  model = models.get_model("tiny-R14", num_classes=7)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  other = checkpointing.Checkpointer(str(tmp_path / "other"), use_async=False)
  other.save(3, {"step": np.int32(3), "params": jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype), params["params"])})
  other.close()
  config = _tiny_config(resume=str(tmp_path / "other"), sharding="fsdp")
  with pytest.raises(errors.UserError) as raised:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(raised.value)
  assert "\n" not in message and message.startswith(f"config.resume={str(tmp_path / 'other')!r}")
  assert "7-class head) run (step 3)" in message and "10-class head)" in message


def _state_and_step(mode, mesh, *, accum_steps=2, mixup_alpha=0.1, pin_standardized=False):
  """(the initial state on `mesh` in `mode`, the jitted train step, the batch sharding):
  tiny-R14 as accelerators run it (plain kernels), with remat, the upstream optimizer
  (SGD momentum, coupled weight decay), gradient accumulation and MixUp.

  `pin_standardized` fixes how XLA computes the weight standardization, whatever `mode` is
  (through the model's weight-standardization seam): from whole kernels, into kernels laid
  out by the fsdp rule."""
  model = models.get_model("tiny-R14", num_classes=4, remat=True, kernels="plain")
  if pin_standardized:
    def layout(tree, rule):
      return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
          x, jax.sharding.NamedSharding(mesh, rule(x.shape))), tree)
    whole = lambda shape: P()
    split = lambda shape: sharding.leaf_spec(shape, mesh.shape["data"], MIN_SIZE)
    model = model.clone(weight_standardization=lambda params: layout(
        models.standardize_weights(layout(params, whole)), split))
  config = common.upstream_config()
  schedule = lambda step: 0.1
  optimizer = optim.make_optimizer(config, schedule)

  shapes = jax.eval_shape(lambda: train_step_lib.create_train_state(
      model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"], optimizer))
  state_shardings = sharding.shardings(shapes, mesh, mode, MIN_SIZE)
  state = jax.device_put(_initial_state(shapes), state_shardings)
  batch_sharding = jax.sharding.NamedSharding(mesh, P("data"))
  step = jax.jit(train_step_lib.make_train_step(
      model, optimizer, losses.softmax_xent, schedule, accum_steps=accum_steps,
      mixup_alpha=mixup_alpha, rng=jax.random.key(2)),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, jax.sharding.NamedSharding(mesh, P())),
      donate_argnums=0)
  return state, step, batch_sharding


def _initial_state(shapes):
  """A state of `shapes` from numpy, without compiling an init: He-normal kernels (the head's
  too, so the first update moves the backbone), GroupNorm at identity, and momentum already
  in play (the update then depends on the sharded optimizer state)."""
  rng = np.random.default_rng(0)

  def value(path, x):
    if not np.issubdtype(x.dtype, np.floating):
      return np.zeros(x.shape, x.dtype)
    if path[0].name == "opt_state":
      return np.full(x.shape, 0.01, x.dtype)
    if path[-1].key == "kernel":
      fan_in = int(np.prod(x.shape[:-1]))
      return (rng.normal(size=x.shape) * np.sqrt(2 / fan_in)).astype(x.dtype)
    return (np.ones if path[-1].key == "scale" else np.zeros)(x.shape, x.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


def _batch(size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (size, 32, 32, 3)).astype(np.float32),
          "label": np.eye(4, dtype=np.float32)[rng.integers(0, 4, size)]}


def _named_leaves(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_fsdp_shards_large_leaves_and_one_update_equals_the_replicated_one():
  mesh = distributed.data_mesh()
  assert mesh.shape["data"] == 8
  initial, new_states = {}, {}
  for mode in sharding.MODES:
    state, step, batch_sharding = _state_and_step(mode, mesh)
    initial[mode] = _named_leaves(state)
    for name, leaf in initial[mode].items():  # The step's input shardings are the rule's too.
      assert leaf.sharding.spec == (
          sharding.leaf_spec(leaf.shape, 8, MIN_SIZE) if mode == "fsdp" else P()), name
    initial[mode] = jax.device_get(initial[mode])  # Before the step donates it.
    new_state, metrics = step(state, jax.device_put(_batch(), batch_sharding))
    assert np.isfinite(float(metrics["loss"]))
    new_states[mode] = new_state

  # fsdp: every leaf of >= MIN_SIZE elements, the momentum's as the parameters', is split in
  # 8 along its largest divisible dimension; smaller leaves are whole on every device.
  sharded = []
  for name, leaf in _named_leaves(new_states["fsdp"]).items():
    spec = sharding.leaf_spec(leaf.shape, 8, MIN_SIZE)
    assert leaf.sharding.spec == spec, name
    assert len(leaf.addressable_shards) == 8
    shard_shapes = {s.data.shape for s in leaf.addressable_shards}
    if leaf.size >= MIN_SIZE:
      dim = len(spec) - 1
      expected = leaf.shape[:dim] + (leaf.shape[dim] // 8,) + leaf.shape[dim + 1:]
      assert shard_shapes == {expected}, name
      sharded.append(name)
    else:
      assert shard_shapes == {leaf.shape}, name
  assert ".params['block4']['unit01']['conv2']['kernel']" in sharded
  assert ".opt_state[1].trace['block4']['unit01']['conv2']['kernel']" in sharded
  assert ".params['block4']['unit01']['norm2']['scale']" not in sharded
  for leaf in jax.tree.leaves(new_states["replicated"]):
    assert leaf.sharding.is_fully_replicated

  # The same update, up to float32 sums in another order: with fsdp, XLA standardizes the
  # split kernels where they lie (the next test pins that and gets the replicated update bit
  # for bit). The last bits move most in the momentum (this step's gradient), whose
  # backward pass amplifies them: a replicated step on 1 device and on 8 differs by as much
  # (measured: 2-5e-6 of the momentum's norm, by XLA flags; fsdp vs replicated on 8 alike).
  # This batch has no ReLU or max-pool tie that such noise crosses (seed 2 has one: both
  # comparisons then differ by 9.4e-4). A sharding mistake moves whole leaves by far more.
  fsdp, replicated = (jax.device_get(_named_leaves(new_states[m])) for m in ("fsdp",
                                                                              "replicated"))
  assert fsdp.keys() == replicated.keys()
  for name in fsdp:
    assert fsdp[name].dtype == replicated[name].dtype, name
    assert _relative_error([fsdp[name]], [replicated[name]]) < 2e-5, name
  for part, tolerance in ((".params", 1e-6), (".opt_state", 1e-5)):
    names = [n for n in fsdp if n.startswith(part)]
    error = _relative_error([fsdp[n] for n in names], [replicated[n] for n in names])
    assert error < tolerance, (part, error)
  name = ".params['block1']['unit01']['conv1']['kernel']"
  # The update moved the backbone (a test that cannot fail is a defect).
  assert not np.allclose(replicated[name], initial["replicated"][name])


def test_with_the_standardization_computed_alike_an_fsdp_update_is_bitwise_the_replicated_one():
  # What the fsdp state layout itself does to an update: nothing. Pin how XLA computes the
  # weight standardization (whole kernels in, standardized kernels laid out by the fsdp
  # rule, in both modes), and the split parameters and momentum, the reduce-scattered
  # gradients and the optimizer on shards give the replicated update bit for bit, even on
  # this batch (seed 2), where float32 noise crosses a ReLU or max-pool tie: replicated
  # steps on 8 devices and on 1 differ by 9.4e-4 there.
  mesh = distributed.data_mesh()
  new_states = {}
  for mode in sharding.MODES:
    state, step, batch_sharding = _state_and_step(mode, mesh, pin_standardized=True)
    new_state, _ = step(state, jax.device_put(_batch(seed=2), batch_sharding))
    new_states[mode] = jax.device_get(_named_leaves(new_state))
  assert new_states["fsdp"].keys() == new_states["replicated"].keys()
  for name, value in new_states["replicated"].items():
    np.testing.assert_array_equal(new_states["fsdp"][name], value, err_msg=name)


def _relative_error(actual, expected):
  """|actual - expected| / |expected|, the norms over every element of the arrays given."""
  diff = sum(np.sum((np.asarray(a, np.float64) - b) ** 2) for a, b in zip(actual, expected))
  norm = sum(np.sum(np.asarray(b, np.float64) ** 2) for b in expected)
  return float(np.sqrt(diff / norm)) if norm else float(np.sqrt(diff))


def _tiny_config(**overrides):
  """The tests' tiny upstream run, saving every 2 steps; only the held-out evaluator, on 32
  images."""
  config = tiny_configs.upstream(eval_split="test[:32]", checkpoint_every_steps=2,
                                 keep_checkpoints=5, async_checkpoints=False,
                                 fsdp_min_size=MIN_SIZE)
  config.evals.fewshot.enabled = False
  config.evals.eval.enabled = False  # Evaluators replicate the params: tests/test_multihost.
  config.update(overrides)
  return config


def _restore(directory, step, abstract_state=None):
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  try:
    return checkpointer.restore(abstract_state, step)
  finally:
    checkpointer.close()


# Continues a copy of a workdir in a fresh process with `{devices}` CPU devices; records the
# state `restore_or_initialize` gives (values and this process's shard shapes); then exports
# the uninterrupted run's (8-device) last checkpoint, as `python -m bit_jax.export` does.
_RESUMED_RUN = """
import sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_num_cpu_devices", {devices})
import numpy as np
from bit_jax import checkpointing, npz, train
from tests import test_sharding

restore_or_initialize = checkpointing.restore_or_initialize

def recorded(*args, **kwargs):
  state, origin = restore_or_initialize(*args, **kwargs)
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  shards = {{jax.tree_util.keystr(p): leaf.addressable_shards[0].data.shape
             for p, leaf in leaves}}
  np.savez({out!r}, device_count=jax.device_count(), origin=origin,
           **{{"params/" + k: v for k, v in npz.flatten(jax.device_get(state.params)).items()}},
           **{{"shard" + k: np.array(v) for k, v in shards.items()}})
  return state, origin

train.checkpointing.restore_or_initialize = recorded
config = test_sharding._tiny_config(total_steps={total_steps}, sharding={mode!r})
train.train_and_evaluate(config, {workdir!r})
from bit_jax import export
export.export({straight!r}, {exported!r}, step=4)
"""


def test_a_checkpoint_from_8_devices_resumes_on_4_and_on_1(tmp_path):
  """Saved on 8 devices with fsdp -> restored with fsdp in a process of 4 devices, where the
  run continues to the end of the uninterrupted one, and replicated on 1 device: the same
  parameters."""
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_tiny_config(total_steps=4, sharding="fsdp"), straight)
  directory = os.path.join(straight, checkpointing.CHECKPOINT_DIR)
  assert sorted(os.listdir(directory), key=int) == ["2", "4"]
  saved_tree = _restore(directory, 2)
  saved = _named_leaves(saved_tree)

  # As if the run had been preempted after step 2, on a pod slice that comes back smaller.
  workdir = str(tmp_path / "on4")
  shutil.copytree(straight, workdir)
  shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_DIR, "4"))
  os.remove(os.path.join(workdir, checkpointing.EXPORT_NAME))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  code = _RESUMED_RUN.format(root=ROOT, devices=4, total_steps=4, mode="fsdp",
                             workdir=workdir, out=str(tmp_path / "restored4.npz"),
                             straight=straight, exported=str(tmp_path / "exported4.npz"))
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Meanwhile, here: step 2 restored replicated on one device, its optimizer state too.
    mesh = distributed.data_mesh(jax.devices()[:1])
    one = _restore(directory, 2, sharding.abstract(
        saved_tree, sharding.shardings(saved_tree, mesh, "replicated")))
    log = proc.communicate(timeout=300)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, log[-3000:]
  one = _named_leaves(one)
  assert one.keys() == saved.keys() and len(saved) > 50
  for name, value in one.items():
    assert value.sharding.device_set == {jax.devices()[0]}, name
    np.testing.assert_array_equal(value, saved[name], err_msg=name)

  restored = dict(np.load(tmp_path / "restored4.npz"))
  assert int(restored["device_count"]) == 4
  assert str(restored["origin"]) == "resumed from step 2 in this workdir"
  params = {k: v for k, v in saved.items() if k.startswith("['params']")}
  for name, value in params.items():  # Bit for bit what the 8 devices wrote.
    key = "/".join(name[len("['params']"):].strip("[]'").split("']['"))
    np.testing.assert_array_equal(restored[f"params/{key}"], value, err_msg=key)
  kernel = restored["shard['block4']['unit01']['conv2']['kernel']"]
  assert tuple(kernel) == (3, 3, 256, 64)  # A quarter of its output channels per device.
  final = npz.read_flat(os.path.join(straight, checkpointing.EXPORT_NAME))
  continued = npz.read_flat(os.path.join(workdir, checkpointing.EXPORT_NAME))
  assert continued.keys() == final.keys()
  # 4 devices sum in another order than 8: measured <= 0.016 of this tolerance after the two
  # steps (6e-8 at most), whose updates are small against the parameters they move.
  for key, value in final.items():
    np.testing.assert_allclose(continued[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  # The official .npz, written on 4 devices from the checkpoint 8 devices wrote.
  exported = npz.read_flat(tmp_path / "exported4.npz")
  assert exported.keys() == final.keys()
  for key, value in final.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  step4 = _named_leaves(_restore(directory, 4))
  name = "['params']['block1']['unit01']['conv1']['kernel']"
  assert not np.allclose(step4[name], saved[name])  # Steps 3 and 4 moved the parameters.


def test_fine_tuning_shards_its_state_and_returns_replicated_params(tmp_path):
  """`finetune.train` with `sharding=fsdp`: its state is split as the rule says (the step is
  the one the one-update test compares with the replicated one), and the parameters come
  back replicated, for every process to read and export."""
  mesh = distributed.data_mesh()
  model = models.get_model("tiny-R14", num_classes=5)
  params = jax.device_get(finetune.init_params(model, jax.random.key(0), 32))
  plan = finetune.Plan(resize=36, crop=32, schedule=(0, 10, 10, 10, 2), mixup_alpha=0.1,
                       base_lr=0.01, batch_size=16, accum_steps=2, eval_batch_size=16,
                       shuffle_buffer=32, log_every_steps=1, checkpoint_every_steps=1,
                       sharding="fsdp", fsdp_min_size=MIN_SIZE)
  directory = str(tmp_path / "checkpoints")
  tuned = finetune.train(model, params, input_pipeline.get_source("bit_farm_animals"),
                         "train[:32]", 5, plan, seed=0, mesh=mesh, checkpoint_dir=directory)
  for leaf in jax.tree.leaves(tuned):
    assert leaf.sharding.is_fully_replicated
  name = "block4/unit01/conv2/kernel"
  tuned = npz.flatten(jax.device_get(tuned))
  assert np.all(np.isfinite(tuned[name]))
  assert not np.allclose(tuned[name], npz.flatten(params)[name])
  # The state it saved after step 1 was split: orbax records each array's partition.
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  try:
    metadata = checkpointer._manager.item_metadata(1)  # pylint: disable=protected-access
  finally:
    checkpointer.close()
  for part in (metadata["params"], metadata["opt_state"][0]["trace"]):
    spec = part["block4"]["unit01"]["conv2"]["kernel"].sharding.partition_spec
    assert tuple(spec) == (None, None, None, "data")
    assert tuple(part["head"]["bias"].sharding.partition_spec) == ()
  # A plan's unknown sharding fails before any run starts.
  config = transfer_config.get_config()
  config.sharding = "zero3"
  with pytest.raises(errors.UserError, match="unknown sharding 'zero3'"):
    finetune.make_plan(config, dataset_size=50, image_hw=(32, 32))
